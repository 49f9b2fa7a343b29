"""Random client input against the real gateway and nats-server (issue 8, "Also").

Hypothesis draws what a careless or hostile client might send: on one fresh WebSocket
per example, up to 12 frames (JSON values of any shape, protocol messages with odd
fields, messages out of order, text that is not JSON, poisoned JSON, audio frames of
every size, fragmented messages, text frames that are not UTF-8, a client that just
vanishes); on ``POST /api/text``, bodies of any kind under any Content-Type, with a
Content-Length or chunked. Whatever came, these must hold after each example:

1. REST answers no 5xx but ``503`` with ``Retry-After`` and ``504 timeout``; every
   error is JSON ``{"error": <documented code>, "message": <non-empty>}``.
2. A socket is never dropped abnormally: it is open, or the server closed it with a
   code the client caused (1000 after ``session.end``, 1009 for a frame over the
   size limit, 1007 for a text frame that is not UTF-8, 1008 for a late start).
   Every server text frame is strict JSON; every ``error`` has a documented code.
3. An open socket still works: a correct ``session.start`` gets ``session.ready``
   (or ``already_started``), then a typed ``ping`` its transcript (or
   ``too_many_turns``).
4. A bystander session, open all along, still gets its own events and nothing else.
5. The gateway logs no traceback and nothing at ERROR.

No real processors run. The test takes the VAD's session claims (else new sessions
would get 503 after ``vad_claim_wait_s``) and answers each LLM request with an empty
``reply.done`` (so typed turns end, and REST answers 200 instead of waiting
``text_timeout_s``). Examples are derandomized: every run draws the same inputs.

The known poisons (lone surrogates, deep nesting, 5000-digit integers, odd resume
cursors, forged session ids) also have a test each, on the WebSocket and on REST.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import re
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from gateway.server import RunningGateway
from schemas import Transcript
from tests.integration.gateway_helpers import answer_llm, emit

TIMEOUT = 5.0
"""Seconds any one answer may take; the gateway answers in milliseconds."""
MAX_FRAME = 64000
"""``Settings.max_frame_bytes`` default: the largest accepted audio frame."""
WS_MAX = max(2 * MAX_FRAME, 1 << 20)
"""Frames over this close the socket (1009): gateway/server.py ``ws_max_size``."""
MAX_BODY = 64 * 1024
"""``POST /api/text`` bodies over this get 413."""
BYSTANDER = "@bystander@"
"""In a drawn message, stands for the bystander's session id (for forged resumes)."""
ASCII = st.characters(min_codepoint=0x21, max_codepoint=0x7E)

SERVER_TYPES = {
    "session.ready",
    "vad.speech_started",
    "vad.speech_stopped",
    "transcript",
    "reply.delta",
    "reply.done",
    "reply.cancelled",
    "error",
    "audio",
}
WS_ERRORS = {
    "bad_json",
    "unknown_type",
    "no_session",
    "already_started",
    "bad_audio_format",
    "bad_message",
    "unknown_session",
    "too_many_turns",
    "bad_frame",
    "bad_text",
    "unavailable",
    "audio_backlog",
}
"""docs/protocol.md, "Errors for bad input"."""
REST_ERRORS = {
    404: {"unknown_session"},
    408: {"timeout"},
    413: {"too_large"},
    415: {"bad_content_type"},
    422: {"bad_json", "bad_text", "bad_message"},
    429: {"too_many_turns"},
    503: {"overloaded", "unavailable"},
    504: {"timeout"},
}
"""docs/protocol.md, ``POST /api/text`` (without keys, Origin or a foreign Host)."""

FUZZ = hypothesis_settings(
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=False,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,  # one gateway serves every example, on purpose
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)


# --- what a client sends ---


@dataclass(frozen=True)
class Json:
    """A text frame holding ``value`` as JSON (non-ASCII escaped or not)."""

    value: Any
    escaped: bool = True

    def text(self, bystander: str) -> str:
        raw = json.dumps(self.value, ensure_ascii=self.escaped)
        if not _encodable(raw):  # lone surrogates can only travel escaped
            raw = json.dumps(self.value)
        return raw.replace(BYSTANDER, bystander)


@dataclass(frozen=True)
class Raw:
    """A text frame sent as it is: not necessarily JSON."""

    raw: str

    def text(self, bystander: str) -> str:
        return self.raw.replace(BYSTANDER, bystander)

    def __repr__(self) -> str:
        return f"Raw({_short(self.raw)})"


