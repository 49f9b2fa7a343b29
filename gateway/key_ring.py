"""The API keys a running gateway takes, kept current, and the sessions each key holds open.

Three sources, one answer (``KeyRing``): ``MORGAN_API_KEYS`` (plain ``user:key``
entries, for development and tests; live config may change them), the keys file
(``MORGAN_API_KEYS_FILE``) and the KV bucket ``MORGAN_API_KEYS`` (gateway/keys.py
has both formats). A key revoked in any source is ``key_revoked``; one in none is
``unauthorized``. Auth is on when any source is configured: ``MORGAN_API_KEYS`` not
empty, ``MORGAN_API_KEYS_FILE`` set (a missing file then holds no key, so every request
is refused, never let in), or the bucket holding an entry.

``KeyWatch`` keeps the ring current while the gateway runs: it checks the file's
inode, size and mtime every ``FILE_POLL_S`` and watches the bucket (starting the
watch again after ``RESYNC_S`` without news, which replays every entry, so a watch
lost with a NATS node costs at most that). A file that cannot be read leaves the last
good copy in force; a bad entry is skipped, so its key is refused. After each change,
``changed`` runs: the gateway closes the sessions of keys no longer valid
(``OpenSessions``, close code ``REVOKED_CLOSE``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nats.errors import Error as NatsError
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from gateway.keys import KeyEntry, KeyFile, KeysError, decode, key_hash
from streams.settings import Settings

log = logging.getLogger("morgan.gateway.keys")
FILE_POLL_S = 1.0
"""How often the keys file is checked for a change, seconds."""
RESYNC_S = 60.0
"""A bucket watch without news for this long is started again (a full replay), seconds."""
RETRY_S = 2.0
"""Wait before watching the bucket again after the bus failed, seconds."""
START_TIMEOUT_S = 10.0
"""The gateway does not start without the bucket's entries read within this, seconds."""
REVOKED_CLOSE = 4401
"""WebSocket close code of a session whose key was revoked (reason ``key_revoked``)."""
LOCAL_USER = "local"
"""The one user of a gateway without API keys."""

Closer = Callable[[int, str], Awaitable[None]]
"""Closes one open session with a code and a reason."""


class KeyRefused(Exception):
    """A key the ring does not take: ``code`` is ``unauthorized`` or ``key_revoked``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Caller:
    """Who makes a request: the user it acts for and the key's hash (None without auth)."""

    user: str
    key: str | None
    client: str
    """Whose shares and rate it uses: ``key:<hash>``, or ``addr:<peer>`` without auth."""


def client_of_key(digest: str) -> str:
    return "key:" + digest


def _env_entries(settings: Settings) -> dict[str, KeyEntry]:
    entries = {}
    for key, user in settings.api_key_users.items():
        digest = key_hash(key)
        entries[digest] = KeyEntry(digest, user or "k-" + digest[:16])
    return entries


class KeyRing:
    def __init__(self, settings: Settings) -> None:
        self._env = _env_entries(settings)
        self._file_on = bool(settings.api_keys_file)
        self._file: dict[str, KeyEntry] = {}
        self._bucket: dict[str, KeyEntry] = {}

    def reconfigure(self, settings: Settings) -> None:
        """Live config: ``MORGAN_API_KEYS`` changed."""
        self._env = _env_entries(settings)

    def set_file(self, entries: list[KeyEntry]) -> None:
        self._file = {e.sha256: e for e in entries}

    def set_bucket(self, entries: dict[str, KeyEntry]) -> None:
        self._bucket = {e.sha256: e for e in entries.values()}

    @property
    def enabled(self) -> bool:
        return bool(self._env or self._file_on or self._bucket)

    def _entries(self, digest: str) -> list[KeyEntry]:
        sources = (self._env, self._file, self._bucket)
        return [found for source in sources if (found := source.get(digest)) is not None]

    def user_of(self, digest: str) -> str:
        """The user of the key with this hash, or ``KeyRefused``."""
        entries = self._entries(digest)
        if not entries:
            raise KeyRefused("unauthorized", "a valid API key is required")
        if any(e.revoked is not None for e in entries):
            raise KeyRefused("key_revoked", "this API key was revoked")
        return entries[0].user

    def valid(self, digest: str) -> bool:
        try:
            self.user_of(digest)
        except KeyRefused:
            return False
        return True

    def caller(self, key: str | None, address: str) -> Caller:
        """Who presents ``key`` (None: no key) from ``address``, or ``KeyRefused``."""
        return self.caller_by_hash(None if key is None else key_hash(key), address)

    def caller_by_hash(self, digest: str | None, address: str) -> Caller:
        if not self.enabled:
            return Caller(LOCAL_USER, None, "addr:" + address)
        if digest is None:
            raise KeyRefused("unauthorized", "a valid API key is required")
        return Caller(self.user_of(digest), digest, client_of_key(digest))


