"""Cut a streamed reply into pieces TTS can speak while the model still writes.

``SentenceSplitter.push(delta)`` returns the pieces completed by ``delta``;
``flush()`` returns what is left at the end. A piece ends where whitespace
follows

- a sentence end (``.``, ``!``, ``?``, ``…``, optionally closed by quotes or
  brackets), unless the ``.`` ends a common abbreviation or an initial
  (``Dr.``, ``e.g.``, ``J.``) or the piece has no letters yet (``1.``);
- a line break;
- for the first piece only (when ``first_clause_words`` > 0): a ``,``, ``;``
  or ``:``, or the ``first_clause_words``-th word. Piper speaks whole requests
  only, so a short first request starts the audio sooner.

Pieces are cut only at whitespace and are stripped, so joining them with
single spaces gives the input with its whitespace normalised. A piece is
never empty. The result does not depend on how the text was split into deltas.
"""

from __future__ import annotations

ENDS = ".!?…"
CLOSERS = "\"')]}»”’"
CLAUSE_ENDS = ",;:"
ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st vs etc e.g i.e a.m p.m approx dept est fig inc ltd no vol".split()
)


class SentenceSplitter:
    def __init__(self, first_clause_words: int = 0) -> None:
        self.first_clause_words = first_clause_words
        self.pieces = 0
        """Pieces returned so far."""
        self._buf = ""

    def push(self, delta: str) -> list[str]:
        self._buf += delta
        out: list[str] = []
        while (cut := self._boundary()) is not None:
            out.append(self._buf[:cut].strip())
            self._buf = self._buf[cut:]
            self.pieces += 1
        return out

    def flush(self) -> list[str]:
        rest, self._buf = self._buf.strip(), ""
        self.pieces += bool(rest)
        return [rest] if rest else []

    def _boundary(self) -> int | None:
        """Where the next piece ends in the buffer (a whitespace index), or None."""
        buf = self._buf
        first = self.pieces == 0 and self.first_clause_words > 0
        words = 0
        for i, char in enumerate(buf):
            if not char.isspace() or i == 0 or buf[i - 1].isspace():
                continue  # only the start of a whitespace run after a word can end a piece
            words += 1
            before = buf[:i]
            if _line_break_at(buf, i) or _sentence_end(before):
                return i
            if first and (before[-1] in CLAUSE_ENDS or words >= self.first_clause_words):
                return i
        return None


def _line_break_at(buf: str, i: int) -> bool:
    """Whether the whitespace run starting at ``i`` holds a line break."""
    for char in buf[i:]:
        if char in "\n\r":
            return True
        if not char.isspace():
            return False
    return False


def _sentence_end(text: str) -> bool:
    body = text.rstrip(CLOSERS)
    if not body or body[-1] not in ENDS or not any(c.isalpha() for c in body):
        return False
    if body[-1] != ".":
        return True
    word = body.split()[-1].lstrip("\"'([{«“‘").rstrip(".").lower()
    is_initial = len(word) == 1 and word.isalpha()
    return not is_initial and word not in ABBREVIATIONS
