"""A kind's handler without NATS: messages in, what it published out.

    ctx = MemoryContext.of(stt.SPEC, state=model)
    await ctx.handle(Utterance("s1", "u1", pcm=...))
    assert [t.text for t in ctx.emitted_of(Transcript)] == ["hello"]

``MemoryContext`` is the ``Context`` a handler sees in the runtime, kept in memory:
it checks, as the runtime does, that the message is one the kind accepts and that
everything published is declared; it routes forwarded work by the same route table;
cancels and session ends are set by the test. KV buckets are in-memory, with the
compare-and-set semantics of NATS KV that handlers rely on.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from processors.context import KvStore, undeclared
from processors.spec import Spec
from schemas import AudioChunk, Message, MessageError, Unavailable
from streams import definitions
from streams.routes import Routes
from streams.settings import Settings

M = TypeVar("M", bound=Message)


@dataclass
class Entry:
    key: str
    value: bytes
    revision: int


class MemoryKv:
    """A KV bucket in memory: get, put, and update with an expected last revision (0: the
    key must not exist yet), as NATS KV does them."""

    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}
        self.revision = 0

    async def get(self, key: str) -> Entry:
        if key not in self.entries:
            raise KeyNotFoundError()
        return self.entries[key]

    async def update(self, key: str, value: bytes, last: int | None = None) -> int:
        current = self.entries.get(key)
        if last is not None and (current.revision if current else 0) != last:
            raise KeyWrongLastSequenceError()
        self.revision += 1
        self.entries[key] = Entry(key, value, self.revision)
        return self.revision

    async def put(self, key: str, value: bytes) -> int:
        return await self.update(key, value)


@dataclass
class MemoryContext:
    spec: Spec
    settings: Settings
    state: Any = None
    tier: str | None = None
    routes: Routes = field(default_factory=Routes)
    emitted: list[Message] = field(default_factory=list)
    """Events, in order."""
    forwarded: list[tuple[str, Message]] = field(default_factory=list)
    """(the kind the route table sent it to, work), in order."""
    audio: list[AudioChunk] = field(default_factory=list)
    controls: list[Message] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    """Message ids of everything published, in order (dedup keys)."""
    cancelled_turns: set[tuple[str, str]] = field(default_factory=set)
    ended_sessions: set[str] = field(default_factory=set)
    buckets: dict[str, KvStore] = field(default_factory=dict)
    """The KV buckets by name: in memory unless a test puts a real one here."""
    stopping: bool = False
    user: str = ""
    """The session's user, as the runtime reads it from the message's headers."""
    sent_by: str = ""
    """The worker that published the message being handled."""
    sent_at: float = field(default_factory=time.time)
    """When the message was stored in its stream, Unix seconds."""
    answers: dict[tuple[str, str], Callable[[bytes], Awaitable[bytes]]] = field(
        default_factory=dict
    )
    """What ``ask(kind, endpoint, ...)`` answers: a kind's endpoint handler (over its
    state), or a function of the test's; a missing one is ``Unavailable``, as when no
    worker of that kind runs."""
    confirmed: bool = True
    """What ``settled()`` answers: False plays a speculation that was abandoned."""
    speculating: str = ""
    """Set by ``speculative(attempt)``: forwarded work's ids end in ``~<attempt>``."""

    @classmethod
    def of(
        cls, spec: Spec, *, state: Any = None, settings: Settings | None = None, user: str = ""
    ) -> MemoryContext:
        return cls(spec, settings or Settings(), state, user=user)

    async def handle(self, message: Message) -> None:
        """Run the kind's handler on ``message`` as the runtime would (accepts checked)."""
        if not isinstance(message, self.spec.accepts):
            raise MessageError(f"{self.spec.kind} does not take {message.TYPE!r}")
        assert self.spec.handle is not None, "a claim kind has no message handler"
        await self.spec.handle(message, self)

    def emitted_of(self, kind: type[M]) -> list[M]:
        return [m for m in self.emitted if isinstance(m, kind)]

    # --- the Context protocol ---
    def current_settings(self) -> Settings:
        return self.settings

    def cancelled(self, sid: str, turn: str) -> bool:
        return (sid, turn) in self.cancelled_turns or not self.confirmed

    async def settled(self) -> bool:
        return self.confirmed

    def speculative(self, attempt: str) -> MemoryContext:
        return dataclasses.replace(self, speculating=attempt)  # the same lists: one record

    def session_ended(self, sid: str) -> bool:
        return sid in self.ended_sessions

    @property
    def draining(self) -> bool:
        return self.stopping

    def _declared(self, msg: Message, msg_id: str = "") -> None:
        if not isinstance(msg, self.spec.publishes):
            raise undeclared(self.spec.kind, msg)
        self.ids.append(msg_id)

    async def emit(
        self, event: Message, *, msg_id: str, trace: dict[str, str] | None = None
    ) -> None:
        self._declared(event, msg_id)
        self.emitted.append(event)

    async def forward(
        self, work: Message, *, msg_id: str, trace: dict[str, str] | None = None
    ) -> None:
        self._declared(work, f"{msg_id}~{self.speculating}" if self.speculating else msg_id)
        self.forwarded.append((self.routes.next_kind(self.spec.kind, work.TYPE), work))

    async def send_audio(self, chunk: AudioChunk, *, msg_id: str) -> None:
        self._declared(chunk, msg_id)
        self.audio.append(chunk)

    async def control(self, msg: Message) -> None:
        self._declared(msg)
        self.controls.append(msg)

    async def key_value(self, bucket: str) -> KvStore:
        if bucket not in definitions.bucket_configs(self.settings):
            raise KeyError(f"KV bucket {bucket!r} is not declared in streams.definitions")
        if bucket not in self.spec.buckets:
            raise KeyError(f"kind {self.spec.kind} uses KV {bucket!r} without Spec.buckets")
        return self.buckets.setdefault(bucket, MemoryKv())

    async def ask(self, kind: str, endpoint: str, body: bytes, timeout: float) -> bytes:
        if f"{kind}.{endpoint}" not in self.spec.asks:
            raise KeyError(f"kind {self.spec.kind} asks {kind}.{endpoint} without Spec.asks")
        answer = self.answers.get((kind, endpoint))
        if answer is None:
            raise Unavailable(f"{kind}.{endpoint}: no answer (no worker)")
        return await answer(body)
