"""Who may connect to NATS and what each role may touch (docs/security.md).

Every connection authenticates with an NKey: the server's configuration holds only
public keys, and a client proves it holds the seed by signing the server's nonce, so
no secret crosses the network and a leaked server config grants nothing (a password,
even bcrypt-hashed in the config, is sent on every connect). One seed per role, a file
``<role>.nk`` (0600) under a directory: ``admin``, ``operator``, ``gateway`` and one per
processor kind. ``streams.bus.connect`` uses ``Settings.nats_seed_file``.

Permissions are allow lists of subjects for publish and subscribe, built here from
small pieces (a consumer a role reads, a KV bucket it reads or writes); which pieces a
role gets is derived from the kind declarations (``processors.permissions``). Each role
reads replies on its own inbox prefix (``_INBOX_<role>``, ``streams.bus.inbox_prefix``),
so no role can read another's JetStream acks or request replies.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import nkeys

ADMIN = "admin"
"""Everything: makes streams, buckets and consumers (``morgan up``, ``morgan nats``)."""
OPERATOR = "operator"
"""Reads: ``nats sub``, ``nats micro ls``, stream and consumer info; changes nothing."""
GATEWAY = "gateway"

API = "$JS.API"


@dataclass(frozen=True)
class Permissions:
    publish: frozenset[str] = frozenset()
    subscribe: frozenset[str] = frozenset()
    responses: bool = False
    """May answer requests it received (a service endpoint, ``$SRV`` pings)."""

    def __or__(self, other: Permissions) -> Permissions:
        return Permissions(
            self.publish | other.publish,
            self.subscribe | other.subscribe,
            self.responses or other.responses,
        )


def allow(publish: Iterable[str] = (), subscribe: Iterable[str] = ()) -> Permissions:
    return Permissions(frozenset(publish), frozenset(subscribe))


def inbox(role: str) -> str:
    """The reply-subject prefix of a role's connections (``_INBOX`` without a role)."""
    return f"_INBOX_{role}" if role else "_INBOX"


def replies(role: str) -> Permissions:
    """The role's own inbox: JetStream acks, request replies, ordered consumers' pushes."""
    return allow(subscribe=[f"{inbox(role)}.>"])


def stream_info(stream: str) -> Permissions:
    return allow(publish=[f"{API}.STREAM.INFO.{stream}"])


def consumer(stream: str, durable: str, *, manage: bool = True) -> Permissions:
    """Read a durable pull consumer: fetch, ack (and nak, term, in-progress), info;
    ``manage`` also creates, replaces and deletes it."""
    pub = [
        f"{API}.CONSUMER.MSG.NEXT.{stream}.{durable}",
        f"{API}.CONSUMER.INFO.{stream}.{durable}",
        f"$JS.ACK.{stream}.{durable}.>",
    ]
    if manage:
        pub += [
            f"{API}.CONSUMER.CREATE.{stream}.{durable}",
            f"{API}.CONSUMER.CREATE.{stream}.{durable}.>",
            f"{API}.CONSUMER.DURABLE.CREATE.{stream}.{durable}",
            f"{API}.CONSUMER.DELETE.{stream}.{durable}",
        ]
    return allow(publish=pub) | stream_info(stream)


def any_consumer(stream: str) -> Permissions:
    """Make and read consumers of any name on ``stream``: per-session readers
    (``<kind>-<sid>-<n>``) and ordered consumers, whose names are not known in advance."""
    return allow(
        publish=[
            f"{API}.CONSUMER.CREATE.{stream}",
            f"{API}.CONSUMER.CREATE.{stream}.>",
            f"{API}.CONSUMER.DURABLE.CREATE.{stream}.*",
            f"{API}.CONSUMER.MSG.NEXT.{stream}.*",
            f"{API}.CONSUMER.INFO.{stream}.*",
            f"{API}.CONSUMER.DELETE.{stream}.*",
            f"$JS.ACK.{stream}.>",
            f"$JS.FC.{stream}.>",
        ]
    ) | stream_info(stream)


