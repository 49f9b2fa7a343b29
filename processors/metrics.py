"""Prometheus metrics of a processor process, the same for every kind.

The runtime reports what happens to each message; a kind's handler reports nothing::

    metrics.fetched(kind, tier, raw.metadata.timestamp, raw.metadata.num_delivered)
    with metrics.in_flight(kind):
        ... handle ...
    metrics.handled(kind, tier, "ok", seconds)       # or retry, failed, superseded, ...
    metrics.error(kind, error.code)                  # a MorganError that was not ok
    metrics.model_loaded(kind, seconds)
    metrics.sessions_held(kind, count)               # session-claim kinds (VAD)
    metrics.serve(settings.metrics_port)             # /metrics, plus the GPUs via NVML

Labels stay bounded: ``kind``, ``tier`` (``gpu``, ``cpu``, or ``""`` for an untiered
kind), ``outcome`` (``OUTCOMES``) and the error ``code``; never a session or turn id.
Every series lives in prometheus_client's default registry (one per process).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from time import time

import pynvml
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import start_http_server as _start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger("morgan.metrics")

OUTCOMES = ("ok", "retry", "failed", "superseded", "handoff")
"""What became of a message: acked, nak'd for a retry, given up (term), lost to another
worker (cut off), handed to another worker at shutdown."""

HANDLE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)

HANDLED = Counter(
    "morgan_processor_messages",
    "Messages handled, by what became of them",
    ["kind", "tier", "outcome"],
)
DURATION = Histogram(
    "morgan_processor_handle_seconds",
    "Time from a message's fetch to its ack, nak or term, by outcome",
    ["kind", "tier", "outcome"],
    buckets=HANDLE_BUCKETS,
)
QUEUE_WAIT = Histogram(
    "morgan_processor_queue_wait_seconds",
    "Time from a message's publish (JetStream's timestamp) to its fetch by a worker; "
    "a redelivered message counts from its first publish",
    ["kind", "tier"],
    buckets=WAIT_BUCKETS,
)
REDELIVERIES = Counter(
    "morgan_processor_redeliveries",
    "Messages fetched that had been delivered before (num_delivered > 1)",
    ["kind", "tier"],
)
ERRORS = Counter("morgan_processor_errors", "Handling errors by MorganError code", ["kind", "code"])
IN_FLIGHT = Gauge("morgan_processor_in_flight", "Messages being handled now", ["kind"])
MODEL_LOAD = Gauge(
    "morgan_processor_model_load_seconds", "How long the last model load took", ["kind"]
)
SESSIONS = Gauge(
    "morgan_processor_sessions_held", "Sessions this worker owns (session-claim kinds)", ["kind"]
)
SPECULATED = Counter(
    "morgan_speculation_messages",
    "Messages of speculative turns handled: used (the turn was confirmed) or wasted",
    ["kind", "outcome"],
)
SPECULATED_SECONDS = Counter(
    "morgan_speculation_seconds",
    "Handling time spent on speculative turns: used or wasted (speech went on)",
    ["kind", "outcome"],
)


def _tier(tier: str | None) -> str:
    return tier or ""


def declare(kind: str, tiers: Iterable[str | None]) -> None:
    """Create the kind's message counts at zero for every tier it serves and every
    outcome, so a rate or ratio of an outcome that has not happened yet reads 0."""
    for tier in tiers:
        for outcome in OUTCOMES:
            HANDLED.labels(kind, _tier(tier), outcome)


def handled(kind: str, tier: str | None, outcome: str, seconds: float) -> None:
    """One message finished with ``outcome`` (one of ``OUTCOMES``) after ``seconds``."""
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome {outcome!r} is not one of {OUTCOMES}")
    HANDLED.labels(kind, _tier(tier), outcome).inc()
    DURATION.labels(kind, _tier(tier), outcome).observe(max(0.0, seconds))


def fetched(
    kind: str,
    tier: str | None,
    published: datetime | None,
    delivered: int,
    *,
    now: float | None = None,
) -> None:
    """A message was fetched: its wait since ``published`` (``raw.metadata.timestamp``;
    None when unknown) and, past its first delivery, a redelivery. ``now`` is Unix
    seconds (default: the clock); a publisher's clock ahead of ours counts as no wait."""
    if published is not None:
        stamp = published if published.tzinfo else published.replace(tzinfo=UTC)
        waited = (time() if now is None else now) - stamp.timestamp()
        QUEUE_WAIT.labels(kind, _tier(tier)).observe(max(0.0, waited))
    if delivered > 1:
        REDELIVERIES.labels(kind, _tier(tier)).inc()