@dataclass(frozen=True)
class NotUtf8:
    """A text frame whose bytes are not UTF-8 (RFC 6455: the receiver fails the socket)."""

    data: bytes


@dataclass(frozen=True)
class Binary:
    """A binary (audio) frame of ``size`` bytes."""

    size: int
    fill: int = 1

    def data(self) -> bytes:
        return bytes([self.fill, self.size % 256]) * (self.size // 2) + bytes(self.size % 2)


@dataclass(frozen=True)
class Fragmented:
    """``frame`` sent as one message in ``pieces`` fragments, cut anywhere (inside a UTF-8
    character too: only the whole message must be UTF-8)."""

    frame: Json | Raw | Binary
    pieces: int

    def parts(self, bystander: str) -> list[bytes]:
        frame = self.frame
        whole = frame.data() if isinstance(frame, Binary) else frame.text(bystander).encode()
        step = max(1, -(-len(whole) // self.pieces))
        return [whole[i : i + step] for i in range(0, len(whole), step)] or [b""]


@dataclass(frozen=True)
class Vanish:
    """The client drops the connection without a close frame (a phone losing signal)."""


Frame = Json | Raw | NotUtf8 | Binary | Fragmented | Vanish


async def send_frame(conn: ClientConnection, frame: Frame, bystander: str) -> None:
    if isinstance(frame, Json | Raw):
        await conn.send(frame.text(bystander))
    elif isinstance(frame, NotUtf8):
        await conn.send(frame.data, text=True)
    elif isinstance(frame, Fragmented):
        await conn.send(frame.parts(bystander), text=not isinstance(frame.frame, Binary))
    elif isinstance(frame, Vanish):
        conn.transport.abort()
    else:
        await conn.send(frame.data())


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _short(text: str | bytes, keep: int = 60) -> str:
    if len(text) <= keep:
        return repr(text)
    return f"{text[:keep]!r}...({len(text)} long)"


def _loads(raw: str | bytes) -> Any:
    """JSON as the gateway parses it (last duplicate key wins), or None."""
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return None


def ends_session(frame: Frame, bystander: str) -> bool:
    """Whether a frame may have been a ``session.end`` (so a 1000 close is earned)."""
    if isinstance(frame, Fragmented) and not isinstance(frame.frame, Binary):
        frame = frame.frame
    if not isinstance(frame, Json | Raw):
        return False
    obj = _loads(frame.text(bystander))
    return isinstance(obj, dict) and obj.get("type") == "session.end"


# --- strategies ---

SURROGATE = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF, categories=["Cs"])
texts = st.one_of(
    st.text(max_size=20),
    st.text(st.one_of(st.characters(), SURROGATE), max_size=6),
    st.sampled_from(["", " ", "ping", "\ud800", "a\udfffb", "\ud83d\ude00", BYSTANDER]),
)
odd_ints = st.sampled_from([-1, 2**63 - 1, 2**63, 2**64 + 5, -(2**64), 10**15, 10**100, 10**4000])
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), odd_ints, st.floats(), texts),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(texts, kids, max_size=4),
    max_leaves=12,
)


def message(
    kind: st.SearchStrategy[Any], **fields: st.SearchStrategy[Any]
) -> st.SearchStrategy[dict[str, Any]]:
    """An object with ``type`` from ``kind``, each of ``fields`` there or not, and
    maybe some fields no one asked for."""
    base = st.fixed_dictionaries({"type": kind}, optional=fields)
    junk = st.dictionaries(texts, json_values, max_size=2)
    return st.builds(lambda b, j: {**j, **b}, base, junk)


