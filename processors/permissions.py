"""Each NATS role's permissions, derived from the kind declarations (docs/security.md).

A kind's role may read only its own consumers, publish only the subjects its ``Spec``
declares (events of the types it ``publishes``, work to the kinds that accept what it
forwards, reply audio, control), touch only the KV buckets in ``Spec.buckets`` and ask
only the endpoints in ``Spec.asks``. The gateway's role follows from the kinds too
(claims to claim kinds, typed turns to the kinds that take an ``LlmRequest``). Nobody
but ``admin`` may make, change or delete streams and buckets.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from processors import registry
from processors.spec import EventTap, SessionClaims, Spec
from schemas import (
    Abandon,
    AudioChunk,
    Cancel,
    ErrorEvent,
    Forget,
    LlmRequest,
    Message,
    Release,
    ReplyCancelled,
    SessionClaim,
    SessionEnd,
    SpeechStopped,
    Transcript,
)
from schemas.subjects import TIERS, Subjects
from streams import definitions
from streams.definitions import AUDIO, EVENTS, WORK
from streams.nats_auth import (
    ADMIN,
    API,
    GATEWAY,
    OPERATOR,
    Permissions,
    Role,
    allow,
    any_consumer,
    authorization_block,
    consumer,
    create_streams,
    ensure_seeds,
    inbox,
    kv_read,
    kv_write,
    public_key,
    read_messages,
    replies,
    service,
    stream_info,
)
from streams.settings import Settings

CONTROL_TYPES: tuple[type[Message], ...] = (Cancel, SessionEnd, Forget, Release, Abandon)


def roles(settings: Settings, specs: Iterable[Spec]) -> list[Role]:
    """Every role of a deployment running ``specs``: admin, operator, gateway, each kind."""
    specs = list(specs)
    return [
        Role(ADMIN),
        Role(OPERATOR, operator(settings)),
        Role(GATEWAY, gateway(settings, specs)),
        *(Role(spec.kind, kind(settings, spec, specs)) for spec in specs),
    ]


def credentials(settings: Settings, directory: Path) -> tuple[dict[str, Path], str]:
    """A seed per role of the kinds in ``MORGAN_KINDS`` under ``directory`` (made when
    missing, kept after) and the servers' authorization block for them."""
    all_roles = roles(settings, [registry.spec(k) for k in settings.kind_list])
    seeds = ensure_seeds(directory, [r.name for r in all_roles])
    keys = {role: public_key(path) for role, path in seeds.items()}
    return seeds, authorization_block(all_roles, keys)


def _common(settings: Settings, role: str) -> Permissions:
    """What every Morgan process does: replies on its own inbox, live configuration from
    the CONFIG bucket, control messages (cancel, session end, forget)."""
    s = Subjects(settings.prefix)
    return (
        replies(role)
        | kv_read(definitions.CONFIG)
        | allow(subscribe=[s.control()])
        | create_streams([AUDIO, WORK, EVENTS])
    )


def _work_subjects(s: Subjects, spec: Spec) -> list[str]:
    """The kind's work subjects, and their speculative twins for a work kind."""
    plain = [s.work(spec.kind, t) for t in TIERS] if spec.tiered else [s.work(spec.kind)]
    return plain + ([s.speculative(w) for w in plain] if spec.feeds == "work" else [])


def _work_to(settings: Settings, sent: Iterable[type[Message]], specs: list[Spec]) -> Permissions:
    """Publishing work of the ``sent`` types to every kind that accepts one of them (the
    route table picks among those at run time), and seeing whether their gpu tier keeps
    up (``processors.routing``)."""
    s = Subjects(settings.prefix)
    sent = tuple(sent)
    perms = Permissions()
    for target in specs:
        if isinstance(target.input, EventTap) or not any(t in target.accepts for t in sent):
            continue
        perms |= allow(publish=_work_subjects(s, target))
        if target.tiered:
            perms |= allow(
                publish=[
                    f"{API}.CONSUMER.INFO.{WORK}.{target.durable('gpu')}",
                    f"$SRV.PING.morgan-{target.kind}",
                ]
            )
    return perms


