"""API keys, stored hashed: one entry per key, in a keys file or the KV bucket ``MORGAN_API_KEYS``.

A key is ``mk_`` + 43 URL-safe characters: 256 random bits, shown once by
``morgan keys add`` and kept nowhere. What is kept is an entry:

    {"id": "3f2a9c1d0b7e", "sha256": "<64 hex>", "user": "alice", "name": "laptop",
     "created": "2026-12-02T04:33:20Z", "revoked": null}

``sha256`` is SHA-256 of ``morgan-api-key:`` + the key (the prefix keeps these hashes
apart from any other SHA-256 of the same text); ``id`` is its first 12 hex digits,
safe to show and enough to revoke by. A plain salted SHA-256 is enough for keys of
256 random bits, where a slow password hash (bcrypt) is not: nobody can guess such a
key, hashed fast or slow, and a slow hash would cost every request tens of
milliseconds (docs/security.md, "API keys"). ``revoked`` is when the key was revoked
(ISO 8601, UTC); a revoked entry stays, so the gateway can answer ``key_revoked``.

    KeyFile   the keys file (``MORGAN_API_KEYS_FILE``): JSON, written whole to a new
              file that replaces the old (0600), under a lock file
    KvKeys    the bucket: one KV entry per key, keyed by its ``sha256``
    find      an entry by id, a unique id prefix, or the key itself
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import json
import os
import re
import secrets
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, NoKeysError
from nats.js.kv import KeyValue

from streams import definitions
from streams.settings import Settings

KEY_PREFIX = "mk_"
KEY_BYTES = 32
"""Random bytes in a new key (256 bits)."""
ID_HEX = 12
"""Hex digits of a key's hash that name it (``id``)."""
MIN_PREFIX = 4
"""Fewest hex digits of a hash ``find`` accepts."""
FORMAT = "morgan-api-keys/1"
USER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
"""A user id a key may act for: 1-64 of ``A-Z a-z 0-9 . _ @ -``, not starting with a sign."""
_HEX64 = re.compile(r"[0-9a-f]{64}")
MAX_NAME = 200


class KeysError(ValueError):
    """A keys file or entry that cannot be read, or a reference that names no key."""


def key_hash(key: str) -> str:
    """The stored form of a key: hex SHA-256 of ``morgan-api-key:`` + the key."""
    return hashlib.sha256(b"morgan-api-key:" + key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(KEY_BYTES)


def now_iso() -> str:
    """The current time, ISO 8601 in UTC to the second (``2026-12-02T04:33:20Z``)."""
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    return now.isoformat().replace("+00:00", "Z")


def check_user(user: str) -> str:
    if not USER.fullmatch(user):
        raise KeysError(f"bad user id {user!r}: 1-64 of A-Z a-z 0-9 . _ @ -, starting alphanumeric")
    return user


@dataclass(frozen=True)
class KeyEntry:
    sha256: str
    """Hex SHA-256 of ``morgan-api-key:`` + the key."""
    user: str
    """The user the key acts for (sessions, conversations, memories)."""
    name: str = ""
    """A label for people (``laptop``, ``ci``); may be empty."""
    created: str = ""
    """When the key was made, ISO 8601 UTC."""
    revoked: str | None = None
    """When it was revoked, ISO 8601 UTC; None while it is valid."""

    @property
    def id(self) -> str:
        return self.sha256[:ID_HEX]

    @classmethod
    def make(cls, key: str, user: str, name: str = "") -> KeyEntry:
        if len(name) > MAX_NAME:
            raise KeysError(f"the name is longer than {MAX_NAME} characters")
        return cls(key_hash(key), check_user(user), name, now_iso())

    def revoke(self) -> KeyEntry:
        return self if self.revoked is not None else replace(self, revoked=now_iso())

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "sha256": self.sha256,
            "user": self.user,
            "name": self.name,
            "created": self.created,
            "revoked": self.revoked,
        }

    @classmethod
    def from_json(cls, obj: object) -> KeyEntry:
        """An entry as stored, or ``KeysError`` saying what is wrong with it."""
        if not isinstance(obj, dict):
            raise KeysError("an entry is not a JSON object")
        digest, user = obj.get("sha256"), obj.get("user")
        name, created, revoked = obj.get("name", ""), obj.get("created", ""), obj.get("revoked")
        if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
            raise KeysError("an entry's sha256 is not 64 lowercase hex digits")
        if not isinstance(user, str):
            raise KeysError(f"entry {digest[:ID_HEX]}: user is not a string")
        check_user(user)
        if not isinstance(name, str) or not isinstance(created, str):
            raise KeysError(f"entry {digest[:ID_HEX]}: name and created must be strings")
        if revoked is not None and not isinstance(revoked, str):
            raise KeysError(f"entry {digest[:ID_HEX]}: revoked must be a time or null")
        return cls(digest, user, name, created, revoked)


