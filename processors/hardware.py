"""What this host can run: CUDA, Apple MPS, CPU; and so which tiers it serves."""

from __future__ import annotations

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