cursors = st.one_of(
    st.sampled_from([0, 7, 10**15, 2**63 - 1, 2**63, 2**64 + 5, -1, "7", 1.5, True, None]),
    json_values,
)
session_ids = st.one_of(
    st.sampled_from([BYSTANDER, "", "0" * 32, "A" * 64, "A" * 65, "a b", "../x"]),
    st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True),
    json_values,
)
tokens = st.one_of(
    st.from_regex(r"[A-Za-z0-9_-]{16,64}", fullmatch=True),
    st.sampled_from(["", "short", "A" * 129]),
    json_values,
)
turn_texts = st.one_of(
    texts,
    st.integers(3995, 4005).map(lambda n: "x" * n),
    st.integers(3995, 4005).map(lambda n: "\u00e9" * (n - 1) + "\ud800"),
    json_values,
)
well_formed_ids = st.one_of(
    st.sampled_from([BYSTANDER, "0" * 32]), st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)
)
well_formed_tokens = st.from_regex(r"[A-Za-z0-9_-]{16,64}", fullmatch=True)
starts = st.one_of(
    message(  # audio format games
        st.just("session.start"),
        rate=st.one_of(st.sampled_from([16000, 8000, 16000.0, "16000"]), json_values),
        format=st.one_of(st.sampled_from(["s16le", "f32le"]), json_values),
        channels=st.one_of(st.sampled_from([1, 2, True]), json_values),
    ),
    message(  # resume games
        st.just("session.start"),
        session_id=session_ids,
        resume_token=tokens,
        last_event=cursors,
        last_audio=cursors,
    ),
    st.fixed_dictionaries(  # a well-formed resume of a session that is not the client's
        {"type": st.just("session.start"), "session_id": well_formed_ids},
        optional={"resume_token": well_formed_tokens, "last_event": cursors, "last_audio": cursors},
    ),
)
messages = st.one_of(
    st.just({"type": "session.start"}),
    starts,
    st.builds(lambda t: {"type": "text", "text": t}, texts),
    message(st.just("text"), text=turn_texts),
    message(st.just("cancel")),
    message(st.just("session.end")),
    message(st.one_of(texts, json_values)),
    json_values,
)
POISON = [
    "[" * 1000 + "]" * 1000,
    '{"type":"text","text":"hi","x":' + "[" * 1000 + "]" * 1000 + "}",
    "1" * 5000,
    '{"type":"session.start","last_event":' + "9" * 5000 + "}",
    '{"type":"text","text":"\\ud800"}',
    '{"type":"\\udfff"}',
    '{"\\ud800":1,"type":"cancel"}',
    '{"type":"text","text":"hi"} trailing',
    '{"type":"session.start","last_event":NaN}',
    '{"type":"text","text":"a","type":"session.end"}',
    "",
    "{",
    "null",
]
raw_texts = st.builds(Raw, st.one_of(st.text(max_size=40), st.sampled_from(POISON)))
frame_sizes = st.one_of(
    st.just(0),
    st.integers(1, 2000),
    st.integers(2000, MAX_FRAME + 2000),
    st.sampled_from([MAX_FRAME - 1, MAX_FRAME, MAX_FRAME + 1, MAX_FRAME + 2]),
)
json_frames = st.builds(Json, messages, st.booleans())
binary_frames = st.builds(Binary, frame_sizes, st.integers(0, 255))
common_frames = st.one_of(
    json_frames,
    raw_texts,
    binary_frames,
    st.builds(Fragmented, st.one_of(json_frames, raw_texts, binary_frames), st.integers(2, 5)),
)
fatal_frames = st.one_of(
    st.builds(
        NotUtf8, st.sampled_from([b"\xff", b'{"type":"text","text":"\xc3"}', b"\xed\xa0\x80"])
    ),
    st.just(Binary(WS_MAX + 2)),
    st.just(Vanish()),
)
frames = st.integers(0, 24).flatmap(lambda i: fatal_frames if i == 24 else common_frames)
"""Frames that close the socket are drawn about one time in 25, so most examples go on."""


@dataclass(frozen=True)
class Post:
    """One ``POST /api/text``: a body under a Content-Type (None: no header)."""

    content_type: str | None
    body: Json | bytes | int
    """A JSON value (``escaped`` False: UTF-8), raw bytes, or a valid-looking body of
    this many bytes."""
    encoding: str = "utf-8"
    chunked: bool = False
    """Sent without Content-Length, in chunks."""

    def content(self, bystander: str) -> bytes:
        if isinstance(self.body, bytes):
            return self.body
        if isinstance(self.body, int):
            head = b'{"text":"'
            return head + b"x" * max(0, self.body - len(head) - 2) + b'"}'
        text = self.body.text(bystander)
        try:
            return text.encode(self.encoding)
        except UnicodeEncodeError:
            return text.encode()

    def declared_json(self) -> bool:
        media = (self.content_type or "").partition(";")[0].strip().lower()
        return media == "application/json"

    def names_a_session(self, bystander: str) -> bool:
        obj = _loads(self.content(bystander))
        return isinstance(obj, dict) and obj.get("session_id") is not None