def find(entries: Iterable[KeyEntry], ref: str) -> KeyEntry:
    """The entry ``ref`` names: the key itself, its id, or a unique prefix of its hash
    (at least ``MIN_PREFIX`` hex digits)."""
    entries = list(entries)
    ref = ref.strip()
    whole = key_hash(ref)
    for entry in entries:
        if entry.sha256 == whole:
            return entry
    prefix = ref.lower()
    if not re.fullmatch(rf"[0-9a-f]{{{MIN_PREFIX},64}}", prefix):
        raise KeysError(f"{ref!r} is not a key id (at least {MIN_PREFIX} hex digits) or a key")
    found = [e for e in entries if e.sha256.startswith(prefix)]
    if not found:
        raise KeysError(f"no key with id {ref!r}")
    if len(found) > 1:
        ids = ", ".join(e.id for e in found)
        raise KeysError(f"{ref!r} names {len(found)} keys ({ids}): give more digits")
    return found[0]


class KeyFile:
    """The keys file: ``{"format": "morgan-api-keys/1", "keys": [entry, ...]}``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def stamp(self) -> tuple[int, int, int] | None:
        """What changes when the file does (inode, size, mtime in ns); None when absent."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise KeysError(f"{self.path}: {exc.strerror}") from None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def read(self) -> tuple[list[KeyEntry], list[str]]:
        """The entries, and what was wrong with those skipped. A missing file has none;
        one that is not such a JSON document raises ``KeysError``."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return [], []
        except OSError as exc:
            raise KeysError(f"{self.path}: {exc.strerror}") from None
        try:
            doc = json.loads(raw)
        except ValueError as exc:
            raise KeysError(f"{self.path}: not JSON ({exc})") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise KeysError(f"{self.path}: not a keys file (format {FORMAT!r})")
        items = doc.get("keys")
        if not isinstance(items, list):
            raise KeysError(f"{self.path}: 'keys' is not a list")
        entries, skipped = [], []
        for item in items:
            try:
                entries.append(KeyEntry.from_json(item))
            except KeysError as exc:
                skipped.append(str(exc))
        return entries, skipped

    @contextlib.contextmanager
    def locked(self) -> Iterator[list[KeyEntry]]:
        """The entries, to change in place; written back when the block ends (one writer
        at a time: ``<file>.lock``)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            entries, skipped = self.read()
            if skipped:  # writing back would drop them: a person should look first
                raise KeysError(f"{self.path}: " + "; ".join(skipped))
            yield entries
            self._write(entries)
        finally:
            os.close(fd)

    def _write(self, entries: list[KeyEntry]) -> None:
        doc = {"format": FORMAT, "keys": [e.to_json() for e in entries]}
        fd, tmp = tempfile.mkstemp(prefix=self.path.name + ".", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as out:  # mkstemp makes it 0600
                json.dump(doc, out, indent=1)
                out.write("\n")
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


class KvKeys:
    """The ``MORGAN_API_KEYS`` bucket: each entry's JSON under the key's ``sha256``."""

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    @classmethod
    async def open(cls, js: JetStreamContext, settings: Settings) -> KvKeys:
        return cls(await definitions.key_value(js, settings, definitions.API_KEYS))

    async def entries(self) -> tuple[list[KeyEntry], list[str]]:
        """The entries, and what was wrong with those skipped."""
        try:
            names = await self.kv.keys()
        except NoKeysError:
            return [], []
        entries, skipped = [], []
        for name in names:
            try:
                entries.append(decode((await self.kv.get(name)).value))
            except KeyNotFoundError:  # deleted meanwhile
                continue
            except KeysError as exc:
                skipped.append(f"{name}: {exc}")
        return entries, skipped

    async def add(self, entry: KeyEntry) -> None:
        await self.kv.create(entry.sha256, encode(entry))

    async def revoke(self, ref: str) -> tuple[KeyEntry, bool]:
        """Revoke the entry ``ref`` names (``find``); also whether it was valid until now."""
        entry = find((await self.entries())[0], ref)
        if entry.revoked is not None:
            return entry, False
        current = await self.kv.get(entry.sha256)
        revoked = entry.revoke()
        await self.kv.update(entry.sha256, encode(revoked), last=current.revision)
        return revoked, True


def encode(entry: KeyEntry) -> bytes:
    return json.dumps(entry.to_json(), separators=(",", ":")).encode()


def decode(raw: bytes | None) -> KeyEntry:
    """An entry from the bucket, or ``KeysError``."""
    try:
        return KeyEntry.from_json(json.loads(raw or b""))
    except ValueError as exc:  # KeysError is one too
        raise KeysError(str(exc)) from None
