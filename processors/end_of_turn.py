"""End of turn by meaning: Smart Turn v3.2 hears whether an utterance sounds finished.

Silence alone is a poor judge: a thinking pause mid-sentence gets cut, and a finished
question waits the full silence. Pipecat's Smart Turn v3.2 (BSD-2-Clause, docs/turn-
detection.md) is a small audio classifier: the last 8 s of a turn in, P(turn complete)
out. Its CPU ONNX file ships inside the ``pipecat-ai`` wheel, installed without its
dependencies; nothing of Pipecat runs here, only the file, through onnxruntime.

    TurnModel.load()             the model, once per process (1 thread by default)
    TurnModel.probability(pcm)   P(complete) of s16le mono 16 kHz audio of a turn so far
    features(samples)            the model's input: Whisper-style log-mel, (80, 800)
    EndOfTurn(score, ...)        the decision policy: pure, one per session
    EndOfTurn.decide(audio, silence_ms) -> Decision(end, reason, p)

The policy asks the model once per pause, after a short silence; a complete turn ends
there, an incomplete one waits for more speech up to a longer silence, then ends anyway.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from processors import models

RATE = 16000
"""Hertz: the model hears 16 kHz mono."""
SECONDS = 8
"""The model hears the last 8 s of a turn; a shorter turn is padded with zeros in front."""
SAMPLES = RATE * SECONDS
N_FFT = 400
"""Samples per spectrum (25 ms)."""
HOP = 160
"""Samples between spectra (10 ms): 800 frames in 8 s."""
N_MELS = 80
FRAMES = SAMPLES // HOP
MODEL_FILE = "smart-turn-v3.2-cpu.onnx"
PACKAGE = "pipecat"
"""The top-level package of the ``pipecat-ai`` wheel that ships the model file."""
PIP_NAME = "pipecat-ai==1.14.0 (with --no-deps)"


def model_path() -> Path:
    """The Smart Turn v3.2 CPU model inside the installed ``pipecat-ai`` wheel.

    Found with ``importlib.util.find_spec`` so that no Pipecat module is imported: the
    wheel is installed without its dependencies, and its modules would not import.
    """
    try:
        folder = models.package_dir(PACKAGE)
    except models.ModelNotFound:
        raise models.ModelNotFound(f"{MODEL_FILE} not found: pip install {PIP_NAME}") from None
    path = folder / "audio" / "turn" / "smart_turn" / "data" / MODEL_FILE
    if not path.exists():
        raise models.ModelNotFound(f"{path} is missing: reinstall {PIP_NAME}")
    return path


# --- features: the log-mel spectrogram Whisper's encoder takes, over 8 s ----------------


def hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz (3 mels per 200 Hz), logarithmic above
    (27 mels per factor 6.4, so 1 kHz is mel 15 and the two parts meet there)."""
    hz = np.asarray(hz, dtype=np.float64)
    log_part = 15.0 + np.log(np.maximum(hz, 1000.0) / 1000.0) * (27.0 / np.log(6.4))
    return np.where(hz < 1000.0, hz * 3.0 / 200.0, log_part)


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    log_part = 1000.0 * np.exp((np.maximum(mel, 15.0) - 15.0) * (np.log(6.4) / 27.0))
    return np.where(mel < 15.0, mel * 200.0 / 3.0, log_part)


@functools.cache
def mel_filters() -> np.ndarray:
    """(80, 201): triangles evenly spaced in mels from 0 Hz to 8 kHz over the rFFT bins,
    each scaled to unit area in Hz (Slaney normalisation), as Whisper's filterbank."""
    edges = mel_to_hz(
        np.linspace(hz_to_mel(np.array(0.0)), hz_to_mel(np.array(RATE / 2)), N_MELS + 2)
    )
    bins = np.linspace(0.0, RATE / 2, N_FFT // 2 + 1)
    low, mid, high = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None, :] - low) / (mid - low)
    falling = (high - bins[None, :]) / (high - mid)
    triangles = np.maximum(0.0, np.minimum(rising, falling))
    return np.asarray(triangles * (2.0 / (high - low)), dtype=np.float64)


@functools.cache
def _hann() -> np.ndarray:
    """Periodic Hann window of N_FFT samples (the window an FFT-based STFT uses)."""
    return np.asarray(0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(N_FFT) / N_FFT), dtype=np.float64)


def last_8s(samples: np.ndarray) -> np.ndarray:
    """The last 8 s of ``samples`` (float), zeros in front of a shorter turn."""
    out = np.zeros(SAMPLES, dtype=np.float64)
    tail = np.asarray(samples, dtype=np.float64)[-SAMPLES:]
    if tail.size:
        out[SAMPLES - tail.size :] = tail
    return out


