"""The gateway's Prometheus metrics, in a registry of its own (one per app)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["CONTENT_TYPE", "INPUTS", "TURN_OUTCOMES", "Metrics"]

INPUTS = ("speech", "text", "rest")
"""How a turn came in: spoken on a WebSocket, typed on a WebSocket, POST /api/text."""
TURN_OUTCOMES = ("done", "cancelled", "error", "timeout", "abandoned")
"""How a turn ended for its client: all its reply audio sent (REST: the reply returned),
cancelled (client or barge-in), an error event, no reply in time (REST), or the client
left first (WebSocket closed before the turn ended)."""
FIRST_AUDIO_BUCKETS = (0.1, 0.25, 0.5, 0.75, 1, 1.25, 1.5, 2, 2.5, 3, 4, 5, 7.5, 10, 15, 30)


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.active_sessions = Gauge(
            "morgan_gateway_active_sessions", "Open WebSocket sessions", registry=r
        )
        self.frames_in = Counter(
            "morgan_gateway_frames_in", "Microphone frames accepted from clients", registry=r
        )
        self.events_out = Counter(
            "morgan_gateway_events_out", "Events sent to WebSocket clients", registry=r
        )
        self.audio_chunks_out = Counter(
            "morgan_gateway_audio_chunks_out", "Reply audio chunks sent to clients", registry=r
        )
        self.rejections = Counter(
            "morgan_gateway_rejections",
            "Requests refused or client messages answered with an error, by reason",
            ["reason"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "morgan_gateway_queue_depth", "Most pending messages on a work consumer", registry=r
        )
        self.first_audio = Histogram(
            "morgan_gateway_first_audio_seconds",
            "End of the user's speech (or receipt of typed text) to the turn's first reply "
            "audio sent on the WebSocket; for POST /api/text, to its first audio reaching "
            "the gateway (the response carries the whole reply)",
            ["input"],
            buckets=FIRST_AUDIO_BUCKETS,
            registry=r,
        )
        self.turns = Counter(
            "morgan_gateway_turns",
            "Turns by how they ended for the client",
            ["outcome"],
            registry=r,
        )
        self.turns_per_session = Histogram(
            "morgan_gateway_turns_per_session",
            "Turns a WebSocket session started, observed when it closes",
            buckets=(0, 1, 2, 3, 5, 10, 20, 50, 100),
            registry=r,
        )
        for source in INPUTS:  # every series exists from the start, at zero
            self.first_audio.labels(source)
        for outcome in TURN_OUTCOMES:
            self.turns.labels(outcome)

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))