content_types = st.one_of(
    st.sampled_from(
        [
            None,
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON",
            "text/plain",
            "text/plain; charset=utf-8",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/json-seq",
            "",
        ]
    ),
    st.text(ASCII, max_size=30),
)
rest_objects = st.builds(
    lambda b, j: {**j, **b},
    st.fixed_dictionaries(
        {}, optional={"text": turn_texts, "session_id": session_ids, "resume_token": tokens}
    ),
    st.dictionaries(texts, json_values, max_size=2),
)
rest_bodies = st.one_of(
    st.builds(Json, st.builds(lambda t: {"text": t}, texts), st.booleans()),
    st.builds(
        Json,
        st.fixed_dictionaries(
            {"text": texts, "session_id": well_formed_ids},
            optional={"resume_token": well_formed_tokens},
        ),
        st.booleans(),
    ),
    st.builds(Json, rest_objects, st.booleans()),
    st.builds(Json, json_values, st.booleans()),
    st.one_of(
        st.binary(max_size=40), st.sampled_from([p.encode() for p in POISON] + [b"\xff\xfe"])
    ),
    st.sampled_from([MAX_BODY, MAX_BODY + 1, 200_000]),
)
posts = st.builds(
    Post,
    st.integers(0, 3).flatmap(lambda i: content_types if i == 3 else st.just("application/json")),
    rest_bodies,
    st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "latin-1"]),
    st.booleans(),
)


# --- the rig: gateway, stand-in workers, bystander, log watch ---


class LogWatch(logging.Handler):
    """Collects ERROR records and any record with a traceback from the gateway's loggers."""

    LOGGERS = ("morgan", "uvicorn", "asyncio", "websockets")

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        self.bad: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or record.exc_info:
            self.bad.append(self.format(record))

    def check(self, when: str) -> None:
        bad, self.bad = self.bad, []
        assert not bad, f"the gateway logged {when}:\n" + "\n".join(bad)


class Bystander:
    """A session open through the whole test that must see its own events, and only them."""

    def __init__(self, conn: ClientConnection, sid: str) -> None:
        self.conn = conn
        self.sid = sid
        self.inbox: asyncio.Queue[str | bytes | None] = asyncio.Queue()
        self.turns: list[str] = []
        self.last_id = 0
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for raw in self.conn:
                await self.inbox.put(raw)
        except ConnectionClosed:
            pass
        finally:
            await self.inbox.put(None)

    async def check(self, js: JetStreamContext) -> None:
        turn = f"b{len(self.turns) + 1}"
        self.turns.append(turn)
        await emit(js, Transcript(self.sid, turn, f"for the bystander: {turn}"))
        while True:
            raw = await asyncio.wait_for(self.inbox.get(), TIMEOUT)
            assert raw is not None, f"the bystander's socket closed: {self.conn.close_code}"
            msg = server_message(raw)
            assert msg["type"] == "transcript" and msg["turn"] in self.turns, (
                f"the bystander got what is not its own: {msg}"
            )
            assert msg["id"] > self.last_id, f"bystander events out of order: {msg}"
            self.last_id = msg["id"]
            if msg["turn"] == turn:
                assert msg["text"] == f"for the bystander: {turn}", msg
                return


@dataclass
class Rig:
    gw: RunningGateway
    js: JetStreamContext
    http: httpx.AsyncClient
    bystander: Bystander
    logs: LogWatch
    seen: Counter[str] = field(default_factory=Counter)
    """What the server answered, counted (printed after the test: ``-rP`` shows it)."""

    async def after_example(self) -> None:
        """Invariants 4 and 5, once the gateway has let go of the example's socket."""
        await self.sessions_settle(1)
        await self.bystander.check(self.js)
        self.logs.check("during this example")

    async def sessions_settle(self, expected: int) -> None:
        """Wait (bounded) until the gateway counts ``expected`` open sessions: it has
        finished with the example's socket, so what it logs for it is logged. (The gauge
        is the only sign the gateway gives of that, hence the polling.)"""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TIMEOUT
        while True:
            metrics = (await self.http.get("/metrics")).text
            found = re.search(r"^morgan_gateway_active_sessions (\S+)$", metrics, re.M)
            assert found, metrics
            if float(found[1]) == expected:
                return
            assert loop.time() < deadline, f"{found[1]} sessions open, expected {expected}"
            await asyncio.sleep(0.01)


