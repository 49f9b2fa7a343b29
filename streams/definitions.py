"""JetStream streams and consumers, declared as data and applied idempotently.

Whoever starts first creates them; a later start with the same or an older
config updates them in place. See docs/design.md for why each is shaped so.
"""

from __future__ import annotations

import base64
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError, BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from schemas.subjects import Subjects
from streams.settings import Settings

log = logging.getLogger("morgan.definitions")

AUDIO = "AUDIO"
WORK = "WORK"
EVENTS = "EVENTS"
DUPLICATE_WINDOW_S = 120.0


def stream_configs(settings: Settings) -> list[StreamConfig]:
    s = Subjects(settings.prefix)
    replicas, storage = settings.replicas, StorageType.FILE
    return [
        StreamConfig(
            name=AUDIO,
            subjects=[s.all_audio],
            retention=RetentionPolicy.LIMITS,
            max_age=settings.audio_max_age_s,
            discard=DiscardPolicy.OLD,
            duplicate_window=DUPLICATE_WINDOW_S,
            num_replicas=replicas,
            storage=storage,
        ),
        StreamConfig(
            name=WORK,
            subjects=[s.all_work],
            retention=RetentionPolicy.WORK_QUEUE,
            max_age=3600.0,
            duplicate_window=DUPLICATE_WINDOW_S,
            num_replicas=replicas,
            storage=storage,
        ),
        StreamConfig(
            name=EVENTS,
            subjects=[s.all_events],
            retention=RetentionPolicy.LIMITS,
            allow_direct=True,  # a worker asks which attempt ended a turn (speculation)
            max_age=settings.events_max_age_s,
            duplicate_window=DUPLICATE_WINDOW_S,
            num_replicas=replicas,
            storage=storage,
        ),
    ]


INPUT = "morgan.input"
"""Consumer metadata key naming what feeds it: ``work``, ``claim`` or ``tap`` (the
gateway's overload polling reads it; see processors.spec)."""


@dataclass(frozen=True)
class Consumer:
    """A durable pull consumer, declared as data by a processor kind (processors.spec
    derives them from its ``Spec``; ``streams`` never imports ``processors``)."""

    stream: str
    durable: str
    filter_subjects: tuple[str, ...]
    """Full subjects (prefix included), wildcards allowed."""
    ack_wait_s: float
    max_deliver: int
    """Deliveries before a message is given up; -1 = never."""
    max_ack_pending: int
    feeds: str
    """``work``, ``claim`` or ``tap`` (stored as metadata ``morgan.input``)."""
    deliver_new: bool = False
    """Start at messages published after the consumer is made (a new tap), not the first."""

    def config(self, settings: Settings) -> ConsumerConfig:
        one = len(self.filter_subjects) == 1
        return ConsumerConfig(
            durable_name=self.durable,
            filter_subject=self.filter_subjects[0] if one else None,
            filter_subjects=None if one else list(self.filter_subjects),
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.NEW if self.deliver_new else DeliverPolicy.ALL,
            ack_wait=self.ack_wait_s,
            max_deliver=self.max_deliver,
            max_ack_pending=self.max_ack_pending,
            num_replicas=settings.replicas,
            metadata={INPUT: self.feeds},
        )


def session_audio_consumer(
    settings: Settings,
    kind: str,
    sid: str,
    owner: int,
    ack_wait_s: float,
    start_seq: int | None = None,
) -> ConsumerConfig:
    """A claim kind's per-session reader of microphone frames; an ack covers all before it.

    ``owner``: which owner of the session this is (1, then one more per takeover); each
    gets its own consumer, so a cut-off owner's pulls cannot take the new owner's frames.
    ``start_seq``: the AUDIO stream sequence to resume from (a takeover).
    """
    return ConsumerConfig(
        durable_name=f"{kind}-{sid}-{owner}",
        filter_subject=Subjects(settings.prefix).audio_in(sid),
        ack_policy=AckPolicy.ALL,
        deliver_policy=DeliverPolicy.ALL if start_seq is None else DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=start_seq,
        ack_wait=ack_wait_s,
        max_ack_pending=100_000,
        inactive_threshold=settings.audio_max_age_s,
        num_replicas=settings.replicas,
    )