def create_streams(names: Iterable[str]) -> Permissions:
    """Create these streams when missing (as declared: creating an existing stream with
    another configuration fails, so this cannot change or empty one)."""
    perms = Permissions()
    for name in names:
        perms |= allow(publish=[f"{API}.STREAM.CREATE.{name}"]) | stream_info(name)
    return perms


def read_messages(stream: str) -> Permissions:
    """Get single messages by sequence or last-by-subject."""
    return allow(
        publish=[f"{API}.STREAM.MSG.GET.{stream}", f"{API}.DIRECT.GET.{stream}.>"]
    ) | stream_info(stream)


def kv_read(bucket: str) -> Permissions:
    """Get keys and watch the bucket."""
    return (
        read_messages(f"KV_{bucket}")
        | any_consumer(f"KV_{bucket}")
        | allow(publish=[f"{API}.DIRECT.GET.KV_{bucket}"])
        | create_streams([f"KV_{bucket}"])
    )


def kv_write(bucket: str) -> Permissions:
    """Read, put, create, update (compare-and-set) and delete keys."""
    return kv_read(bucket) | allow(publish=[f"$KV.{bucket}.>"])


def service(name: str, endpoints: str) -> Permissions:
    """Answer ``$SRV`` pings/info/stats as ``name`` and requests on ``endpoints``."""
    srv = [f"$SRV.{verb}" for verb in ("PING", "INFO", "STATS")]
    srv += [f"$SRV.{verb}.{name}" for verb in ("PING", "INFO", "STATS")]
    srv += [f"$SRV.{verb}.{name}.*" for verb in ("PING", "INFO", "STATS")]
    return Permissions(subscribe=frozenset([*srv, endpoints]), responses=True)


@dataclass(frozen=True)
class Role:
    name: str
    permissions: Permissions | None = field(default=None)
    """None: every subject (the admin)."""


def seed_path(directory: Path, role: str) -> Path:
    return directory / f"{role}.nk"


def ensure_seeds(directory: Path, roles: Iterable[str]) -> dict[str, Path]:
    """A seed file per role under ``directory`` (made 0600 when missing; kept when there,
    so credentials survive restarts): role -> path."""
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    paths = {}
    for role in roles:
        path = seed_path(directory, role)
        if not path.exists():
            seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(seed + b"\n")
        paths[role] = path
    return paths


def public_key(seed_file: Path) -> str:
    """The public NKey (``U...``) of a seed file."""
    pair = nkeys.from_seed(bytearray(seed_file.read_bytes().strip()))
    return str(pair.public_key.decode())


def authorization_block(roles: Iterable[Role], keys: Mapping[str, str]) -> str:
    """nats-server ``authorization { users = [...] }``: one NKey user per role that has a
    public key in ``keys`` (role -> ``U...``). Subjects are JSON strings (``$`` and ``>``
    need quoting in the server's config language)."""
    lines = ["authorization {", "  users = ["]
    for role in roles:
        if role.name not in keys:
            continue
        lines.append("    {")
        lines.append(f"      # {role.name}")
        lines.append(f"      nkey: {json.dumps(keys[role.name])}")
        perms = role.permissions
        if perms is not None:
            lines.append("      permissions: {")
            lines.append(f"        publish: {{ allow: {_list(perms.publish)} }}")
            lines.append(f"        subscribe: {{ allow: {_list(perms.subscribe)} }}")
            if perms.responses:
                lines.append("        allow_responses: true")
            lines.append("      }")
        lines.append("    }")
    lines += ["  ]", "}"]
    return "\n".join(lines) + "\n"


def _list(subjects: frozenset[str]) -> str:
    return "[" + ", ".join(json.dumps(s) for s in sorted(subjects)) + "]"
