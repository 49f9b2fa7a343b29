"""Live configuration: Settings overrides from Consul KV, or else a NATS KV bucket.

    Consul KV (CONSUL_HTTP_ADDR set)       NATS KV bucket MORGAN_CONFIG
    <prefix>/config/global  JSON object    global
    <prefix>/config/<kind>  JSON object    <kind>
    <prefix>/secrets/<name> raw text       secrets.<name>

A config object holds Settings field names (``{"vad_silence_ms": 600}``); the
kind's object overrides the global one. Secrets are the ``repr=False`` fields
(api_keys, llm_api_key, ...) and are taken only from the secrets keys. Fields
that locate the bus or the config store (nats_url, prefix, data_dir,
consul_*) cannot change live. Unknown keys and bad values are logged and
ignored; each change yields a NEW Settings (``model_copy``), never a crash.

Each good read is cached on disk (``<data_dir>/config/<kind>.json``, mode 0600:
it holds secrets). While the store is unreachable, at start or during the
watch, that copy is used for at most ``config_cache_max_age_s`` after it was
last confirmed; after that base settings apply (logged as an error).

    async for settings in watch_config(base, "stt", nc): worker.settings = settings
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import nats.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue
from pydantic import ValidationError

from schemas.errors import MorganError, Unavailable
from streams import definitions
from streams.consul import Consul, ConsulError
from streams.log_limit import LogLimit
from streams.settings import Settings

log = logging.getLogger("morgan.config")

BUCKET = definitions.CONFIG
SECRETS = frozenset(n for n, f in Settings.model_fields.items() if f.repr is False)
BOOTSTRAP = frozenset({"nats_url", "prefix", "data_dir"}) | frozenset(
    n for n in Settings.model_fields if n.startswith("consul_")
)


@dataclass(frozen=True)
class Layers:
    """What the store holds for one kind: the two config objects and the secrets."""

    global_: dict[str, Any] = field(default_factory=dict)
    kind: dict[str, Any] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"global": self.global_, "kind": self.kind, "secrets": self.secrets}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Layers:
        return cls(dict(d.get("global", {})), dict(d.get("kind", {})), dict(d.get("secrets", {})))


def parse_object(where: str, raw: bytes) -> dict[str, Any]:
    """A config layer's JSON object; anything else is logged and treated as empty."""
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        log.warning("config %s: not JSON, ignored: %s", where, exc)
        return {}
    if not isinstance(value, dict):
        log.warning("config %s: not a JSON object, ignored", where)
        return {}
    return value


def apply_layers(base: Settings, layers: Layers, kind: str = "") -> Settings:
    """``base`` with the valid overrides applied (a new object; ``base`` if none apply)."""
    updates: dict[str, Any] = {}
    for where, layer in (("global", layers.global_), (kind or "kind", layers.kind)):
        for name, value in layer.items():
            if name not in Settings.model_fields:
                log.warning("config %s: unknown setting %r ignored", where, name)
            elif name in BOOTSTRAP:
                log.warning("config %s: %r cannot change live; ignored", where, name)
            elif name in SECRETS:
                log.warning("config %s: %r is a secret; set it under secrets/", where, name)
            else:
                updates[name] = value
    for name, value in layers.secrets.items():
        if name in SECRETS and name not in BOOTSTRAP:
            updates[name] = value
        else:
            log.warning("config secrets: %r is not a secret setting; ignored", name)
    valid = _validated(base, updates)
    return base.model_copy(update=valid) if valid else base


def _validated(base: Settings, updates: dict[str, Any]) -> dict[str, Any]:
    """The updates that pass Settings' validation, converted; the rest are logged."""
    while updates:
        try:
            checked = Settings.model_validate({**base.model_dump(), **updates})
        except ValidationError as exc:
            bad = set()
            for err in exc.errors():
                name = str(err["loc"][0]) if err["loc"] else "?"
                bad.add(name)
                # err["msg"] never carries the input, so secrets stay out of the log.
                log.warning("config: bad value for %r ignored: %s", name, err["msg"])
            if not bad & updates.keys():
                return {}
            updates = {k: v for k, v in updates.items() if k not in bad}
            continue
        return {k: getattr(checked, k) for k in updates}
    return {}


# --- stores ---------------------------------------------------------------------------------


class Store(Protocol):
    name: str

    def watch(self) -> AsyncGenerator[Layers, None]:
        """The current layers at once, then again after every change or quiet wait.
        Raises when the store cannot be reached."""
        ...


