"""Reply audio in (seq, chunk) order, per turn. Pure: no I/O.

Parallel TTS workers may finish sentence 2 before sentence 1, and a redelivered
request may publish a chunk twice. ``AudioOrder.add`` takes chunks in arrival
order and returns the ones that may be sent now, strictly in order from
(seq 0, chunk 0); a sentence ends at its ``last`` chunk. Turns are independent.

    order = AudioOrder()
    order.add("t1", seq=1, chunk=0, last=True, item=b)   -> []      (waits for seq 0)
    order.add("t1", seq=0, chunk=0, last=True, item=a)   -> [a, b]
    order.cancel("t1")                                   -> True    (first time only)
    order.done("t1", sentences=2); order.complete("t1")  -> True

Memory is bounded: at most ``limit`` (by each chunk's ``size``, default 1; the
gateway counts bytes: 8 MiB, over 3 minutes of 22 kHz audio) waits behind missing
chunks, and at most ``MAX_OPEN_TURNS`` turns are open. Past the limit, the oldest
turn that holds audio gives up its gap: it goes on from the earliest chunk that came
(a sentence lost for good, or a misbehaving publisher, costs a jump in the audio,
never the gateway's memory). Past the turn count, the oldest open turn is forgotten
with what it holds.

``AlreadySent`` answers, on resume, which replayed chunks the client already has.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
_FORGET_AFTER = 256
"""Finished turns remembered, so late or duplicate chunks of them are dropped."""
REORDER_LIMIT = 8 * 1024 * 1024
"""Default ``limit``: what may wait behind missing chunks, in units of ``size``."""
MAX_OPEN_TURNS = 64
"""Turns with audio or a reply.done but not yet complete; a session has one or two."""


@dataclass
class TurnAudio(Generic[T]):
    """One turn's reorder buffer."""

    next_seq: int = 0
    next_chunk: int = 0
    sentences: int | None = None
    """From reply.done: how many sentences the turn has (None until known)."""
    waiting: dict[tuple[int, int], tuple[bool, T, int]] = field(default_factory=dict)
    """(seq, chunk) -> (last, item, size) of chunks that came before their turn."""
    size: int = 0
    """The sum of ``waiting``'s sizes."""

    def add(self, seq: int, chunk: int, last: bool, item: T, size: int = 1) -> list[T]:
        if (seq, chunk) < (self.next_seq, self.next_chunk) or (seq, chunk) in self.waiting:
            return []  # already sent, or a duplicate of one still waiting
        self.waiting[(seq, chunk)] = (last, item, size)
        self.size += size
        return self._release()

    def skip_gap(self) -> list[T]:
        """Give up on what is missing before the earliest waiting chunk; release from it."""
        self.next_seq, self.next_chunk = min(self.waiting)
        return self._release()

    def _release(self) -> list[T]:
        out: list[T] = []
        while (self.next_seq, self.next_chunk) in self.waiting:
            is_last, ready, size = self.waiting.pop((self.next_seq, self.next_chunk))
            self.size -= size
            out.append(ready)
            if is_last:
                self.next_seq, self.next_chunk = self.next_seq + 1, 0
            else:
                self.next_chunk += 1
        return out

    @property
    def complete(self) -> bool:
        return self.sentences is not None and self.next_seq >= self.sentences

    @property
    def buffered(self) -> int:
        return len(self.waiting)


class AudioOrder(Generic[T]):
    """Every turn of one session; cancelled and finished turns are dropped."""

    def __init__(self, limit: int = REORDER_LIMIT) -> None:
        self.limit = limit
        """At most this much (by ``add``'s ``size``) waits behind missing chunks."""
        self.turns: dict[str, TurnAudio[T]] = {}
        self.cancelled: OrderedDict[str, None] = OrderedDict()
        self.finished: OrderedDict[str, None] = OrderedDict()
        self.skipped = 0
        """Gaps given up on (see the module docstring)."""

    def add(self, turn: str, seq: int, chunk: int, last: bool, item: T, size: int = 1) -> list[T]:
        """The items that can be sent now, in order (empty if this one must wait). They
        are this turn's, unless the limit made an older turn skip a gap: then that
        turn's released items come first."""
        if turn in self.cancelled or turn in self.finished:
            return []
        out = self._turn(turn).add(seq, chunk, last, item, size)
        early = self._skip_while_over_limit()
        self._retire_if_complete(turn)
        return early + out if early else out

    def done(self, turn: str, sentences: int) -> None:
        """Record reply.done: the turn has ``sentences`` sentences of audio."""
        if turn in self.cancelled or turn in self.finished:
            return
        self._turn(turn).sentences = sentences
        self._retire_if_complete(turn)

    @property
    def buffered(self) -> int:
        """What waits behind missing chunks, by size."""
        return sum(audio.size for audio in self.turns.values())

    def _turn(self, turn: str) -> TurnAudio[T]:
        audio = self.turns.get(turn)
        if audio is None:
            while len(self.turns) >= MAX_OPEN_TURNS:  # forget the oldest, with its audio
                oldest = next(iter(self.turns))
                del self.turns[oldest]
                _remember(self.finished, oldest)
            audio = self.turns[turn] = TurnAudio()
        return audio

    def _skip_while_over_limit(self) -> list[T]:
        released: list[T] = []
        while self.buffered > self.limit:
            name, audio = next((n, a) for n, a in self.turns.items() if a.waiting)
            released += audio.skip_gap()
            self.skipped += 1
            self._retire_if_complete(name)
        return released

    def complete(self, turn: str) -> bool:
        """reply.done was seen and every sentence's last chunk has been released."""
        return turn in self.finished

    def cancel(self, turn: str) -> bool:
        """Drop the turn's buffered and future audio. True only the first time."""
        if turn in self.cancelled:
            return False
        self.turns.pop(turn, None)
        _remember(self.cancelled, turn)
        return True

    def is_cancelled(self, turn: str) -> bool:
        return turn in self.cancelled

    def _retire_if_complete(self, turn: str) -> None:
        audio = self.turns.get(turn)
        if audio is not None and audio.complete:
            del self.turns[turn]
            _remember(self.finished, turn)


def _remember(seen: OrderedDict[str, None], turn: str) -> None:
    seen[turn] = None
    while len(seen) > _FORGET_AFTER:
        seen.popitem(last=False)


class AlreadySent:
    """On resume: which replayed chunks (by AUDIO stream id) the client already has.

    Chunks are released by a deterministic function of their stream order, so
    replaying the session's audio from the start through a fresh ``AudioOrder``
    (ignoring cancellations, which only remove chunks) releases them in the
    order the client got them. Everything released up to and including
    ``last_id`` was sent. When ``last_id`` is no longer in the stream the
    fallback is "every id up to ``last_id``".
    """

    def __init__(self, last_id: int, *, in_stream: bool) -> None:
        self.last_id = last_id
        self.exact = in_stream
        self.reached = last_id <= 0 or not in_stream
        self.shadow: AudioOrder[int] = AudioOrder()
        self.sent: set[int] = set()

    def note(
        self, turn: str, seq: int, chunk: int, last: bool, stream_id: int, size: int = 1
    ) -> None:
        """Feed every replayed chunk, in stream order, before asking ``has`` (``size``:
        as the session's ``AudioOrder`` counts it, so gaps are skipped alike)."""
        if self.reached:
            return
        for released in self.shadow.add(turn, seq, chunk, last, stream_id, size):
            self.sent.add(released)
            if released == self.last_id:
                self.reached = True
                return

    def has(self, stream_id: int) -> bool:
        if not self.exact:
            return stream_id <= self.last_id
        return stream_id in self.sent
