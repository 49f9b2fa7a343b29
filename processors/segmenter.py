"""Cuts a stream of speech probabilities into utterances. Pure: no I/O, no model.

Positions are sample offsets in the session's input audio. The segmenter also
says how far the audio is safe to acknowledge: everything before that point can
never be part of an utterance again, so a worker that takes the session over
after a crash replays from there and cuts the same utterances.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

WINDOW = 512


@dataclass(frozen=True)
class SegmenterConfig:
    rate: int = 16000
    threshold: float = 0.5
    silence_ms: int = 500
    min_speech_ms: int = 200
    preroll_ms: int = 300
    max_utterance_s: float = 20.0
    speculate_ms: int = 0
    """A pause this long inside speech is a ``Paused`` (a turn to speculate on); 0: never."""

    def samples(self, ms: float) -> int:
        return int(self.rate * ms / 1000)


@dataclass(frozen=True)
class Started:
    start: int
    """Where the utterance audio begins (pre-roll included)."""
    speech_at: int
    """Where speech was first heard."""


@dataclass(frozen=True)
class Ended:
    start: int
    end: int
    """Utterance audio is samples [start, end)."""
    speech_end: int
    """Where the last speech window ended (``end`` adds a little of the silence)."""
    decided_at: int
    """Where the silence was long enough to cut."""


@dataclass(frozen=True)
class Paused:
    """Silence reached ``speculate_ms``: the utterance so far (to where the pause is now).
    If the pause becomes the end, the ``Ended`` has the same ``speech_end``."""

    start: int
    end: int
    speech_end: int
    decided_at: int


@dataclass(frozen=True)
class Resumed:
    """Speech came back after a ``Paused``: that pause was not the end."""


Event = Started | Ended | Paused | Resumed


@dataclass
class Segmenter:
    config: SegmenterConfig
    _pending: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    position: int = 0
    """Session sample offset of the next window (set it to where the stream starts)."""
    _speech_run: int = 0
    _first_speech: int = -1
    _in_speech: bool = False
    _start: int = 0
    _last_speech_end: int = 0
    _paused: bool = False
    _silent: bool = False
    """The last window was silence inside an open utterance."""
    _stepped: int = 0
    """Where the last window given to ``step`` ended."""

    @property
    def in_speech(self) -> bool:
        return self._in_speech

    @property
    def idle(self) -> bool:
        """No speech is being heard, confirmed or not."""
        return not self._in_speech and self._first_speech < 0

    @property
    def safe_ack(self) -> int:
        """While idle: audio before this sample offset can never start an utterance."""
        return max(0, self.position - self._pre - WINDOW)

    @property
    def pause_ms(self) -> float:
        """Silence since the speech stopped, while an utterance is open and the last
        window was silent (a pause the end-of-turn model may judge); else 0."""
        if not (self._in_speech and self._silent):
            return 0.0
        return (self._stepped - self._last_speech_end) * 1000 / self.config.rate

    @property
    def stepped(self) -> int:
        """Where the last window given to ``step`` ended (a sample offset)."""
        return self._stepped

    def end_now(self) -> Ended:
        """End the open utterance after the last window stepped (the end-of-turn model
        said so)."""
        return self._end(self._stepped)

    @property
    def _pre(self) -> int:
        return self.config.samples(self.config.preroll_ms)

    def windows(self, samples: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """Split incoming float samples into whole windows: (offset, window)."""
        self._pending = np.concatenate([self._pending, samples])
        out = []
        while len(self._pending) >= WINDOW:
            out.append((self.position, self._pending[:WINDOW]))
            self._pending = self._pending[WINDOW:]
            self.position += WINDOW
        return out

    def step(self, offset: int, probability: float) -> Event | None:
        """Feed the speech probability of the window that starts at ``offset``."""
        c = self.config
        end = offset + WINDOW
        self._stepped = end
        if probability >= c.threshold:
            if self._first_speech < 0:
                self._first_speech = offset
            self._speech_run += WINDOW
            self._last_speech_end = end
            self._silent = False
            if self._paused:
                self._paused = False
                return Resumed()
            if not self._in_speech and self._speech_run >= c.samples(c.min_speech_ms):
                self._in_speech = True
                self._start = max(0, self._first_speech - self._pre)
                return Started(start=self._start, speech_at=self._first_speech)
        elif probability < c.threshold - 0.15 or not self._in_speech:
            self._silent = self._in_speech
            if not self._in_speech:
                self._speech_run = 0
                self._first_speech = -1
            elif end - self._last_speech_end >= c.samples(c.silence_ms):
                return self._end(end)
            elif self._pause_begins(end):
                self._paused = True
                return Paused(self._start, self._tail(end), self._last_speech_end, end)
        if self._in_speech and end - self._start >= c.rate * c.max_utterance_s:
            return self._end(end)
        return None

    def _pause_begins(self, end: int) -> bool:
        ms = self.config.speculate_ms
        return (
            0 < ms and not self._paused and end - self._last_speech_end >= self.config.samples(ms)
        )

    def _tail(self, end: int) -> int:
        return min(end, self._last_speech_end + self.config.samples(200))

    def _end(self, end: int) -> Ended:
        event = Ended(self._start, self._tail(end), self._last_speech_end, decided_at=end)
        self._in_speech = False
        self._paused = False
        self._silent = False
        self._speech_run = 0
        self._first_speech = -1
        return event
