"""processors/metrics.py: what the runtime reports, as Prometheus reads it, and the GPUs
through a faked NVML (no GPU here)."""

from __future__ import annotations

import urllib.request
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pynvml
import pytest
from nats.aio.msg import Msg
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from processors import metrics
from testbed.ports import free_port


def sample(name: str, **labels: str) -> float:
    """The value of one series in the process's registry (0 when it does not exist)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_handled_counts_the_outcome_and_observes_the_time_by_kind_tier_and_outcome() -> None:
    metrics.handled("m-handled", "gpu", "ok", 0.2)
    metrics.handled("m-handled", "gpu", "ok", 0.02)
    metrics.handled("m-handled", None, "retry", 3.0)
    ok = {"kind": "m-handled", "tier": "gpu", "outcome": "ok"}
    assert sample("morgan_processor_messages_total", **ok) == 2
    assert sample("morgan_processor_handle_seconds_count", **ok) == 2
    assert sample("morgan_processor_handle_seconds_sum", **ok) == pytest.approx(0.22)
    assert sample("morgan_processor_handle_seconds_bucket", **ok, le="0.025") == 1
    retry = {"kind": "m-handled", "tier": "", "outcome": "retry"}
    assert sample("morgan_processor_messages_total", **retry) == 1
    assert sample("morgan_processor_handle_seconds_bucket", **retry, le="2.0") == 0


def test_every_declared_outcome_is_accepted_and_any_other_is_a_bug() -> None:
    for outcome in metrics.OUTCOMES:
        metrics.handled("m-outcomes", "cpu", outcome, 0.0)
    with pytest.raises(ValueError, match="sess"):
        metrics.handled("m-outcomes", "cpu", "sess-1234", 0.0)


def test_queue_wait_runs_from_the_jetstream_timestamp_to_the_fetch() -> None:
    published = datetime(2025, 5, 1, 9, 30, tzinfo=UTC)
    now = (published + timedelta(milliseconds=40)).timestamp()
    metrics.fetched("m-wait", "cpu", published, 1, now=now)
    labels = {"kind": "m-wait", "tier": "cpu"}
    assert sample("morgan_processor_queue_wait_seconds_sum", **labels) == pytest.approx(0.04)
    assert sample("morgan_processor_queue_wait_seconds_bucket", **labels, le="0.05") == 1
    assert sample("morgan_processor_queue_wait_seconds_bucket", **labels, le="0.025") == 0
    assert sample("morgan_processor_redeliveries_total", **labels) == 0


def test_queue_wait_reads_the_timestamp_nats_py_parses_from_a_jetstream_reply_subject() -> None:
    published = datetime(2025, 5, 1, 9, 30, 0, 250000, tzinfo=UTC)
    ns = int(published.timestamp()) * 10**9 + 250_000_000
    raw = Msg(None, subject="morgan.work.stt.cpu")  # type: ignore[arg-type]
    raw.reply = f"$JS.ACK.WORK.stt-cpu.3.17.9.{ns}.0"
    assert raw.metadata.num_delivered == 3
    metrics.fetched(
        "m-nats", "cpu", raw.metadata.timestamp, raw.metadata.num_delivered,
        now=published.timestamp() + 1.5,
    )  # fmt: skip
    labels = {"kind": "m-nats", "tier": "cpu"}
    assert sample("morgan_processor_queue_wait_seconds_sum", **labels) == pytest.approx(1.5)
    assert sample("morgan_processor_redeliveries_total", **labels) == 1


def test_a_publisher_clock_ahead_of_ours_counts_as_no_wait_and_naive_times_are_utc() -> None:
    published = datetime(2025, 5, 1, 9, 30)  # naive: UTC
    now = datetime(2025, 5, 1, 9, 29, 59, tzinfo=UTC).timestamp()
    metrics.fetched("m-skew", None, published, 1, now=now)
    metrics.fetched("m-skew", None, None, 2)  # unknown publish time: no wait, still a redelivery
    labels = {"kind": "m-skew", "tier": ""}
    assert sample("morgan_processor_queue_wait_seconds_count", **labels) == 1
    assert sample("morgan_processor_queue_wait_seconds_sum", **labels) == 0
    assert sample("morgan_processor_redeliveries_total", **labels) == 1


def test_errors_are_counted_by_kind_and_code() -> None:
    metrics.error("m-errors", "stt_failed")
    metrics.error("m-errors", "stt_failed")
    metrics.error("m-errors", "bad_audio")
    assert sample("morgan_processor_errors_total", kind="m-errors", code="stt_failed") == 2
    assert sample("morgan_processor_errors_total", kind="m-errors", code="bad_audio") == 1


def test_in_flight_counts_the_block_and_goes_back_down_when_it_raises() -> None:
    with metrics.in_flight("m-flight"), metrics.in_flight("m-flight"):
        assert sample("morgan_processor_in_flight", kind="m-flight") == 2
    with pytest.raises(RuntimeError), metrics.in_flight("m-flight"):
        raise RuntimeError("handler failed")
    assert sample("morgan_processor_in_flight", kind="m-flight") == 0


def test_model_load_seconds_and_sessions_held_are_gauges_by_kind() -> None:
    metrics.model_loaded("m-gauges", 12.5)
    metrics.sessions_held("m-gauges", 3)
    metrics.sessions_held("m-gauges", 2)
    assert sample("morgan_processor_model_load_seconds", kind="m-gauges") == 12.5
    assert sample("morgan_processor_sessions_held", kind="m-gauges") == 2


# --- GPUs through a faked NVML ---


class FakeNvml:
    """Two GPUs, as pynvml reports them; ``broken`` indexes raise as a lost GPU does."""

    def __init__(self, broken: tuple[int, ...] = ()) -> None:
        self.broken = broken
        self.inits = 0

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for name in (
            "nvmlInit",
            "nvmlDeviceGetCount",
            "nvmlDeviceGetHandleByIndex",
            "nvmlDeviceGetName",
            "nvmlDeviceGetUtilizationRates",
            "nvmlDeviceGetMemoryInfo",
        ):
            monkeypatch.setattr(pynvml, name, getattr(self, name))

    def nvmlInit(self) -> None:
        self.inits += 1

    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        if index in self.broken:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        return 100 + index

    def nvmlDeviceGetName(self, handle: int) -> Any:
        return b"NVIDIA RTX 4090" if handle == 100 else "NVIDIA RTX 3060"

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> Any:
        return SimpleNamespace(gpu=87 if handle == 100 else 5, memory=40)

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:
        used = 20 * 2**30 if handle == 100 else 2**30
        return SimpleNamespace(total=24 * 2**30 if handle == 100 else 12 * 2**30, used=used)


def test_gpu_utilization_and_memory_come_from_nvml_at_each_scrape(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    nvml = FakeNvml()
    nvml.install(monkeypatch)
    registry = CollectorRegistry()
    assert metrics.install_gpu_collector(registry) is True
    first = {"gpu": "0", "name": "NVIDIA RTX 4090"}
    second = {"gpu": "1", "name": "NVIDIA RTX 3060"}
    util = "morgan_processor_gpu_utilization_ratio"
    assert registry.get_sample_value(util, first) == pytest.approx(0.87)
    assert registry.get_sample_value(util, second) == pytest.approx(0.05)
    used = "morgan_processor_gpu_memory_used_bytes"
    assert registry.get_sample_value(used, first) == 20 * 2**30
    total = "morgan_processor_gpu_memory_total_bytes"
    assert registry.get_sample_value(total, second) == 12 * 2**30
    monkeypatch.setattr(
        pynvml, "nvmlDeviceGetUtilizationRates", lambda h: SimpleNamespace(gpu=12, memory=0)
    )
    assert registry.get_sample_value(util, first) == pytest.approx(0.12)  # read live
    assert nvml.inits == 1


def test_a_gpu_nvml_cannot_read_is_left_out_and_logged_and_the_others_still_reported(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    FakeNvml(broken=(0,)).install(monkeypatch)
    registry = CollectorRegistry()
    metrics.install_gpu_collector(registry)
    util = "morgan_processor_gpu_utilization_ratio"
    assert registry.get_sample_value(util, {"gpu": "0", "name": "NVIDIA RTX 4090"}) is None
    assert registry.get_sample_value(util, {"gpu": "1", "name": "NVIDIA RTX 3060"}) == 0.05
    assert "GPU 0 unreadable" in caplog.text


def test_without_an_nvidia_driver_no_gpu_collector_is_registered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_driver() -> None:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(pynvml, "nvmlInit", no_driver)
    registry = CollectorRegistry()
    assert metrics.install_gpu_collector(registry) is False
    assert list(registry.collect()) == []


def test_serve_exposes_the_processor_metrics_over_http(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "install_gpu_collector", lambda: False)  # the real registry
    metrics.handled("m-serve", "cpu", "ok", 0.1)
    port = free_port()
    metrics.serve(port)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    served = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    labels = (("kind", "m-serve"), ("outcome", "ok"), ("tier", "cpu"))
    assert served[("morgan_processor_messages_total", labels)] == 1