class ConsulStore:
    name = "consul"

    def __init__(self, consul: Consul, settings: Settings, kind: str) -> None:
        self.consul, self.kind = consul, kind
        self.root = f"{settings.prefix}/"
        self.wait_s = settings.config_watch_wait_s

    async def watch(self) -> AsyncGenerator[Layers, None]:
        index = 0
        while True:
            new, pairs = await self.consul.kv_get(
                self.root, recurse=True, index=index or None, wait_s=self.wait_s
            )
            # Consul's rules: an index that goes backwards (a restored or new cluster)
            # restarts from 0; an index below 1 is treated as 1.
            index = 0 if new < index else max(new, 1)
            yield self._layers({p.key[len(self.root) :]: p.value for p in pairs})

    def _layers(self, values: dict[str, bytes]) -> Layers:
        return Layers(
            parse_object("global", values.get("config/global", b"")),
            parse_object(self.kind, values.get(f"config/{self.kind}", b"")),
            {
                k[len("secrets/") :]: v.decode(errors="replace").strip()
                for k, v in values.items()
                if k.startswith("secrets/") and "/" not in k[len("secrets/") :]
            },
        )


async def ensure_bucket(js: JetStreamContext, settings: Settings) -> KeyValue:
    """The MORGAN_CONFIG bucket, created on first use (idempotent)."""
    return await definitions.key_value(js, settings, definitions.CONFIG)


class NatsKvStore:
    name = "nats-kv"

    def __init__(self, nc: Client, settings: Settings, kind: str) -> None:
        self.nc, self.settings, self.kind = nc, settings, kind
        self.wait_s = settings.config_watch_wait_s

    async def watch(self) -> AsyncGenerator[Layers, None]:
        try:
            kv = await ensure_bucket(self.nc.jetstream(), self.settings)
            watcher = await kv.watchall()
        except (nats.errors.Error, TimeoutError) as exc:  # no JetStream, timeout, disconnected
            raise Unavailable(f"nats kv {BUCKET}: {exc!r}") from exc
        values: dict[str, bytes] = {}
        started = False
        try:
            while True:
                try:
                    entry = await watcher.updates(timeout=self.wait_s)  # type: ignore[no-untyped-call]
                except nats.errors.TimeoutError:
                    if not self.nc.is_connected:
                        raise Unavailable(f"nats kv {BUCKET}: not connected") from None
                    if started:
                        yield self._layers(values)
                    continue
                if entry is None:
                    started = True
                elif entry.operation in (KV_DEL, KV_PURGE):
                    values.pop(entry.key, None)
                else:
                    values[entry.key] = entry.value or b""
                if started:
                    yield self._layers(values)
        finally:
            with contextlib.suppress(nats.errors.Error):  # connection closed or draining
                await watcher.stop()  # type: ignore[no-untyped-call]

    def _layers(self, values: dict[str, bytes]) -> Layers:
        return Layers(
            parse_object("global", values.get("global", b"")),
            parse_object(self.kind, values.get(self.kind, b"")),
            {
                k[len("secrets.") :]: v.decode(errors="replace").strip()
                for k, v in values.items()
                if k.startswith("secrets.")
            },
        )


# --- the cache ------------------------------------------------------------------------------


