"""``morgan doctor``: hardware, models, the kinds and routes, the data stores, and whether
NATS answers."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from pathlib import Path

import asyncpg
import httpx
import redis.asyncio as aioredis
from nats.errors import Error as NatsError
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisClusterException, RedisError

from morgan import embedded_postgres
from processors import hardware, models, registry, routing
from processors.routing import TierRouter
from processors.spec import EventTap, Spec
from streams import bus, definitions
from streams.routes import Routes
from streams.settings import Settings


def _check(path_of: Callable[[], Path]) -> str:
    try:
        path = path_of()
    except Exception as exc:
        return f"MISSING ({exc})"
    return f"{path}" if Path(path).exists() else f"MISSING ({path})"


def _cores(settings: Settings) -> str:
    """The cores a processor started here would run on (MORGAN_CPUS pins it)."""
    if not settings.cpu_set:
        given = hardware.cpu_list(hardware.usable_cores())
        return f"{given} (all given; MORGAN_CPUS pins a worker)"
    missing = hardware.missing_cores(settings.cpu_set)
    not_here = f" NOT HERE: {sorted(missing)}" if missing else ""
    return f"{hardware.cpu_list(settings.cpu_set)} (MORGAN_CPUS){not_here}"


def _kinds(settings: Settings) -> list[Spec]:
    """Print each installed kind's declaration; returns the specs that loaded."""
    print("kinds (built-in and entry points 'morgan.processors'; * = started by morgan up)")
    specs: list[Spec] = []
    width = max(map(len, registry.kinds()))
    for kind, target in sorted(registry.kinds().items()):
        try:
            spec = registry.spec(kind)
        except (ImportError, registry.UnknownKind) as exc:
            print(f"  {kind:<{width}} BROKEN {target}: {exc}")
            continue
        specs.append(spec)
        mark = "*" if kind in settings.kind_list else " "
        source = ", ".join(spec.input.types) if isinstance(spec.input, EventTap) else ""
        feeds = f"{spec.feeds}{'(gpu/cpu)' if spec.tiered else ''}{f' {source}' if source else ''}"
        deliveries = spec.deliveries(settings)
        print(
            f" {mark}{kind:<{width}} {feeds:<15} ack wait {spec.ack_wait(settings):g} s, "
            f"deliveries {'unlimited' if deliveries < 0 else deliveries}, "
            f"{spec.concurrency} at once; publishes "
            + (", ".join(m.TYPE for m in spec.publishes) or "nothing")
        )
    return specs


def _speed(settings: Settings) -> None:
    """Which latency features are on (docs/benchmarks.md measures each)."""
    window = settings.stt_window_s
    print("speed")
    print(
        f"  stt window   {'off (30 s)' if window >= 30 else f'{window:g} s'}"
        f", beam {settings.stt_beam_size}"
    )
    if settings.vad_turn_model:
        print(
            f"  end of turn  Smart Turn model after {settings.vad_turn_ask_ms} ms of silence, "
            f"at most {settings.vad_turn_max_silence_ms} ms (MORGAN_VAD_TURN_MODEL)"
        )
    else:
        print(f"  end of turn  silence {settings.vad_silence_ms} ms (MORGAN_VAD_TURN_MODEL=0)")
    ms = settings.vad_speculate_ms
    print(
        "  speculation  "
        + (
            f"on: at a {ms} ms pause (MORGAN_VAD_SPECULATE_MS)"
            if ms
            else "off (MORGAN_VAD_SPECULATE_MS=0)"
        )
    )


def _routes(settings: Settings) -> None:
    print("routes (sender: message type -> kind; MORGAN_ROUTES overrides)")
    for sender, message_type, kind in Routes.parse(settings.routes).table():
        print(f"  {sender}: {message_type:<14} -> {kind}")


STORE_TIMEOUT_S = 2.0
"""Each store gets this long to answer: doctor stays quick when one is away."""


