"""Two processor kinds from outside Morgan, in one module: documentation by example.

``keywords`` taps every ``transcript`` event and publishes a ``keyword`` event
(``<prefix>.events.<sid>.keyword``) for each listed word the user said. The words
come from ``MORGAN_KEYWORDS`` (comma-separated, e.g. ``weather,time``), read once
when the kind loads.

``redact`` is a stage between STT and the LLM: it takes the ``LlmRequest`` STT
forwards, replaces every digit with ``#`` and forwards it again; the route table
sends it on to ``llm``. Insert it with ``MORGAN_ROUTES=stt:llm.request=redact``.

    pip install examples/keyword_spotter
    MORGAN_KEYWORDS=weather,time morgan run keywords
    morgan run redact          # and run stt with MORGAN_ROUTES=stt:llm.request=redact
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from typing import ClassVar

from processors.context import Context
from processors.spec import EventTap, Spec, WorkQueue
from schemas import LlmRequest, Message, Transcript
from streams.settings import Settings

WORDS_ENV = "MORGAN_KEYWORDS"


@dataclass(frozen=True)
class Keyword(Message):
    """A listed word heard in a turn's transcript (an event: the client sees it)."""

    TYPE: ClassVar[str] = "keyword"
    sid: str
    turn: str
    word: str
    """Lower case, as listed in ``MORGAN_KEYWORDS``."""


# --- keywords: an event tap ---


async def load_words(settings: Settings, tiers: tuple[str, ...]) -> frozenset[str]:
    """The kind's state: the listed words, lower case."""
    listed = os.environ.get(WORDS_ENV, "")
    return frozenset(w.strip().lower() for w in listed.split(",") if w.strip())


def spotted(text: str, listed: frozenset[str]) -> list[str]:
    """The listed words in ``text``, each once, in the order they were said."""
    said = re.findall(r"[\w']+", text.lower())
    return list(dict.fromkeys(w for w in said if w in listed))


async def spot(msg: Message, ctx: Context) -> None:
    assert isinstance(msg, Transcript)
    for word in spotted(msg.text, ctx.state):
        # The id is built from the input: a redelivered transcript publishes nothing new.
        msg_id = f"{msg.sid}.{msg.turn}.keyword.{word}"
        await ctx.emit(Keyword(msg.sid, msg.turn, word), msg_id=msg_id)


KEYWORDS = Spec(
    kind="keywords",
    input=EventTap(types=(Transcript.TYPE,)),
    accepts=(Transcript,),
    publishes=(Keyword,),
    load=load_words,
    handle=spot,
    describe=lambda words: "listening for " + ", ".join(sorted(words)),
)


# --- redact: a stage inserted between STT and the LLM ---


async def load_nothing(settings: Settings, tiers: tuple[str, ...]) -> None:
    """No models."""


async def redact(msg: Message, ctx: Context) -> None:
    assert isinstance(msg, LlmRequest)
    hidden = replace(msg, text=re.sub(r"\d", "#", msg.text))
    # Not STT's id (<sid>.<turn>.llm): both go to the WORK stream, whose dedup would
    # drop a second message with the same id.
    await ctx.forward(hidden, msg_id=f"{msg.sid}.{msg.turn}.redact")


REDACT = Spec(
    kind="redact",
    input=WorkQueue(),
    accepts=(LlmRequest,),
    publishes=(LlmRequest,),
    load=load_nothing,
    handle=redact,
)
