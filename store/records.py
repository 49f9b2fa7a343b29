"""What the stores hold, as plain values shared by every store and their users."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Exchange:
    """One turn of a conversation: what the user said and what Morgan answered."""

    turn: str
    user: str
    """The user's words (transcript or typed text)."""
    assistant: str
    """The reply; for a cancelled turn, only what was sent to be spoken."""
    at: float = 0.0
    """When the reply ended, Unix seconds."""
    cancelled: bool = False


@dataclass(frozen=True)
class Memory:
    """A remembered exchange of a user, found by meaning (long-term memory)."""

    text: str
    """What the user said."""
    reply: str
    at: float
    """When it was said, Unix seconds."""
    sid: str
    score: float = 0.0
    """Similarity to the query (cosine, higher is closer)."""
    turn: str = ""