class OpenSessions:
    """The open WebSocket sessions of each key (by hash), to close when it is revoked."""

    def __init__(self) -> None:
        self._by_key: dict[str, dict[object, Closer]] = {}

    @contextlib.contextmanager
    def hold(self, digest: str | None, close: Closer) -> Iterator[None]:
        """Count the session as open for the block (nothing for None: no auth)."""
        if digest is None:
            yield
            return
        mark = object()
        self._by_key.setdefault(digest, {})[mark] = close
        try:
            yield
        finally:
            held = self._by_key.get(digest, {})
            held.pop(mark, None)
            if not held:
                self._by_key.pop(digest, None)

    def count(self, digest: str) -> int:
        return len(self._by_key.get(digest, {}))

    async def close_invalid(self, ring: KeyRing) -> int:
        """Close every session whose key ``ring`` no longer takes; how many."""
        closers = [
            close
            for digest, held in list(self._by_key.items())
            if not ring.valid(digest)
            for close in list(held.values())
        ]
        results = await asyncio.gather(
            *(close(REVOKED_CLOSE, "key_revoked") for close in closers), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                log.warning("closing a session of a revoked key: %r", result)
        return len(closers)


class KeyWatch:
    """Keeps a ``KeyRing`` current: the keys file (``path``, None for none) and the bucket."""

    def __init__(
        self,
        ring: KeyRing,
        kv: KeyValue,
        path: Path | None,
        changed: Callable[[], Awaitable[Any]],
    ) -> None:
        self.ring, self.kv, self.changed = ring, kv, changed
        self.file = KeyFile(path) if path is not None else None
        self._stamp: tuple[int, int, int] | None | bool = False
        """The file's last seen ``KeyFile.stamp`` (False: never looked)."""
        self._problem: str | None = None
        """Why the file could not be read last time (None: it could)."""
        self._loaded = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Read the file and the bucket, then follow both. Raises ``TimeoutError`` when the
        bucket's entries are not read within ``timeout_s`` (bus errors meanwhile are
        logged and retried)."""
        if self.file is not None:
            await self.check_file()
            self._tasks.append(asyncio.create_task(self._poll_file()))
        self._tasks.append(asyncio.create_task(self._follow_bucket()))
        try:
            await asyncio.wait_for(self._loaded.wait(), timeout_s)
        except TimeoutError:
            await self.stop()
            raise TimeoutError(f"the API key bucket was not read in {timeout_s} s") from None

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    async def check_file(self) -> None:
        """Read the file again if it changed since the last look."""
        assert self.file is not None
        try:
            stamp = self.file.stamp()
            if stamp == self._stamp:
                return
            entries, skipped = await asyncio.to_thread(self.file.read)
        except KeysError as exc:
            if str(exc) != self._problem:  # once per new problem, not every second
                log.warning("keys file unreadable, its last good copy stays in force: %s", exc)
            self._problem = str(exc)
            return
        self._stamp, self._problem = stamp, None
        if stamp is None:
            log.warning("keys file %s does not exist: no key of it is valid", self.file.path)
        for problem in skipped:
            log.warning("keys file %s: skipped an entry: %s", self.file.path, problem)
        self.ring.set_file(entries)
        await self.changed()

    async def _poll_file(self) -> None:
        while True:
            await asyncio.sleep(FILE_POLL_S)
            await self.check_file()

    async def _follow_bucket(self) -> None:
        while True:
            try:
                await self._watch_bucket()
            except (NatsError, TimeoutError) as exc:
                log.warning("API key bucket: %r; watching again in %s s", exc, RETRY_S)
                await asyncio.sleep(RETRY_S)

    async def _watch_bucket(self) -> None:
        """One watch: every entry, then each change; returns after ``RESYNC_S`` of quiet."""
        watcher = await self.kv.watchall()
        entries: dict[str, KeyEntry] = {}
        started = False
        try:
            while True:
                try:
                    update = await watcher.updates(timeout=RESYNC_S)  # type: ignore[no-untyped-call]
                except TimeoutError:
                    if started:
                        return
                    raise
                if update is not None:
                    _apply(entries, update.key, update.operation, update.value)
                if update is None or started:
                    started = True
                    self.ring.set_bucket(entries)
                    self._loaded.set()
                    await self.changed()
        finally:
            with contextlib.suppress(NatsError):  # the connection may be closing
                await watcher.stop()  # type: ignore[no-untyped-call]


def _apply(entries: dict[str, KeyEntry], name: str, operation: str | None, raw: bytes) -> None:
    if operation in (KV_DEL, KV_PURGE):
        entries.pop(name, None)
        return
    try:
        entry = decode(raw)
    except KeysError as exc:
        log.warning("API key bucket: skipped entry %s: %s", name, exc)
        entries.pop(name, None)
        return
    entries[name] = entry