def _why(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def hide_password(url: str) -> str:
    """A DSN or URL as it may be shown: any password in it replaced by ``***``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    end = min((i for i in map(rest.find, "/?#") if i >= 0), default=len(rest))
    netloc, tail = rest[:end], rest[end:]
    userinfo, at, hosts = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.split(':', 1)[0]}:***@{hosts}"
    tail = re.sub(r"([?&]password=)[^&#]*", r"\1***", tail, flags=re.IGNORECASE)
    return f"{scheme}://{netloc}{tail}"


async def _postgres_answers(url: str) -> str:
    conn = await asyncpg.connect(url, timeout=STORE_TIMEOUT_S)
    try:
        version = str(await conn.fetchval("SHOW server_version")).split()[0]
        line = f"answers, PostgreSQL {version}"
        if not await conn.fetchval("SELECT to_regclass('morgan_schema_migrations') IS NOT NULL"):
            return f"{line}, no Morgan schema yet"
        try:
            schema = await conn.fetchval("SELECT max(version) FROM morgan_schema_migrations")
        except asyncpg.PostgresError as exc:
            return f"{line}, schema version unreadable ({_why(exc)})"
        return f"{line}, schema version {schema}"
    finally:
        await conn.close()


async def _postgres(settings: Settings) -> tuple[bool, str]:
    url = settings.database_url
    where = hide_password(url)
    if not url:
        root = settings.data_dir / "postgres"
        embedded_url = embedded_postgres.configured_url(settings.data_dir)
        if embedded_url is None:
            return True, f"not configured: morgan up starts an embedded one in {root}"
        url, where = embedded_url, f"embedded (morgan up) {hide_password(embedded_url)}"
    try:
        answer = await asyncio.wait_for(_postgres_answers(url), 2 * STORE_TIMEOUT_S)
    except (*embedded_postgres.CONNECT_ERRORS, ValueError) as exc:
        if not settings.database_url:
            return True, f"{where}: not running (morgan up starts it)"
        return False, f"{where}: UNREACHABLE ({_why(exc)})"
    return True, f"{where}: {answer}"


def _redis_client(settings: Settings) -> aioredis.Redis | RedisCluster:
    t = STORE_TIMEOUT_S
    if settings.redis_cluster_nodes:
        nodes = [n.strip().rpartition(":") for n in settings.redis_cluster_nodes.split(",")]
        startup = [ClusterNode(host, int(port)) for host, _, port in nodes if host]
        return RedisCluster(startup_nodes=startup, socket_connect_timeout=t, socket_timeout=t)
    return aioredis.from_url(settings.redis_url, socket_connect_timeout=t, socket_timeout=t)


async def _redis(settings: Settings) -> tuple[bool, str]:
    if settings.redis_cluster_nodes:
        where = f"cluster {settings.redis_cluster_nodes}"
    elif settings.redis_url:
        where = hide_password(settings.redis_url)
    else:
        return True, "not configured: no L2 context cache (L1 and PostgreSQL answer)"
    try:
        client = _redis_client(settings)
        try:
            await asyncio.wait_for(client.ping(), 2 * STORE_TIMEOUT_S)
        finally:
            await client.aclose()
    except (OSError, TimeoutError, ValueError, RedisError, RedisClusterException) as exc:
        return False, f"{where}: UNREACHABLE ({_why(exc)})"
    return True, f"{where}: answers (PING)"


async def _qdrant(settings: Settings) -> tuple[bool, str]:
    if not settings.qdrant_url:
        # Local mode is locked by the one process that opens it: look, do not open.
        path = Path(settings.qdrant_path or settings.data_dir / "qdrant")
        state = "exists" if path.is_dir() else "not created yet"
        if settings.qdrant_path:
            return True, f"local mode {path} ({state})"
        return True, f"not configured: morgan up uses local mode in {path} ({state})"
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request
    try:
        async with httpx.AsyncClient(timeout=STORE_TIMEOUT_S) as client:
            answer = await client.get(settings.qdrant_url.rstrip("/") + "/")
        answer.raise_for_status()
        version = answer.json().get("version", "?")
    except (httpx.HTTPError, ValueError, AttributeError) as exc:
        return False, f"{settings.qdrant_url}: UNREACHABLE ({_why(exc)})"
    return True, f"{settings.qdrant_url}: answers, Qdrant {version}"


async def _stores(settings: Settings) -> bool:
    """Print which data stores are used and whether each answers; False = one that is
    configured does not."""
    print("stores (docs/data.md)")
    checks = await asyncio.gather(_postgres(settings), _redis(settings), _qdrant(settings))
    for name, (_, line) in zip(("postgresql", "redis", "qdrant"), checks, strict=True):
        print(f"  {name:<12} {line}")
    return all(ok for ok, _ in checks)


async def report(settings: Settings) -> int:
    hw = hardware.detect()
    tiers = hardware.serving_tiers(settings.tier_list, hw)
    print("hardware")
    print(f"  os/arch      {hw.os}/{hw.arch}")
    print(f"  cuda         {hw.cuda_devices} device(s) {hw.gpu_name}".rstrip())
    print(f"  apple mps    {'yes' if hw.mps else 'no'}")
    print(f"  cores        {_cores(settings)}")
    why = "MORGAN_TIERS" if settings.tier_list else "detected"
    print(f"  tiers        {', '.join(tiers)} ({why})")
    print("models")
    print(f"  stt          {settings.stt_model or _check(models.whisper_model_dir)}")
    print(f"  tts          {settings.tts_voice or _check(models.piper_voice_path)}")
    if settings.llm_backend == "openai":
        print(f"  llm          openai-compatible {settings.llm_url} model={settings.llm_model}")
    else:
        print(f"  llm          {settings.llm_model or _check(models.smollm2_gguf_path)}")
    _speed(settings)
    specs = _kinds(settings)
    _routes(settings)
    ok = await _stores(settings)
    print("nats")
    print(f"  role         {bus.role_of(settings) or 'none (no credentials)'}")
    try:
        nc = await bus.connect(settings, "morgan-doctor", connect_timeout=2.0, keep_trying=False)
    except Exception as exc:
        print(f"  {settings.nats_url}: UNREACHABLE ({exc})")
        return 1
    try:
        info = nc._server_info
        print(
            f"  {nc.connected_url.netloc if nc.connected_url else ''}: "
            f"server {info.get('version')} jetstream={'yes' if info.get('jetstream') else 'no'}"
        )
        js = nc.jetstream()
        for name in (definitions.AUDIO, definitions.WORK, definitions.EVENTS):
            try:
                s = await js.stream_info(name)
                replicas = s.config.num_replicas
                print(f"  stream {name:<7} {s.state.messages} msgs, replicas {replicas}")
            except (NatsError, TimeoutError):
                print(f"  stream {name:<7} not created yet (the first processor creates it)")
        for spec in specs:
            for _, c in spec.consumers(settings, tiers):
                try:
                    ci = await js.consumer_info(c.stream, c.durable)
                except (NatsError, TimeoutError):
                    print(f"  {c.stream.lower()} {c.durable:<8} not created yet")
                    continue
                print(
                    f"  {c.stream.lower()} {c.durable:<8} pending {ci.num_pending}, "
                    f"in progress {ci.num_ack_pending}, workers waiting {ci.num_waiting}"
                )
        print("routing (live workers from $SRV.PING, the registry every producer asks)")
        router = TierRouter(nc, js, settings)
        for spec in specs:
            live = await routing.live_tiers(nc, spec.kind)
            line = f"  {spec.kind:<4} live worker tiers: {','.join(sorted(live)) or 'none'}"
            if spec.tiered:
                line += f" -> work goes to {await router.tier_for(spec.kind)}"
            print(line)
        await router.close()
    except Exception as exc:
        ok = False
        print(f"  error: {exc}")
    finally:
        await asyncio.wait_for(nc.close(), 5)
    return 0 if ok else 1