async def _take_claims(js: JetStreamContext) -> None:
    """Be every VAD worker: take each session claim."""
    sub = await js.pull_subscribe_bind("vad", stream="WORK")
    try:
        while True:
            with contextlib.suppress(NatsTimeoutError):
                for raw in await sub.fetch(1, timeout=1.0):
                    await raw.ack()
    finally:
        await sub.unsubscribe()


@pytest_asyncio.fixture
async def rig(gateway: RunningGateway, js: JetStreamContext) -> AsyncIterator[Rig]:
    workers = [asyncio.create_task(_take_claims(js)), asyncio.create_task(answer_llm(js))]
    logs = LogWatch()  # after the gateway started: uvicorn's dictConfig resets its loggers
    for name in LogWatch.LOGGERS:
        logging.getLogger(name).addHandler(logs)
    conn = await connect(gateway.ws_url)
    try:
        await conn.send('{"type":"session.start"}')
        ready = server_message(await asyncio.wait_for(conn.recv(), TIMEOUT))
        assert ready["type"] == "session.ready", ready
        async with httpx.AsyncClient(base_url=gateway.url, timeout=TIMEOUT * 3) as http:
            rig = Rig(gateway, js, http, Bystander(conn, ready["session_id"]), logs)
            yield rig
            print("the gateway answered:", dict(sorted(rig.seen.items())))
            await rig.bystander.check(js)
        logs.check("after the last example")
    finally:
        await conn.close()
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        for name in LogWatch.LOGGERS:
            logging.getLogger(name).removeHandler(logs)


# --- reading the server ---


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def server_message(raw: str | bytes) -> dict[str, Any]:
    """A server text frame, checked: strict JSON, an object with a known type, and an
    error with a documented code and a message."""
    assert isinstance(raw, str), f"an unexpected binary frame from the server: {_short(raw)}"
    msg = json.loads(raw, parse_constant=_no_constants)
    assert isinstance(msg, dict) and msg.get("type") in SERVER_TYPES, f"odd server frame: {raw}"
    if msg["type"] == "error":
        assert msg.get("code") in WS_ERRORS, f"undocumented error: {raw}"
        assert isinstance(msg.get("message"), str) and msg["message"].strip(), raw
        assert isinstance(msg.get("retryable"), bool), raw
    if msg["type"] == "session.ready" and msg.get("resumed") is False:
        token = msg.get("resume_token")
        assert isinstance(token, str) and len(token) >= 16, f"no resume_token: {raw}"
    return msg


async def read_until(
    conn: ClientConnection, got: list[dict[str, Any]], done: Callable[[dict[str, Any]], bool]
) -> dict[str, Any] | None:
    """Server messages into ``got`` until one is ``done``; None if the socket closed."""
    while True:
        try:
            raw = await asyncio.wait_for(conn.recv(), TIMEOUT)
        except ConnectionClosed:
            return None
        except TimeoutError:
            raise AssertionError(f"no answer in {TIMEOUT} s; got so far: {got}") from None
        msg = server_message(raw)
        got.append(msg)
        if done(msg):
            return msg


def _is(kind: str, code: str | None = None) -> Callable[[dict[str, Any]], bool]:
    return lambda m: m["type"] == kind and (code is None or m.get("code") == code)


def _answers_ping(m: dict[str, Any]) -> bool:
    return (m["type"] == "transcript" and m.get("text") == "ping") or _is(
        "error", "too_many_turns"
    )(m)


# --- one WebSocket example ---

START = '{"type":"session.start"}'
NEW = Json({"type": "session.start"})
AGAIN = Json({"type": "text", "text": "again"})
FORGED = "A" * 32
"""A well-formed resume token that no session has."""
PING = '{"type":"text","text":"ping"}'


@dataclass
class Seen:
    got: list[dict[str, Any]]
    """Every message the server sent, in order."""
    closed: int | None
    """The code the server closed the socket with (1006: no close frame); None if open."""

    def errors(self) -> list[str]:
        return [m["code"] for m in self.got if m["type"] == "error"]


