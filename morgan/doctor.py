"""``morgan doctor``: hardware, models, tiers, and whether NATS answers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from processors import hardware, models, routing
from processors.routing import TierRouter
from schemas.subjects import TIERED_KINDS
from streams import bus, definitions
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
            except Exception:
                print(f"  stream {name:<7} not created yet (the first processor creates it)")
        for c in definitions.work_consumers():
            try:
                ci = await js.consumer_info(definitions.WORK, c.durable)
                print(
                    f"  work {c.durable:<8} pending {ci.num_pending}, "
                    f"in progress {ci.num_ack_pending}, workers waiting {ci.num_waiting}"
                )
            except Exception:
                pass
        print("routing (live workers from $SRV.PING, the registry every producer asks)")
        router = TierRouter(nc, js, settings)
        for kind in ("vad", "stt", "llm", "tts"):
            live = await routing.live_tiers(nc, kind)
            line = f"  {kind:<4} live worker tiers: {','.join(sorted(live)) or 'none'}"
            if kind in TIERED_KINDS:
                line += f" -> work goes to {await router.tier_for(kind)}"
            print(line)
        await router.close()
    except Exception as exc:
        ok = False
        print(f"  error: {exc}")
    finally:
        await asyncio.wait_for(nc.close(), 5)
    return 0 if ok else 1
