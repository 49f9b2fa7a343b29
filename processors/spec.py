"""What a processor kind declares: its name, tiers, model loader and handler.

A kind is one module with a ``SPEC``; the runtime (``processors.runtime``) does
the rest. The handler publishes through ``Context`` and returns normally to ack.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from schemas import Message
from streams.settings import Settings

if TYPE_CHECKING:
    from processors.context import Context

Loader = Callable[[Settings, tuple[str, ...]], Awaitable[Any]]
Handler = Callable[[Message, "Context"], Awaitable[None]]


@dataclass(frozen=True)
class Spec:
    kind: str
    """``vad``, ``stt``, ``llm``, ``tts``; names the durable consumer and the service."""
    accepts: tuple[type[Message], ...]
    """Message types the handler takes; anything else is terminated as bad input."""
    load: Loader
    """Loads models once per process (may take seconds); its result is ``ctx.state``."""
    handle: Handler
    tiered: bool = False
    """Whether the work subject has a ``gpu``/``cpu`` tier."""
    concurrency: int = 1
    """Messages handled at once by one worker (VAD: sessions held)."""
    describe: Callable[[Any], str] = lambda state: ""
    """A short model description for the service registry."""