async def exchange(rig: Rig, frames: list[Frame]) -> Seen:
    """Send ``frames`` on a fresh socket, probe it, check invariants 2 and 3, close it."""
    sid = rig.bystander.sid
    conn = await connect(rig.gw.ws_url)
    got: list[dict[str, Any]] = []
    sent: list[Frame] = []
    answer = ping = None
    code = None
    try:
        for frame in frames:
            await send_frame(conn, frame, sid)
            sent.append(frame)
            if isinstance(frame, Vanish):
                rig.seen["vanished"] += 1
                await conn.close()
                return Seen(got, None)  # nothing to probe: only invariants 4 and 5 apply
        await conn.send(START)
        answer = await read_until(
            conn, got, lambda m: _is("session.ready")(m) or _is("error", "already_started")(m)
        )
        if answer is not None:
            await conn.send(PING)
            ping = await read_until(conn, got, _answers_ping)
    except ConnectionClosed:  # the server closed it: below, it must have had a reason
        with contextlib.suppress(ConnectionClosed):
            await read_until(conn, got, lambda m: False)
    if ping is None:  # invariant 2: closed, and with a code the client earned
        closed_by = conn.protocol.close_rcvd
        code = 1006 if closed_by is None else closed_by.code
        rig.seen[f"closed {code}"] += 1
        assert conn.state is not State.OPEN, f"no answer, yet the socket is open; got {got}"
        reasons = {
            1000: any(ends_session(f, sid) for f in sent),
            1007: any(isinstance(f, NotUtf8) for f in sent),
            1009: any(isinstance(f, Binary) and f.size > WS_MAX for f in sent),
            1008: True,
        }
        assert reasons.get(code), (
            f"the server closed the socket with {code} ({conn.close_reason!r}) after "
            f"{len(sent)} of {len(frames)} frames; got {got}"
        )
    await conn.close()
    readies = [m for m in got if m["type"] == "session.ready"]
    assert len(readies) <= 1, f"two session.ready on one socket: {got}"
    assert all(m["resumed"] is False for m in readies), f"a forged resume was accepted: {got}"
    if answer is not None and answer["type"] == "error":
        assert readies, f"already_started, but no session.ready came: {got}"
    for m in got:
        rig.seen[f"error {m['code']}" if m["type"] == "error" else m["type"]] += 1
    return Seen(got, code)


@given(
    frames=st.one_of(
        st.lists(frames, max_size=12),
        st.lists(frames, max_size=11).map(lambda rest: [NEW, *rest]),  # in a session
        st.lists(frames, max_size=8).map(lambda rest: [NEW, *[AGAIN] * 5, *rest]),  # turns
    )
)
@hypothesis_settings(FUZZ, max_examples=1000)
async def test_random_frames_never_break_the_socket_other_sessions_or_the_log(
    rig: Rig, frames: list[Frame]
) -> None:
    await exchange(rig, frames)
    await rig.after_example()


# --- one REST example ---


async def _chunks(data: bytes, size: int = 4096) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def post(rig: Rig, request: Post) -> httpx.Response:
    """Send ``request`` and check invariant 1 (and the documented status, where the
    request alone decides it)."""
    sid = rig.bystander.sid
    headers = {} if request.content_type is None else {"Content-Type": request.content_type}
    content = request.content(sid)
    if request.chunked:
        got = await rig.http.post("/api/text", content=_chunks(content), headers=headers)
    else:
        got = await rig.http.post("/api/text", content=content, headers=headers)
    rig.seen[f"status {got.status_code}"] += 1
    if got.status_code == 200:
        answer = got.json()
        assert not request.names_a_session(sid), f"a forged session_id was accepted: {answer}"
        assert isinstance(answer.get("resume_token"), str), answer
        assert base64.b64decode(answer["audio_base64"])[:4] == b"RIFF", answer
    else:
        assert got.headers.get("content-type") == "application/json", got.headers
        body = got.json()
        assert isinstance(body, dict) and set(body) == {"error", "message"}, got.text
        assert body["error"] in REST_ERRORS.get(got.status_code, set()), (
            f"{got.status_code} {body} is not documented"
        )
        assert isinstance(body["message"], str) and body["message"].strip(), got.text
        if got.status_code in (429, 503):
            assert got.headers.get("retry-after", "").isdigit(), got.headers
    if not request.declared_json():
        assert got.status_code == 415, f"{got.status_code} {got.text}"
    elif len(request.content(sid)) > MAX_BODY:
        assert got.status_code == 413, f"{got.status_code} {got.text}"
    return got


@given(request=posts)
@hypothesis_settings(FUZZ, max_examples=1000)
async def test_random_bodies_get_documented_answers_and_break_nothing(
    rig: Rig, request: Post
) -> None:
    await post(rig, request)
    await rig.after_example()


