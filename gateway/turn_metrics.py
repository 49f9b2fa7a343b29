"""One WebSocket session's turns, measured: time to first reply audio, how each ended.

The session tells it what it sees (times are event-loop seconds); it observes
``Metrics.first_audio``, ``Metrics.turns`` and ``Metrics.turns_per_session``::

    turns.heard(samples, now)               # a microphone frame accepted: input up to here
    turns.speech_stopped(turn, at_ms, now)  # vad.speech_stopped: speech ended at at_ms
    turns.typed(turn, now)                  # typed text, received at now
    turns.started(turn)                     # a transcript: the turn expects a reply
    turns.audio_sent(turn, now)             # a reply chunk went to the client
    turns.ended(turn, "done")               # all its audio sent / cancelled / error
    turns.close()                           # the socket closed

End of speech is when the gateway received the frame holding the VAD's ``at_ms``
(the user's last word, not the VAD's verdict after its trailing silence); when that
frame is no longer remembered (a resumed session), the event's arrival. Each turn is
counted once, and only by the connection that saw it start, so a resumed session
neither counts a turn twice nor ends one it never started.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import TypeVar

from gateway.metrics import Metrics
from gateway.protocol import INPUT_RATE

REMEMBER_FRAMES = 4096
"""Accepted frames remembered for finding when speech ended (80 s of 20 ms frames)."""
REMEMBER_TURNS = 256
"""Turns remembered per session, waiting for audio or for their end."""


class TurnMetrics:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.input_end = 0
        """Input samples accepted so far (a resumed session starts at its offset)."""
        self.frames: deque[tuple[int, int, float]] = deque(maxlen=REMEMBER_FRAMES)
        """Recent accepted frames: (first sample, sample after the last, when it came)."""
        self.waiting: OrderedDict[str, tuple[str, float]] = OrderedDict()
        """Turns without reply audio yet: their input and when their wait began."""
        self.open: OrderedDict[str, None] = OrderedDict()
        """Turns started here that have not ended."""
        self.count = 0

    def heard(self, samples: int, at: float) -> None:
        """A frame of ``samples`` input samples was accepted ``at``."""
        start, self.input_end = self.input_end, self.input_end + samples
        self.frames.append((start, self.input_end, at))

    def received(self, sample: int) -> float | None:
        """When the frame ending at or holding input position ``sample`` came; None when
        it is not remembered."""
        for start, end, at in reversed(self.frames):
            if start < sample <= end:
                return at
            if end < sample:
                return None
        return None

    def speech_stopped(self, turn: str, at_ms: int, now: float) -> None:
        """The VAD says speech ended at ``at_ms`` into the input; the wait began when the
        gateway received that audio (or ``now``, when it does not remember it)."""
        came = self.received(at_ms * INPUT_RATE // 1000)
        began = now if came is None else min(came, now)
        _put(self.waiting, turn, ("speech", began))

    def typed(self, turn: str, now: float) -> None:
        """Typed text, received ``now``: the turn starts and its wait begins."""
        _put(self.waiting, turn, ("text", now))
        self.started(turn)

    def started(self, turn: str) -> None:
        """The turn expects a reply (its transcript); counted once."""
        if turn not in self.open:
            self.count += 1
            _put(self.open, turn, None)

    def audio_sent(self, turn: str, now: float) -> None:
        """A reply chunk of ``turn`` went to the client: the first one is observed."""
        wait = self.waiting.pop(turn, None)
        if wait is not None:
            source, began = wait
            self.metrics.first_audio.labels(source).observe(max(0.0, now - began))

    def ended(self, turn: str, outcome: str) -> None:
        """The turn ended with ``outcome`` (``TURN_OUTCOMES``); only the first end counts,
        and only for a turn started on this connection."""
        if turn in self.open:
            del self.open[turn]
            self.waiting.pop(turn, None)
            self.metrics.turns.labels(outcome).inc()

    def close(self) -> None:
        """The socket closed: unfinished turns were abandoned; the session's turns are
        observed."""
        for _ in self.open:
            self.metrics.turns.labels("abandoned").inc()
        self.open.clear()
        self.waiting.clear()
        self.metrics.turns_per_session.observe(self.count)


V = TypeVar("V")


def _put(seen: OrderedDict[str, V], turn: str, value: V) -> None:
    seen[turn] = value
    while len(seen) > REMEMBER_TURNS:
        seen.popitem(last=False)
