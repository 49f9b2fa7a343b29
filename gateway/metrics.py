"""The gateway's Prometheus metrics, in a registry of its own (one per app)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

__all__ = ["CONTENT_TYPE", "Metrics"]


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

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))