# --- the known poisons, one by one ---

WS_CASES: dict[str, tuple[list[Frame], list[str]]] = {
    "lone-surrogate-text": (
        [Raw('{"type":"text","text":"\\ud800"}')],
        ["bad_text|bad_json"],
    ),
    "lone-surrogate-text-in-session": (
        [NEW, Raw('{"type":"text","text":"\\ud800"}')],
        ["bad_text", "already_started"],
    ),
    "lone-surrogate-type": ([NEW, Raw('{"type":"\\udfff"}')], ["bad_json", "already_started"]),
    "lone-surrogate-key": ([Raw('{"\\ud800":1,"type":"cancel"}')], ["bad_json"]),
    "deep-array": ([Raw("[" * 1000 + "]" * 1000)], ["bad_json"]),
    "deep-in-object": (
        [NEW, Raw('{"type":"text","text":"hi","x":' + "[" * 1000 + "]" * 1000 + "}")],
        ["bad_json", "already_started"],
    ),
    "5000-digits": ([Raw("1" * 5000)], ["bad_json"]),
    "5000-digit-cursor": (
        [Raw('{"type":"session.start","last_event":' + "9" * 5000 + "}")],
        ["bad_json"],
    ),
    "forged-resume": (
        [Json({"type": "session.start", "session_id": BYSTANDER, "resume_token": FORGED})],
        ["unknown_session"],
    ),
    "resume-without-token": (
        [Json({"type": "session.start", "session_id": BYSTANDER})],
        ["bad_message"],
    ),
    "unknown-session": (
        [Json({"type": "session.start", "session_id": "0" * 32, "resume_token": FORGED})],
        ["unknown_session"],
    ),
    "forged-resume-huge-cursor": (
        [
            Json(
                {
                    "type": "session.start",
                    "session_id": BYSTANDER,
                    "resume_token": FORGED,
                    "last_event": 10**15,
                    "last_audio": 10**15,
                }
            )
        ],
        ["unknown_session"],
    ),
    "forged-resume-cursor-past-64-bits": (
        [
            Json(
                {
                    "type": "session.start",
                    "session_id": BYSTANDER,
                    "resume_token": FORGED,
                    "last_event": 2**64 + 5,
                }
            )
        ],
        ["bad_message"],
    ),
}


@pytest.mark.parametrize(("frames", "codes"), list(WS_CASES.values()), ids=list(WS_CASES))
async def test_a_poisoned_frame_gets_its_error_and_the_socket_goes_on(
    rig: Rig, frames: list[Frame], codes: list[str]
) -> None:
    seen = await exchange(rig, frames)
    assert seen.closed is None
    errors = seen.errors()
    assert len(errors) == len(codes), seen.got
    for got, allowed in zip(errors, codes, strict=True):
        assert got in allowed.split("|"), seen.got
    await rig.after_example()


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (NotUtf8(b"\xff"), 1007),
        (NotUtf8(b"\xed\xa0\x80"), 1007),  # a UTF-8-encoded surrogate
        (Binary(WS_MAX + 2), 1009),
    ],
    ids=["not-utf8", "utf8-surrogate", "over-ws-max"],
)
async def test_a_frame_the_websocket_layer_refuses_closes_the_socket_cleanly(
    rig: Rig, frame: Frame, code: int
) -> None:
    seen = await exchange(rig, [NEW, frame])
    assert seen.closed == code, seen.got
    await rig.after_example()


async def _own_session(rig: Rig) -> tuple[str, str]:
    """A session of this test's own, disconnected (resumable): its id and token."""
    async with connect(rig.gw.ws_url) as conn:
        await conn.send(START)
        ready = server_message(await asyncio.wait_for(conn.recv(), TIMEOUT))
    await rig.sessions_settle(1)
    return ready["session_id"], ready["resume_token"]