def error(kind: str, code: str) -> None:
    """A handler failed with this ``MorganError.code`` (whatever happens next)."""
    ERRORS.labels(kind, code).inc()


@contextlib.contextmanager
def in_flight(kind: str) -> Iterator[None]:
    """Counts the block as one message in flight."""
    gauge = IN_FLIGHT.labels(kind)
    gauge.inc()
    try:
        yield
    finally:
        gauge.dec()


def model_loaded(kind: str, seconds: float) -> None:
    """The kind's model took ``seconds`` to load (the last load is kept)."""
    MODEL_LOAD.labels(kind).set(seconds)


def speculated(kind: str, outcome: str, seconds: float) -> None:
    """A speculative turn's message took ``seconds``; ``outcome``: ``used`` or ``wasted``."""
    SPECULATED.labels(kind, outcome).inc()
    SPECULATED_SECONDS.labels(kind, outcome).inc(max(0.0, seconds))


def sessions_held(kind: str, count: int) -> None:
    """This worker now owns ``count`` sessions."""
    SESSIONS.labels(kind).set(count)


class GpuCollector(Collector):
    """Utilization and memory of every GPU NVML sees, read at each scrape.

    Every processor on a host exports its host's GPUs; take ``max by (host, gpu)``.
    Needs ``pynvml.nvmlInit()`` first (``install_gpu_collector``).
    """

    def collect(self) -> Iterable[Metric]:
        util = GaugeMetricFamily(
            "morgan_processor_gpu_utilization_ratio",
            "Share of the last sample period the GPU was busy (0-1)",
            labels=["gpu", "name"],
        )
        used = GaugeMetricFamily(
            "morgan_processor_gpu_memory_used_bytes", "GPU memory in use", labels=["gpu", "name"]
        )
        total = GaugeMetricFamily(
            "morgan_processor_gpu_memory_total_bytes", "GPU memory", labels=["gpu", "name"]
        )
        try:
            count = pynvml.nvmlDeviceGetCount()
        except pynvml.NVMLError as exc:
            log.warning("NVML: no device count: %s", exc)
            count = 0
        for index in range(count):
            try:
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                name = pynvml.nvmlDeviceGetName(handle)
                rates = pynvml.nvmlDeviceGetUtilizationRates(handle)
                memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            except pynvml.NVMLError as exc:  # a GPU fallen off the bus: say so, skip it
                log.warning("NVML: GPU %d unreadable: %s", index, exc)
                continue
            labels = [str(index), name.decode() if isinstance(name, bytes) else str(name)]
            util.add_metric(labels, rates.gpu / 100.0)
            used.add_metric(labels, float(memory.used))
            total.add_metric(labels, float(memory.total))
        yield from (util, used, total)


def install_gpu_collector(registry: CollectorRegistry = REGISTRY) -> bool:
    """Register ``GpuCollector`` when NVML starts (an NVIDIA driver is there); False on a
    host without one (CPU, Apple), where nothing is registered."""
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        log.debug("no NVIDIA GPU metrics: %s", exc)
        return False
    registry.register(GpuCollector())
    return True


def serve(port: int, *, gpu: bool = True) -> None:
    """Expose /metrics on ``port`` (a thread of prometheus_client); with ``gpu``, the
    host's NVIDIA GPUs too when it has any."""
    if gpu:
        install_gpu_collector()
    _start_http_server(port)