class Cache:
    """The last good layers on disk, with the time they were last confirmed."""

    def __init__(self, settings: Settings, kind: str, clock: Callable[[], float]) -> None:
        self.path = Path(settings.data_dir) / "config" / f"{kind}.json"
        self.clock = clock

    def save(self, layers: Layers, source: str) -> None:
        data = {"saved_at": self.clock(), "source": source, **layers.to_json()}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".config-")
            with os.fdopen(fd, "w") as f:  # mkstemp makes it 0600: the cache holds secrets
                json.dump(data, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("config cache %s not written: %s", self.path, exc)

    def load(self, max_age_s: float) -> Layers | None:
        """The cached layers if confirmed within ``max_age_s``, else None."""
        try:
            data = json.loads(self.path.read_text())
            age = self.clock() - float(data["saved_at"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if age > max_age_s:
            log.error(
                "config cache %s is %.0fs old (max %.0fs): ignored, base settings apply",
                self.path,
                age,
                max_age_s,
            )
            return None
        return Layers.from_json(data)


# --- the source -----------------------------------------------------------------------------


class ConfigSource:
    """Produces Settings: the first at ``start()``, then one per change, to subscribers.

    A pure producer: it never touches a worker; whoever subscribes swaps its settings.
    """

    def __init__(
        self,
        base: Settings,
        kind: str,
        *,
        nc: Client | None = None,
        clock: Callable[[], float] = time.time,
        start_timeout_s: float = 5.0,
    ) -> None:
        self.base, self.kind = base, kind
        self.current = base
        self.cache = Cache(base, kind, clock)
        self.clock = clock
        self.start_timeout_s = start_timeout_s
        self._consul = Consul.from_settings(base)
        self.store: Store
        if self._consul is not None:
            self.store = ConsulStore(self._consul, base, kind)
        elif nc is not None:
            self.store = NatsKvStore(nc, base, kind)
        else:
            raise ValueError("no config store: set CONSUL_HTTP_ADDR or pass a NATS connection")
        self.failures = 0
        """Consecutive failed reads of the store (0 while it answers)."""
        self._subscribers: list[Callable[[Settings], None]] = []
        self._layers: Layers | None = None
        self._confirmed_at: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._errors = LogLimit(log, every_s=60.0)
        """An unreachable store is retried every 10 s at most: one line a minute of it."""

    def subscribe(self, callback: Callable[[Settings], None]) -> Callable[[], None]:
        """Call ``callback`` with each new Settings; returns the unsubscribe function."""
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback)

    async def start(self) -> Settings:
        """The settings to begin with: the store's, else a fresh cache's, else base."""
        it = self.store.watch()
        try:
            layers = await asyncio.wait_for(anext(it), self.start_timeout_s)
        except (MorganError, nats.errors.Error, TimeoutError) as exc:  # never fatal
            log.warning("config store %s unreachable at start: %s", self.store.name, exc)
            await self._start_without_store(it)
        except Exception:  # a store answering nonsense (a bug): logged, still never fatal
            log.exception("config store %s failed at start", self.store.name)
            await self._start_without_store(it)
        else:
            self._accept(layers, notify=False)
            self._task = asyncio.create_task(self._run(it))
        return self.current

    async def _start_without_store(self, it: AsyncGenerator[Layers, None]) -> None:
        """Begin with a fresh cache, else base settings; keep trying the store."""
        await it.aclose()
        cached = self.cache.load(self.base.config_cache_max_age_s)
        if cached is None:
            log.error("config: no store and no fresh cache: running on base settings")
        else:
            self._layers = cached
            self.current = apply_layers(self.base, cached, self.kind)
            self._confirmed_at = self._cached_at()
        self._task = asyncio.create_task(self._run(None))

    def _cached_at(self) -> float:
        try:
            return float(json.loads(self.cache.path.read_text())["saved_at"])
        except (OSError, ValueError, KeyError, TypeError):
            return self.clock()

    def _accept(self, layers: Layers, *, notify: bool = True) -> None:
        self._confirmed_at = self.clock()
        self.cache.save(layers, self.store.name)
        if layers != self._layers:
            self._layers = layers
            self._emit(apply_layers(self.base, layers, self.kind), notify=notify)

    def _emit(self, settings: Settings, *, notify: bool = True) -> None:
        if settings == self.current:
            return
        self.current = settings
        for callback in list(self._subscribers) if notify else []:
            try:
                callback(settings)
            except Exception:
                log.exception("config subscriber failed")

    async def _run(self, first: AsyncGenerator[Layers, None] | None) -> None:
        while True:
            gen, first = first or self.store.watch(), None
            try:
                async with contextlib.aclosing(gen):
                    async for layers in gen:
                        self.failures = 0
                        self._accept(layers)
            except (ConsulError, Unavailable, nats.errors.Error, TimeoutError) as exc:
                self.failures += 1
                self._errors.warning("store", "config store %s: %s", self.store.name, exc)
            except Exception:  # a bug: keep watching, the last good config stays
                self.failures += 1
                self._errors.exception("bug", "config store %s failed", self.store.name)
            self._expire_stale()
            await asyncio.sleep(min(0.2 * 2 ** max(self.failures - 1, 0), 10.0))

    def _expire_stale(self) -> None:
        """Past the max age without confirmation, fall back to base settings."""
        max_age = self.base.config_cache_max_age_s
        if self._confirmed_at is None or self.clock() - self._confirmed_at <= max_age:
            return
        if self._layers is not None:
            log.error(
                "config store %s unreachable for over %.0fs: back to base settings",
                self.store.name,
                max_age,
            )
        self._layers = None
        self._emit(self.base)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consul is not None:
            await self._consul.aclose()

    async def __aenter__(self) -> ConfigSource:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


async def watch_config(
    settings: Settings,
    kind: str,
    nc: Client | None = None,
    *,
    clock: Callable[[], float] = time.time,
) -> AsyncGenerator[Settings, None]:
    """The starting Settings, then each new one: from Consul KV if configured, else NATS KV."""
    queue: asyncio.Queue[Settings] = asyncio.Queue()
    source = ConfigSource(settings, kind, nc=nc, clock=clock)
    source.subscribe(queue.put_nowait)
    try:
        yield await source.start()
        while True:
            yield await queue.get()
    finally:
        await source.stop()
