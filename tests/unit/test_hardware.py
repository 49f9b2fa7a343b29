"""Tier detection against faked device queries (no GPU exists on these machines), and
pinning a worker to cores."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest
from pydantic import ValidationError

from processors import hardware
from streams.settings import Settings, parse_cpus


def test_a_cuda_host_serves_gpu_then_cpu() -> None:
    hw = hardware.detect(cuda_count=lambda: 2, gpu_name=lambda: "RTX 4090", mps=lambda: False)
    assert hw.cuda_devices == 2 and hw.gpu_name == "RTX 4090"
    assert hw.tiers == ("gpu", "cpu")


def test_a_cpu_host_serves_cpu_only() -> None:
    hw = hardware.detect(cuda_count=lambda: 0, gpu_name=lambda: "never asked", mps=lambda: True)
    assert hw.gpu_name == ""
    assert hw.tiers == (("gpu", "cpu") if platform.system() == "Darwin" else ("cpu",))


def test_apple_mps_counts_as_a_gpu_only_on_macos() -> None:
    hw = hardware.Hardware(cuda_devices=0, gpu_name="", mps=True, os="darwin", arch="arm64")
    assert hw.tiers == ("gpu", "cpu")


def test_morgan_tiers_overrides_what_the_hardware_says() -> None:
    cpu_only = hardware.Hardware(0, "", False, "linux", "x86_64")
    assert hardware.serving_tiers(("gpu",), cpu_only) == ("gpu",)
    assert hardware.serving_tiers((), cpu_only) == ("cpu",)


def test_detection_on_this_machine_does_not_fail() -> None:
    hw = hardware.detect()
    assert "cpu" in hw.tiers and hw.os and hw.arch


def test_cpus_takes_the_kernels_cpu_list_format() -> None:
    assert parse_cpus("") == frozenset()
    assert parse_cpus("1") == {1}
    assert parse_cpus("0-2, 5") == {0, 1, 2, 5}
    assert Settings(cpus="0-1").cpu_set == {0, 1}


@pytest.mark.parametrize("bad", ["a", "1-", "-1", "3-1", "0;1"])
def test_a_malformed_cpus_value_is_refused_at_start(bad: str) -> None:
    with pytest.raises(ValidationError, match="cpus"):
        Settings(cpus=bad)


def test_a_worker_pinned_by_morgan_cpus_runs_on_that_core_only() -> None:
    probe = (
        "import os; from processors import hardware; from streams.settings import Settings; "
        "hardware.pin(Settings.from_env().cpu_set); print(sorted(os.sched_getaffinity(0)))"
    )
    env = {**os.environ, "MORGAN_CPUS": "0"}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[0]"


def test_pinning_to_a_core_this_host_lacks_names_it() -> None:
    with pytest.raises(ValueError, match="no core 4096"):
        hardware.pin(frozenset({4096}))


def test_a_processor_pins_itself_before_anything_starts_threads() -> None:
    """Threads made before the pinning run anywhere; numpy's (OpenBLAS) start at import."""
    probe = (
        "import os, sys, processors.__main__; "
        "print(len(os.listdir('/proc/self/task')), 'numpy' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert out.stdout.split() == ["1", "False"], out.stderr
