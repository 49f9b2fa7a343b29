"""What this host can run: CUDA, Apple MPS, CPU; and so which tiers it serves."""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Hardware:
    cuda_devices: int
    gpu_name: str
    mps: bool
    os: str
    arch: str

    @property
    def tiers(self) -> tuple[str, ...]:
        """gpu first when there is one; every host can serve cpu."""
        return ("gpu", "cpu") if self.cuda_devices > 0 or self.mps else ("cpu",)


def _cuda_count() -> int:
    try:
        import ctranslate2

        return int(ctranslate2.get_cuda_device_count())
    except Exception:
        return 0


def _gpu_name() -> str:
    try:
        import torch

        return str(torch.cuda.get_device_name(0)) if torch.cuda.is_available() else ""
    except Exception:
        return ""


def _mps() -> bool:
    try:
        import torch

        return bool(torch.backends.mps.is_available())
    except Exception:
        return False


def detect(
    cuda_count: Callable[[], int] = _cuda_count,
    gpu_name: Callable[[], str] = _gpu_name,
    mps: Callable[[], bool] = _mps,
) -> Hardware:
    """Ask the device libraries (injectable so tests can play a GPU host)."""
    n = cuda_count()
    return Hardware(
        cuda_devices=n,
        gpu_name=gpu_name() if n else "",
        mps=platform.system() == "Darwin" and mps(),
        os=platform.system().lower(),
        arch=platform.machine().lower(),
    )


def serving_tiers(override: tuple[str, ...], hw: Hardware) -> tuple[str, ...]:
    """Tiers a worker serves: MORGAN_TIERS when set, else what the hardware allows."""
    return override or hw.tiers


def usable_cores() -> frozenset[int]:
    """The cores this process may run on (its affinity where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return frozenset(os.sched_getaffinity(0))
    return frozenset(range(os.cpu_count() or 1))


def missing_cores(cores: frozenset[int]) -> frozenset[int]:
    """Those of ``cores`` this process cannot run on."""
    return cores - usable_cores()


def cpu_list(cores: frozenset[int]) -> str:
    """{0, 1, 4} -> ``0,1,4``."""
    return ",".join(map(str, sorted(cores)))


def pin(cores: frozenset[int]) -> None:
    """Run this process (its threads made from now on) on ``cores`` only; empty: leave it.

    Call before any thread exists, numpy's included (OpenBLAS starts its threads when
    numpy is imported): Linux pins the calling thread, and only threads made after it
    inherit the pinning. ValueError names the cores this host lacks.
    """
    if not cores:
        return
    if not hasattr(os, "sched_setaffinity"):
        raise ValueError("MORGAN_CPUS: this OS cannot pin a process to cores")
    if missing := missing_cores(cores):
        raise ValueError(
            f"MORGAN_CPUS: no core {cpu_list(missing)} here (usable: {cpu_list(usable_cores())})"
        )
    os.sched_setaffinity(0, cores)
