"""``morgan doctor``: hardware, models, the kinds and routes, and whether NATS answers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from nats.errors import Error as NatsError

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
            f"{spec.concurrency} at once; publishes " + ", ".join(m.TYPE for m in spec.publishes)
        )
    return specs


def _routes(settings: Settings) -> None:
    print("routes (sender: message type -> kind; MORGAN_ROUTES overrides)")
    for sender, message_type, kind in Routes.parse(settings.routes).table():
        print(f"  {sender}: {message_type:<14} -> {kind}")


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
    specs = _kinds(settings)
    _routes(settings)
    print("nats")
    ok = True
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