@pytest.mark.parametrize(
    ("cursor", "code"),
    [
        (0, None),
        (10**15, None),
        (2**63 - 1, None),
        (2**63, "bad_message"),
        (2**64 + 5, "bad_message"),
        (-1, "bad_message"),
        ("7", "bad_message"),
        (1.5, "bad_message"),
        (True, "bad_message"),
    ],
)
async def test_a_resume_cursor_is_an_integer_and_past_the_end_means_the_end(
    rig: Rig, cursor: Any, code: str | None
) -> None:
    sid, token = await _own_session(rig)
    await emit(rig.js, Transcript(sid, "u1", "said before the resume"))
    resume = {"type": "session.start", "session_id": sid, "resume_token": token}
    async with connect(rig.gw.ws_url) as conn:
        await conn.send(json.dumps({**resume, "last_event": cursor, "last_audio": cursor}))
        got: list[dict[str, Any]] = []
        answer = await read_until(conn, got, lambda m: m["type"] in ("session.ready", "error"))
        assert answer is not None, got
        if code is not None:
            assert (answer["type"], answer.get("code")) == ("error", code), got
            await conn.send(json.dumps(resume))  # the session was not started: it still can be
            answer = await read_until(conn, got, _is("session.ready"))
            cursor = 0
        assert answer is not None and answer["resumed"] is True, got
        assert "resume_token" not in answer, answer
        await conn.send(PING)
        first = await read_until(conn, got, lambda m: m["type"] == "transcript")
        assert first is not None, got
        if cursor == 0:  # replayed from the start
            assert first["text"] == "said before the resume", got
            first = await read_until(conn, got, lambda m: m["type"] == "transcript")
            assert first is not None, got
        assert first["text"] == "ping", f"a cursor past the end replayed: {got}"
    await rig.after_example()


REST_CASES: dict[str, tuple[Post, int, str]] = {
    "lone-surrogate": (
        Post("application/json", b'{"text":"\\ud800"}'),
        422,
        "bad_text|bad_json",
    ),
    "lone-surrogate-key": (
        Post("application/json", b'{"text":"hi","\\udfff":1}'),
        422,
        "bad_json",
    ),
    "deep": (
        Post("application/json", b'{"text":"hi","x":' + b"[" * 1000 + b"]" * 1000 + b"}"),
        422,
        "bad_json",
    ),
    "deep-array": (Post("application/json", b"[" * 1000 + b"]" * 1000), 422, "bad_json"),
    "5000-digits": (Post("application/json", b'{"text":' + b"7" * 5000 + b"}"), 422, "bad_json"),
    "5000-digits-elsewhere": (
        Post("application/json", b'{"text":"hi","n":' + b"7" * 5000 + b"}"),
        422,
        "bad_json",
    ),
    "not-utf8": (Post("application/json", b'{"text":"caf\xe9"}'), 422, "bad_json"),
    "forged-session": (
        Post(
            "application/json",
            Json({"text": "hi", "session_id": BYSTANDER, "resume_token": FORGED}),
        ),
        404,
        "unknown_session",
    ),
    "session-without-token": (
        Post("application/json", Json({"text": "hi", "session_id": BYSTANDER})),
        422,
        "bad_message",
    ),
    "unknown-session": (
        Post(
            "application/json", Json({"text": "hi", "session_id": "0" * 32, "resume_token": FORGED})
        ),
        404,
        "unknown_session",
    ),
    "text-plain": (Post("text/plain", Json({"text": "hi"})), 415, "bad_content_type"),
    "no-content-type": (Post(None, Json({"text": "hi"})), 415, "bad_content_type"),
    "too-large": (Post("application/json", MAX_BODY + 1), 413, "too_large"),
}


@pytest.mark.parametrize(
    ("request_", "status", "code"), list(REST_CASES.values()), ids=list(REST_CASES)
)
async def test_a_poisoned_body_gets_its_documented_error(
    rig: Rig, request_: Post, status: int, code: str
) -> None:
    got = await post(rig, request_)
    assert got.status_code == status, got.text
    assert got.json()["error"] in code.split("|"), got.text
    await rig.after_example()


async def test_a_plain_typed_turn_is_answered(rig: Rig) -> None:
    """The fuzz's baseline: with the stand-in LLM a good body gets its 200."""
    got = await post(rig, Post("application/json", Json({"text": "hello"})))
    assert got.status_code == 200, got.text
    await rig.after_example()


async def test_session_end_then_an_immediate_close_logs_nothing(rig: Rig) -> None:
    """A client that ends its session and closes its socket at once (the usual goodbye)."""
    for _ in range(5):
        async with connect(rig.gw.ws_url) as conn:
            await conn.send(START)
            server_message(await asyncio.wait_for(conn.recv(), TIMEOUT))
            await conn.send('{"type":"session.end"}')
        await rig.after_example()
