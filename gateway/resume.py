"""Where a resumed session stands, read from the streams (docs/protocol.md, Resume)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from gateway.audio_order import AlreadySent
from schemas import AudioFrame, Subjects, decode
from streams.definitions import AUDIO, EVENTS


@dataclass(frozen=True)
class ResumePoint:
    frame_seq: int
    """Number of the last microphone frame on AUDIO (the next one is this + 1)."""
    silent_s: float
    """Seconds since that frame was stored (since ever, without one): after a long
    silence the VAD may have let the session go, and the next frame claims it again."""
    offset: int
    """Samples of microphone audio the session has so far."""
    events_tail: int
    """EVENTS id of the session's newest event (0 = none): the replay's end."""
    sent_before: AlreadySent


async def resume_point(js: JetStreamContext, s: Subjects, sid: str, last_audio: int) -> ResumePoint:
    frame_seq = offset = 0
    silent_s = math.inf
    last_frame = await _last(js, AUDIO, s.audio_in(sid))
    if last_frame is not None:
        frame = decode(last_frame.headers, last_frame.data or b"")
        if isinstance(frame, AudioFrame):
            frame_seq, offset = frame.seq, frame.offset + len(frame.pcm) // 2
        if last_frame.time is not None:
            silent_s = (datetime.now(UTC) - last_frame.time).total_seconds()
    tail = await _last(js, EVENTS, s.events(sid))
    audio_tail = await _last(js, AUDIO, s.audio_out(sid))
    # A cursor past the session's last chunk means "everything so far", not "skip all
    # that is still to come".
    last_audio = min(last_audio, (audio_tail.seq or 0) if audio_tail is not None else 0)
    in_stream = False
    if last_audio > 0:
        try:
            got = await js.get_msg(AUDIO, seq=last_audio)
            in_stream = got.subject == s.audio_out(sid)
        except NotFoundError:
            pass
    return ResumePoint(
        frame_seq,
        silent_s,
        offset,
        (tail.seq or 0) if tail is not None else 0,
        AlreadySent(last_audio, in_stream=in_stream),
    )


async def _last(js: JetStreamContext, stream: str, subject: str) -> Any:
    try:
        return await js.get_last_msg(stream, subject)
    except NotFoundError:
        return None
