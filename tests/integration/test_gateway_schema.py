"""Schemathesis against the gateway's own OpenAPI schema (issue 11, item 5).

The real gateway, over a real nats-server and a PostgreSQL database of the test's own
(the conversation routes read and write it), with API keys (``alice:<key>``). Its
``/openapi.json`` is loaded and every operation in it is called with generated
requests, valid and invalid (schemathesis' positive and negative modes), once with
alice's key (``Authorization: Bearer``) and once without. Whatever comes:

1. no answer is a 5xx (``not_a_server_error``);
2. an answer whose status the schema declares has the body it declares
   (``response_schema_conformance``);
3. the gateway is still serving afterwards (``/health`` answers 200);
4. it logged no traceback and nothing at ERROR;
5. a WebSocket session opened before the fuzzing still gets its transcript for a
   typed turn afterwards.

Path parameters also get known poisons (a NUL, 5000 characters, ``..``), and the
conversation routes alice's own conversation. No processors run: the test answers
each LLM request with an empty ``reply.done``, so typed turns end at once.

The run is bounded and deterministic: per operation ``2 * EXAMPLES`` requests from
both modes, and 4 for each fixed path value, drawn derandomized (about 10 s per key
setting). Schemathesis is synchronous (``requests``), so it runs in a worker
thread while the gateway serves in the test's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import pytest_asyncio
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy
from nats.js import JetStreamContext
from schemathesis import APIOperation, Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.errors import FailureGroup
from schemathesis.specs.openapi.checks import response_schema_conformance
from websockets.asyncio.client import connect

from gateway.server import RunningGateway
from store.history import History
from streams.settings import Settings
from tests.integration.gateway_helpers import Client, answer_llm, serving

KEY = "alice-schema-fuzz-key-0123456789"
EXAMPLES = 50
"""Generated requests per operation and generation mode (on average)."""
LOGGERS = ("morgan", "uvicorn", "asyncio", "websockets")
CHECKS = [not_a_server_error, response_schema_conformance]
POISONS = ["\x00", "a\x00b", "x" * 5000, "..", "%", "\u00e9\U0001f600", " ", "me"]
"""Path parameter values tried on every operation that has one."""
Operation = APIOperation[Any, Any, Any, Any]
DRAWS = hypothesis_settings(
    derandomize=True,
    database=None,
    deadline=None,
    phases=[Phase.explicit, Phase.generate, Phase.shrink],
    suppress_health_check=list(HealthCheck),
)


@dataclass
class Fuzzed:
    gateway: RunningGateway
    conversation: str
    """A conversation of alice's, so that the routes also find one."""


class LogWatch(logging.Handler):
    """ERROR records, and any record with a traceback, from the gateway's loggers."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.bad: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or record.exc_info:
            self.bad.append(f"{record.levelname} {record.name}: {record.getMessage()}")


@pytest.fixture
def log_watch() -> Iterator[LogWatch]:
    watch = LogWatch()
    for name in LOGGERS:
        logging.getLogger(name).addHandler(watch)
    try:
        yield watch
    finally:
        for name in LOGGERS:
            logging.getLogger(name).removeHandler(watch)


@pytest_asyncio.fixture
async def fuzzed(
    settings: Settings, js: JetStreamContext, postgres_dsn: str
) -> AsyncIterator[Fuzzed]:
    """A gateway with alice's key, a database holding one conversation of hers, and a
    stand-in LLM."""
    history = await History.open(postgres_dsn)
    try:
        sid, at = uuid.uuid4().hex, time.time() - 60
        await history.record_user(sid, "t1", "alice", "what is NATS", typed=True, at=at)
        await history.record_reply(sid, "t1", "alice", "A bus.", cancelled=False, at=at + 1)
    finally:
        await history.close()
    update = {
        "api_keys": f"alice:{KEY}",
        "database_url": postgres_dsn,
        "key_rate_per_min": 1_000_000,  # the fuzzing is one client: let every request in
    }
    llm = asyncio.create_task(answer_llm(js))
    try:
        async with serving(settings, **update) as gw:
            yield Fuzzed(gw, sid)
    finally:
        llm.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await llm


def draws(operation: Operation, conversation: str) -> list[tuple[SearchStrategy[Case[Any]], int]]:
    """What to draw for one operation, and how many: ``EXAMPLES`` generated requests per
    mode, then a few with each poison (and alice's conversation) in each path parameter."""

    def both(path: dict[str, str] | None) -> SearchStrategy[Case[Any]]:
        modes = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
        return st.one_of([operation.as_strategy(mode, path_parameters=path) for mode in modes])

    plan = [(both(None), 2 * EXAMPLES)]
    for name in re.findall(r"\{(\w+)\}", operation.path):
        values = [*POISONS, conversation] if name == "sid" else POISONS
        plan += [(both({name: value}), 4) for value in values]
    return plan


def fuzz(base_url: str, key: str | None, conversation: str) -> list[str]:
    """Every operation of the live schema (``draws``); what failed, one report per
    operation. Blocking: run it in a thread. Prints how each operation answered."""
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json", timeout=10)
    failures: list[str] = []
    seen: Counter[str] = Counter()
    with requests.Session() as http:

        def call(case: Case[Any]) -> None:
            answer = case.call_and_validate(
                base_url=base_url, session=http, headers=headers, checks=CHECKS, timeout=10
            )
            seen[f"{case.operation.label} {answer.status_code}"] += 1

        operations = []
        for result in schema.get_all_operations():
            assert isinstance(result, Ok), f"the schema is not valid: {result}"
            operations.append(result.ok())
        operations.sort(key=lambda op: op.method.upper() == "DELETE")  # alice's data last
        for operation in operations:
            try:
                for strategy, examples in draws(operation, conversation):
                    limits = hypothesis_settings(DRAWS, max_examples=examples)
                    limits(given(case=strategy)(call))()
            except FailureGroup as exc:  # a check failed: keep the report, fuzz the rest
                failures.append(f"{operation.label}: {exc}")
    print("the gateway answered:", dict(sorted(seen.items())))
    return failures


@pytest.mark.parametrize("key", [KEY, None], ids=["with-key", "without-key"])
async def test_every_route_answers_by_its_schema_and_breaks_nothing(
    fuzzed: Fuzzed, log_watch: LogWatch, key: str | None
) -> None:
    gw = fuzzed.gateway
    bystander = Client(
        await connect(gw.ws_url, additional_headers={"Authorization": f"Bearer {KEY}"})
    )
    await bystander.start()
    failures = await asyncio.to_thread(fuzz, gw.url, key, fuzzed.conversation)
    assert not failures, "\n\n".join(failures)
    assert not gw.task.done(), "the gateway stopped"
    async with httpx.AsyncClient(base_url=gw.url) as http:
        assert (await http.get("/health")).status_code == 200
    await bystander.send({"type": "text", "text": "still here?"})
    answer = await bystander.recv()
    assert (answer["type"], answer["text"]) == ("transcript", "still here?"), answer
    await bystander.conn.close()
    assert not log_watch.bad, log_watch.bad
