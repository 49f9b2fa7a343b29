"""Tier detection against faked device queries (no GPU exists on these machines)."""

from __future__ import annotations

import platform

from processors import hardware


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