def kind(settings: Settings, spec: Spec, specs: list[Spec]) -> Permissions:
    s = Subjects(settings.prefix)
    perms = _common(settings, spec.kind) | service(
        f"morgan-{spec.kind}", f"{s.prefix}.svc.{spec.kind}.*"
    )
    for _, c in spec.consumers(settings):
        perms |= consumer(c.stream, c.durable)
    if spec.tiered:  # its cpu workers move work stranded on a dead gpu tier to cpu
        cpu = s.work(spec.kind, "cpu")
        perms |= allow(publish=[cpu, s.speculative(cpu), f"$SRV.PING.morgan-{spec.kind}"])
    if isinstance(spec.input, SessionClaims):
        perms |= any_consumer(AUDIO) | kv_write(definitions.OWNERS)
    # events: what it publishes that no kind takes as work (``emit``), and ``error``,
    # which the runtime publishes for any kind (a message it gave up on)
    work = {t for other in specs if not isinstance(other.input, EventTap) for t in other.accepts}
    sent: list[type[Message]] = [ErrorEvent]
    sent += [t for t in spec.publishes if t not in work and _is_event(t)]
    perms |= allow(publish=[f"{s.prefix}.events.*.{t.TYPE}" for t in sent])
    if AudioChunk in spec.publishes:
        perms |= allow(publish=[f"{s.prefix}.audio.out.*"])
    if any(t in spec.publishes for t in CONTROL_TYPES):
        perms |= allow(publish=[s.control()])
    if spec.feeds == "work":  # speculative turns: say a held output is out, or ask EVENTS
        stopped = f"{s.prefix}.events.*.{SpeechStopped.TYPE}"
        perms |= allow(publish=[s.control(), f"{API}.DIRECT.GET.{EVENTS}.{stopped}"])
    perms |= _work_to(settings, spec.publishes, specs)
    for bucket, mode in spec.buckets.items():
        perms |= kv_write(bucket) if mode == "write" else kv_read(bucket)
    perms |= allow(publish=[f"{s.prefix}.svc.{a}" for a in spec.asks])
    return perms


def gateway(settings: Settings, specs: list[Spec]) -> Permissions:
    """Microphone frames in, claims and typed turns out, a session's events and reply
    audio back (ordered consumers and core subscriptions), the session book, resume
    reads, the work queue's depth, and every kind's endpoints (forgetting a user)."""
    s = Subjects(settings.prefix)
    return (
        _common(settings, GATEWAY)
        | allow(
            publish=[
                f"{s.prefix}.audio.in.*",
                s.control(),
                f"{s.prefix}.svc.>",
                # a typed turn's transcript; a turn the client cancelled, for resume
                f"{s.prefix}.events.*.{Transcript.TYPE}",
                f"{s.prefix}.events.*.{ReplyCancelled.TYPE}",
            ],
            subscribe=[s.all_events, f"{s.prefix}.audio.out.*"],
        )
        | _work_to(settings, (SessionClaim, LlmRequest), specs)
        | any_consumer(EVENTS)
        | any_consumer(AUDIO)
        | read_messages(EVENTS)
        | read_messages(AUDIO)
        | stream_info(WORK)
        | allow(publish=[f"{API}.CONSUMER.LIST.{WORK}", f"{API}.CONSUMER.INFO.{WORK}.*"])
        | kv_write(definitions.SESSIONS)
        | kv_write(definitions.RECALLED)
        | kv_read(definitions.API_KEYS)
    )


def operator(settings: Settings) -> Permissions:
    """Read-only: subscribe to Morgan's subjects, ``nats micro ls``/``info``/``stats``,
    account, stream and consumer info. No consumer may be made: on the work queue one
    would take work away from the workers."""
    return allow(
        publish=[
            "$SRV.>",
            f"{API}.INFO",
            f"{API}.STREAM.NAMES",
            f"{API}.STREAM.LIST",
            f"{API}.STREAM.INFO.*",
            f"{API}.CONSUMER.NAMES.*",
            f"{API}.CONSUMER.LIST.*",
            f"{API}.CONSUMER.INFO.*.*",
        ],
        # the nats CLI's own inbox, and Morgan's tools' as the operator
        subscribe=[f"{settings.prefix}.>", f"{inbox('')}.>", f"{inbox(OPERATOR)}.>"],
    )


def _is_event(message_type: type[Message]) -> bool:
    """Not reply audio nor a control message (those have subjects of their own)."""
    return message_type is not AudioChunk and message_type not in CONTROL_TYPES
