"""Cost of one Silero VAD window (512 samples, 32 ms) three ways, in one run.

    .venv/bin/python bench/vad_cost.py

onnxruntime directly (what processors/vad.py uses), silero-vad's ONNX wrapper,
and silero-vad's torch JIT model; prints ms per window and the ratio to the
cheapest.
"""

from __future__ import annotations

import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from processors import silero

N = 2000


def timed(fn: Callable[[np.ndarray], float], windows: list[np.ndarray]) -> float:
    for w in windows[:50]:
        fn(w)
    start = time.perf_counter()
    for w in windows:
        fn(w)
    return (time.perf_counter() - start) * 1000 / len(windows)


def main() -> None:
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    windows = [(rng.standard_normal(512) * 0.05).astype(np.float32) for _ in range(N)]
    direct = silero.SileroStream(silero.load_session())

    from silero_vad.utils_vad import OnnxWrapper, init_jit_model

    wrapper = OnnxWrapper(str(silero.model_path()), force_onnx_cpu=True)
    jit = init_jit_model(str(silero.model_path("silero_vad.jit")))
    results = {
        "onnxruntime direct (processors/silero.py)": timed(direct.probability, windows),
        "silero-vad OnnxWrapper": timed(
            lambda w: float(wrapper(torch.from_numpy(w), 16000)), windows
        ),
        "silero-vad torch JIT": timed(lambda w: float(jit(torch.from_numpy(w), 16000)), windows),
    }
    best = min(results.values())
    print(f"machine: {platform.node()} {platform.machine()}, {N} windows of 32 ms")
    for name, ms in results.items():
        print(f"{name:<45} {ms:7.3f} ms/window  {ms / best:5.2f}x  ({32 / ms:6.0f}x real time)")


if __name__ == "__main__":
    main()
