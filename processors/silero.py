"""Silero VAD through onnxruntime directly: one shared model, state per stream.

Measured (bench/vad_cost.py): the direct ONNX call is the cheapest of the three
ways to run the bundled model, so that is what the VAD processor uses.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from processors import models

RATE = 16000
WINDOW = 512
"""Samples per model call at 16 kHz (32 ms)."""
CONTEXT = 64
"""Samples of the previous window the model expects in front of each window."""


def model_path(name: str = "silero_vad.onnx") -> Path:
    """A model file bundled with the silero-vad package."""
    return models.package_dir("silero_vad") / "data" / name


def load_session(path: Path | None = None) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(
        str(path or model_path()), sess_options=opts, providers=["CPUExecutionProvider"]
    )


class SileroStream:
    """Speech probability of consecutive 512-sample windows of one audio stream."""

    def __init__(self, session: ort.InferenceSession) -> None:
        self._session = session
        self._state = np.zeros((2, 1, 128), dtype=np.float32)
        self._context = np.zeros((1, CONTEXT), dtype=np.float32)
        self._sr = np.array(RATE, dtype=np.int64)

    def probability(self, window: np.ndarray) -> float:
        """``window``: 512 float32 samples in [-1, 1]."""
        x = np.concatenate([self._context, window.reshape(1, WINDOW)], axis=1)
        out, self._state = self._session.run(
            None, {"input": x, "state": self._state, "sr": self._sr}
        )
        self._context = x[:, -CONTEXT:]
        return float(out[0][0])