def features(samples: np.ndarray) -> np.ndarray:
    """The model's input for one turn: float32 (80 mel bins, 800 frames of 10 ms).

    ``samples``: 16 kHz mono floats in [-1, 1], any length. The steps: keep the last
    8 s (zeros in front); scale the waveform to zero mean and unit variance over those
    8 s; power spectrum of 25 ms periodic-Hann frames every 10 ms, centred (the signal
    reflected 200 samples at each end), the 801st frame dropped; 80 Slaney mel bands;
    log10 with a floor of 1e-10; nothing more than 8 (80 dB) below the loudest value;
    then (x + 4) / 4. The values so span at most 2; for speech about -0.2 to 2 (the
    waveform was scaled to unit variance, so the level of the input does not matter).
    """
    x = last_8s(samples)
    x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
    padded = np.pad(x, N_FFT // 2, mode="reflect")
    starts = np.arange(FRAMES) * HOP
    frames = padded[starts[:, None] + np.arange(N_FFT)[None, :]]
    power = np.abs(np.fft.rfft(frames * _hann(), axis=1)) ** 2  # (800, 201)
    mel = np.log10(np.maximum(mel_filters() @ power.T, 1e-10))  # (80, 800)
    mel = np.maximum(mel, mel.max() - 8.0)
    return np.asarray((mel + 4.0) / 4.0, dtype=np.float32)


def pcm_to_float(pcm: bytes) -> np.ndarray:
    """s16le PCM as floats in [-1, 1)."""
    return np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2").astype(np.float32) / 32768.0


# --- the model ---------------------------------------------------------------------------


class TurnModel:
    """Smart Turn v3.2 on onnxruntime's CPU provider; one per process, shared by sessions
    (``InferenceSession.run`` is safe to call from several threads)."""

    INPUT = "input_features"
    """The graph's input: float32 [batch, 80, 800]. Its output ``logits`` [batch, 1] is,
    despite the name, already a sigmoid probability (checked: always within [0, 1])."""

    def __init__(self, session: ort.InferenceSession) -> None:
        self._session = session

    @classmethod
    def load(cls, path: Path | None = None, threads: int = 1) -> TurnModel:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(
            str(path or model_path()), sess_options=opts, providers=["CPUExecutionProvider"]
        )
        return cls(session)

    def probability(self, pcm: bytes) -> float:
        """P(turn complete) of a turn so far: s16le mono 16 kHz, pause included."""
        even = pcm[: len(pcm) // 2 * 2]
        return self.probability_of(pcm_to_float(even[-2 * SAMPLES :]))

    def probability_of(self, samples: np.ndarray) -> float:
        """P(turn complete) of 16 kHz float samples in [-1, 1]."""
        return self.run(features(samples))

    def run(self, x: np.ndarray) -> float:
        """P(turn complete) of the features of one turn, (80, 800)."""
        (out,) = self._session.run(None, {self.INPUT: x[None]})
        return float(np.clip(np.asarray(out).reshape(-1)[0], 0.0, 1.0))


@functools.cache
def shared_model(threads: int = 1) -> TurnModel:
    """The process's one model, loaded on first use."""
    return TurnModel.load(threads=threads)


# --- the policy ----------------------------------------------------------------------------

PAUSE = "pause"
"""Silence shorter than ``ask_after_ms``: too early to judge."""
COMPLETE = "complete"
"""The model heard a finished turn (p >= threshold)."""
INCOMPLETE = "incomplete"
"""The model heard an unfinished turn: wait for more speech, up to ``max_silence_ms``."""
MAX_SILENCE = "max_silence"
"""Silence reached ``max_silence_ms``: the turn ends whatever the model said."""


@dataclass(frozen=True)
class Decision:
    end: bool
    """End the turn now."""
    reason: str
    """PAUSE, COMPLETE, INCOMPLETE or MAX_SILENCE."""
    p: float | None = None
    """The model's P(turn complete) for this pause, if it was asked."""


class EndOfTurn:
    """Whether a pause ends the turn, for one session's VAD. Pure apart from ``score``.

    Call ``decide`` for each silent VAD window of a turn in progress with the turn's
    audio so far (its last 8 s are enough: the model hears no more; the silence
    included) and how long the silence has lasted. The model is asked once per pause,
    when the silence first reaches ``ask_after_ms``; later calls in the same pause reuse
    its answer. A pause is a run of calls whose silence grows: a call with no more
    silence than the one before starts a new pause (speech resumed in between). An
    ending decision, and ``reset``, forget the answer.
    """

    def __init__(
        self,
        score: Callable[[bytes], float],
        *,
        ask_after_ms: float = 200.0,
        max_silence_ms: float = 1500.0,
        threshold: float = 0.5,
    ) -> None:
        if not 0 <= ask_after_ms <= max_silence_ms:
            raise ValueError(
                f"need 0 <= ask_after_ms <= max_silence_ms, not {ask_after_ms}, {max_silence_ms}"
            )
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold is a probability, not {threshold}")
        self.score = score
        """P(turn complete) of s16le 16 kHz audio: ``TurnModel.probability``."""
        self.ask_after_ms = ask_after_ms
        self.max_silence_ms = max_silence_ms
        self.threshold = threshold
        self.asked = 0
        """How many times the model was asked (once per pause)."""
        self._silence_ms = -1.0
        """The silence of the last call: the current pause's, while it grows."""
        self._p: float | None = None
        """The model's answer for the current pause."""

    def reset(self) -> None:
        """Forget the pause and its answer: the turn ended or was abandoned."""
        self._silence_ms, self._p = -1.0, None

    def asks(self, silence_ms: float) -> bool:
        """Whether ``decide`` with this silence would call the model (then run it off the
        event loop: a call takes 60-150 ms of a core)."""
        new_pause = silence_ms <= self._silence_ms
        unanswered = new_pause or self._p is None
        return self.ask_after_ms <= silence_ms < self.max_silence_ms and unanswered

    def decide(self, audio: bytes | Callable[[], bytes], silence_ms: float) -> Decision:
        """``audio``: the turn so far, or a function that returns it (called only when
        the model is asked: once a pause). ``silence_ms``: since the speech stopped."""
        if silence_ms <= self._silence_ms:
            self._p = None  # a new pause
        self._silence_ms = silence_ms
        p = self._p
        if silence_ms < self.ask_after_ms:
            return Decision(False, PAUSE)
        if silence_ms >= self.max_silence_ms:
            self.reset()
            return Decision(True, MAX_SILENCE, p)
        if p is None:
            p = float(self.score(audio if isinstance(audio, bytes) else audio()))
            self.asked += 1
            self._p = p
        if p >= self.threshold:
            self.reset()
            return Decision(True, COMPLETE, p)
        return Decision(False, INCOMPLETE, p)
