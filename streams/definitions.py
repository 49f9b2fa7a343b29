"""JetStream streams and consumers, declared as data and applied idempotently.

Whoever starts first creates them; a later start with the same or an older
config updates them in place. See docs/design.md for why each is shaped so.
"""

from __future__ import annotations

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

from schemas.subjects import KINDS, TIERED_KINDS, TIERS, Subjects
from streams.settings import Settings

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
            max_age=settings.events_max_age_s,
            duplicate_window=DUPLICATE_WINDOW_S,
            num_replicas=replicas,
            storage=storage,
        ),
    ]


@dataclass(frozen=True)
class WorkConsumer:
    """The durable pull consumer that all workers of one kind and tier share."""

    kind: str
    tier: str | None

    @property
    def durable(self) -> str:
        return f"{self.kind}-{self.tier}" if self.tier else self.kind

    def config(self, settings: Settings) -> ConsumerConfig:
        claim = self.kind == "vad"
        return ConsumerConfig(
            durable_name=self.durable,
            filter_subject=Subjects(settings.prefix).work(self.kind, self.tier),
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=settings.claim_ack_wait_s if claim else settings.work_ack_wait_s,
            # A claim lives as long as its session: never give up redelivering it.
            max_deliver=-1 if claim else settings.max_deliver,
            max_ack_pending=10_000 if claim else 1_000,
            num_replicas=settings.replicas,
        )


def work_consumers() -> list[WorkConsumer]:
    return [
        WorkConsumer(kind, tier if kind in TIERED_KINDS else None)
        for kind in KINDS
        for tier in (TIERS if kind in TIERED_KINDS else (None,))
    ]


def session_audio_consumer(
    settings: Settings, sid: str, owner: int = 1, start_seq: int | None = None
) -> ConsumerConfig:
    """The VAD's per-session reader of microphone frames; an ack covers all before it.

    ``owner``: which owner of the session this is (1, then one more per takeover); each
    gets its own consumer, so a cut-off owner's pulls cannot take the new owner's frames.
    ``start_seq``: the AUDIO stream sequence to resume from (a takeover).
    """
    return ConsumerConfig(
        durable_name=f"vad-{sid}-{owner}",
        filter_subject=Subjects(settings.prefix).audio_in(sid),
        ack_policy=AckPolicy.ALL,
        deliver_policy=DeliverPolicy.ALL if start_seq is None else DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=start_seq,
        ack_wait=settings.claim_ack_wait_s,
        max_ack_pending=100_000,
        inactive_threshold=settings.audio_max_age_s,
        num_replicas=settings.replicas,
    )


async def apply(js: JetStreamContext, settings: Settings) -> None:
    """Create or update every stream and shared work consumer."""
    for cfg in stream_configs(settings):
        try:
            await js.add_stream(cfg)
        except BadRequestError:
            await js.update_stream(cfg)
    for consumer in work_consumers():
        await ensure_consumer(js, WORK, consumer.config(settings))


async def key_value(js: JetStreamContext, config: KeyValueConfig) -> KeyValue:
    """Bind to a KV bucket, creating it on first use (creating it twice with the same
    config is a no-op, so racing starts are safe)."""
    assert config.bucket is not None
    try:
        return await js.key_value(config.bucket)
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
