"""The llm processor's openai backend against a real OpenAI-compatible server.

The server is llama-cpp-python's own (``python -m llama_cpp.server``) serving
the shipped SmolLM2 GGUF on a free port; Ollama speaks the same protocol.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import httpx
import pytest
from nats.js import JetStreamContext

from processors import llm, llm_backends, models
from processors.runtime import Worker
from schemas import ErrorEvent, LlmRequest, ReplyDelta, ReplyDone, Subjects
from streams import bus, definitions
from streams.settings import Settings
from testbed import processes
from testbed.ports import free_port
from tests.integration.bus_helpers import stored, until
from tests.integration.workers import running

S = Subjects()


@pytest.fixture(scope="module")
def llm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``python -m llama_cpp.server`` on a free port; yields its ``/v1`` base URL."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("llm-server") / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(models.smollm2_gguf_path())]
            + ["--host", "127.0.0.1", "--port", str(port), "--verbose", "false"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log_path.read_text(errors="replace")
            assert time.monotonic() < deadline, "llama_cpp.server not ready in 60 s"
            try:
                if httpx.get(f"{url}/models", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)  # polling the server with a deadline, not synchronising
        yield url
    finally:
        processes.stop(proc)


@asynccontextmanager
async def openai_worker(settings: Settings) -> AsyncIterator[Worker]:
    """The real llm SPEC with the openai backend; its unload closes the HTTP client."""
    assert settings.llm_backend == "openai"
    async with running(llm.SPEC, settings) as worker:
        assert isinstance(worker.state.backend, llm_backends.OpenAIBackend)
        yield worker


def openai_settings(settings: Settings, url: str, **update: object) -> Settings:
    return settings.model_copy(
        update={"llm_backend": "openai", "llm_url": url, "llm_model": "smollm2", **update}
    )


async def settled(js: JetStreamContext) -> bool:
    info = await js.consumer_info(definitions.WORK, "llm")
    return bool(info.num_pending == 0 and info.num_ack_pending == 0)


async def ask(js: JetStreamContext, sid: str, text: str) -> ReplyDone:
    await bus.publish(js, S.work("llm"), LlmRequest(sid, "t1", text), msg_id=f"{sid}.t1.llm")
    await until(lambda: settled(js))
    [done] = await stored(js, definitions.EVENTS, S.events(sid, "reply.done"))
    assert isinstance(done, ReplyDone)
    return done


async def test_openai_backend_streams_the_reply_from_a_real_server(
    settings: Settings, js: JetStreamContext, llm_server: str
) -> None:
    settings = openai_settings(settings, llm_server)
    async with openai_worker(settings) as worker:
        described = f"openai-compatible smollm2 at {llm_server}; context L1"
        assert worker.spec.describe(worker.state) == described
        done = await ask(js, "o1", "What can you do for me?")
    deltas = await stored(js, definitions.EVENTS, S.events("o1", "reply.delta"))
    tts = await stored(js, definitions.WORK, S.work("tts", "cpu"))
    assert len(deltas) > 1 and done.text.strip()
    assert "".join(d.text for d in deltas if isinstance(d, ReplyDelta)) == done.text
    assert done.sentences == len(tts) >= 1


async def test_system_prompt_reaches_the_model(
    settings: Settings, js: JetStreamContext, llm_server: str
) -> None:
    named = openai_settings(settings, llm_server, llm_system_prompt="Your name is Morgan.")
    async with openai_worker(named):
        morgan = await ask(js, "o2", "What is your name?")
    other = openai_settings(settings, llm_server, llm_system_prompt="You are a helpful robot.")
    async with openai_worker(other):
        robot = await ask(js, "o3", "What is your name?")
    assert "Morgan" in morgan.text
    assert "Morgan" not in robot.text


async def test_unreachable_server_is_retried_then_given_up_with_an_error_event(
    settings: Settings, js: JetStreamContext
) -> None:
    settings = openai_settings(settings, f"http://127.0.0.1:{free_port()}/v1", max_deliver=3)
    async with openai_worker(settings) as worker:
        await bus.publish(js, S.work("llm"), LlmRequest("o4", "t1", "Hello?"))
        await until(lambda: settled(js))
        assert (worker.handled, worker.failed) == (0, 1)
    info = await js.consumer_info(definitions.WORK, "llm")
    assert info.delivered.consumer_seq == 3  # delivered, nak'd and redelivered up to max_deliver
    [error] = await stored(js, definitions.EVENTS, S.events("o4", "error"))
    assert isinstance(error, ErrorEvent) and (error.code, error.turn) == ("llm_unavailable", "t1")
    assert "unreachable" in error.message
    assert await stored(js, definitions.EVENTS, S.events("o4", "reply.done")) == []


async def test_request_the_server_refuses_is_given_up_at_once(
    settings: Settings, js: JetStreamContext, llm_server: str
) -> None:
    settings = openai_settings(settings, f"{llm_server}/no-such-api")  # answered with 404
    async with openai_worker(settings) as worker:
        await bus.publish(js, S.work("llm"), LlmRequest("o5", "t1", "Hello?"))
        await until(lambda: settled(js))
        assert worker.failed == 1
    info = await js.consumer_info(definitions.WORK, "llm")
    assert info.delivered.consumer_seq == 1  # not retried
    [error] = await stored(js, definitions.EVENTS, S.events("o5", "error"))
    assert isinstance(error, ErrorEvent) and error.code == "llm_rejected"
    assert "404" in error.message


async def test_reply_cut_off_by_the_server_is_retried_not_taken_as_empty(
    settings: Settings, js: JetStreamContext, llm_server: str
) -> None:
    too_long = "Remember this. " * 1500  # past the 2048-token context: 200, then the stream ends
    settings = openai_settings(settings, llm_server, llm_system_prompt=too_long, max_deliver=2)
    async with openai_worker(settings) as worker:
        await bus.publish(js, S.work("llm"), LlmRequest("o6", "t1", "Hello?"))
        await until(lambda: settled(js))
        assert (worker.handled, worker.failed) == (0, 1)
    assert (await js.consumer_info(definitions.WORK, "llm")).delivered.consumer_seq == 2
    assert await stored(js, definitions.EVENTS, S.events("o6", "reply.done")) == []
    [error] = await stored(js, definitions.EVENTS, S.events("o6", "error"))
    assert isinstance(error, ErrorEvent) and "[DONE]" in error.message


async def test_backend_closing_the_stream_early_closes_the_response(llm_server: str) -> None:
    settings = openai_settings(Settings(), llm_server, llm_max_tokens=300)
    backend = llm_backends.OpenAIBackend(settings)
    messages = llm.prompt("", [], "Tell me a long story about a dragon.")
    got: list[str] = []
    try:
        async for delta in backend.stream(messages, lambda: len(got) >= 3):
            got.append(delta)
        assert len(got) == 3
        # the server is free again: the next request is answered
        assert [d async for d in backend.stream(llm.prompt("", [], "Hi"), lambda: False)]
    finally:
        await backend.aclose()


async def test_each_request_uses_the_backend_settings_of_that_moment() -> None:
    """Live config: temperature, max tokens, URL, model and API key are read per request."""
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        chunk = '{"choices":[{"delta":{"content":"Hi"}}]}'
        return httpx.Response(200, content=f"data: {chunk}\n\ndata: [DONE]\n\n".encode())

    first = openai_settings(Settings(), "http://a.invalid/v1", llm_temperature=0.0)
    backend = llm_backends.OpenAIBackend(first)
    await backend.client.aclose()
    backend.client = httpx.AsyncClient(transport=httpx.MockTransport(answer))
    messages = llm.prompt("", [], "Hi")
    try:
        assert [d async for d in backend.stream(messages, lambda: False)] == ["Hi"]
        backend.settings = first.model_copy(
            update={
                "llm_temperature": 0.7,
                "llm_max_tokens": 7,
                "llm_url": "http://b.invalid/v1/",
                "llm_model": "bigger",
                "llm_api_key": "sk-new",
            }
        )
        assert [d async for d in backend.stream(messages, lambda: False)] == ["Hi"]
        assert backend.describe() == "openai-compatible bigger at http://b.invalid/v1"
    finally:
        await backend.aclose()
    bodies = [json.loads(r.content) for r in seen]
    assert [str(r.url) for r in seen] == [
        "http://a.invalid/v1/chat/completions",
        "http://b.invalid/v1/chat/completions",
    ]
    assert [(b["temperature"], b["max_tokens"], b["model"]) for b in bodies] == [
        (0.0, first.llm_max_tokens, "smollm2"),
        (0.7, 7, "bigger"),
    ]
    assert "authorization" not in seen[0].headers
    assert seen[1].headers["authorization"] == "Bearer sk-new"


async def test_max_tokens_set_on_a_running_backend_limits_the_next_reply(llm_server: str) -> None:
    settings = openai_settings(Settings(), llm_server, llm_max_tokens=40)
    backend = llm_backends.OpenAIBackend(settings)
    messages = llm.prompt("", [], "Tell me a long story about a dragon.")
    try:
        long = [d async for d in backend.stream(messages, lambda: False)]
        backend.settings = settings.model_copy(update={"llm_max_tokens": 3})
        short = [d async for d in backend.stream(messages, lambda: False)]
    finally:
        await backend.aclose()
    assert len(long) > 3 >= len(short) > 0


def test_status_codes_map_to_retryable_or_not() -> None:
    assert llm_backends.status_error(503, "busy").retryable
    assert llm_backends.status_error(429, "slow down").retryable
    assert llm_backends.status_error(408, "timeout").retryable
    assert not llm_backends.status_error(401, "bad key").retryable
    assert not llm_backends.status_error(404, "no such model").retryable


def test_sse_lines_are_parsed_into_text_deltas() -> None:
    assert llm_backends.sse_data(": keep-alive") is None
    assert llm_backends.sse_data("") is None
    assert llm_backends.sse_data("data: [DONE]") == "[DONE]"
    chunk = '{"choices":[{"delta":{"content":"Hi"}}]}'
    assert llm_backends.delta_text(llm_backends.sse_data(f"data: {chunk}") or "") == "Hi"
    assert llm_backends.delta_text('{"choices":[{"delta":{"role":"assistant"}}]}') == ""