async def apply(
    js: JetStreamContext,
    settings: Settings,
    consumers: Iterable[Consumer] = (),
    *,
    update: bool = True,
) -> None:
    """Create every stream that is missing, then the given consumers (a worker's own).
    ``update``: also bring an existing stream to this declaration (only the NATS role
    ``admin`` may; others create what is missing and leave the rest, logging a change)."""
    for cfg in stream_configs(settings):
        try:
            await js.add_stream(cfg)
        except BadRequestError as exc:
            if update:
                await js.update_stream(cfg)
            else:
                log.warning(
                    "stream %s differs from this version's (%s): admin updates it",
                    cfg.name,
                    exc.description,
                )
    for consumer in consumers:
        await ensure_consumer(js, consumer.stream, consumer.config(settings))


OWNERS = "MORGAN_OWNERS"
"""KV: who owns each claimed session (processors.claims), keyed ``<kind>.<sid>``."""
SESSIONS = "MORGAN_SESSIONS"
"""KV: the gateway's session book (owner key and hashed resume token per session)."""
CONFIG = "MORGAN_CONFIG"
"""KV: live configuration when no Consul is configured (streams.config_source)."""
RECALLED = "MORGAN_RECALLED"
"""KV: each session's long-term memories for its next turn, found by the memory kind
when a turn ends (docs/data.md), keyed by ``kv_key(sid)``."""
API_KEYS = "MORGAN_API_KEYS"
"""KV: hashed API keys, one entry per key under its hash (gateway/keys.py); no TTL."""

_PLAIN_KEY = re.compile(r"[-_=A-Za-z0-9]+")


def kv_key(text: str) -> str:
    """A valid KV key for any text (a session id): itself when plain, else base64."""
    if _PLAIN_KEY.fullmatch(text):
        return text
    return "b64_" + base64.urlsafe_b64encode(text.encode()).decode()


def bucket_configs(settings: Settings) -> dict[str, KeyValueConfig]:
    """Every KV bucket Morgan uses, by name: declared here with the streams."""
    replicas, file = settings.replicas, StorageType.FILE
    return {
        OWNERS: KeyValueConfig(
            bucket=OWNERS, ttl=settings.audio_max_age_s, replicas=replicas, storage=file
        ),
        SESSIONS: KeyValueConfig(
            bucket=SESSIONS, ttl=settings.events_max_age_s, replicas=replicas, storage=file
        ),
        CONFIG: KeyValueConfig(bucket=CONFIG, history=5, replicas=replicas, storage=file),
        API_KEYS: KeyValueConfig(bucket=API_KEYS, history=5, replicas=replicas, storage=file),
        RECALLED: KeyValueConfig(
            bucket=RECALLED,
            history=1,
            ttl=settings.context_l2_ttl_s,
            replicas=replicas,
            storage=file,
        ),
    }


async def key_value(js: JetStreamContext, settings: Settings, bucket: str) -> KeyValue:
    """Bind to one of Morgan's KV buckets, creating it on first use (creating it twice
    with the same config is a no-op, so racing starts are safe)."""
    config = bucket_configs(settings)[bucket]
    try:
        return await js.key_value(bucket)
    except BucketNotFoundError:
        return await js.create_key_value(config)


async def ensure_consumer(
    js: JetStreamContext, stream: str, cfg: ConsumerConfig, timeout: float | None = None
) -> None:
    """Create a consumer (a no-op when it exists with these settings), or replace it when
    one of that name exists with other settings."""
    try:
        await js.add_consumer(stream, cfg, timeout=timeout)
    except BadRequestError:
        assert cfg.durable_name is not None
        try:
            await js.delete_consumer(stream, cfg.durable_name)
        except NotFoundError:
            pass
        await js.add_consumer(stream, cfg, timeout=timeout)
