"""Scaling and failover on namespaced hosts (needs root): prints ratios, not pass/fail.

1. STT throughput (utterances/s) with 1, then 2 STT workers on the same input, in one run,
   beside the same model's throughput alone on 1 and 2 cores (no Morgan around it).
2. Tier fallback: from the death of the only gpu-tier STT worker to the first utterance
   served on the cpu tier, with producers choosing the tier through ``TierRouter``.
3. ``--chaos N``: N conversations of ``--turns`` turns, first with no kills, then
   while processors are killed and restarted at random; turns started/completed/lost/
   duplicated and p95 latency of both, and how much the kills added to the p95.

    sudo .venv/bin/python bench/scale.py --utterances 24 --chaos 50
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nats.aio.client import Client
from nats.aio.msg import Msg

from processors.routing import TierRouter
from schemas import Utterance
from streams import bus
from testbed import netns
from testbed.audio import QUESTIONS, silence, speak
from testbed.chaos import chaos_run
from testbed.deployment import HOSTS, Deployment, start_morgan


class Transcripts:
    """Arrival time of each transcript event, by turn id (core NATS, as `nats sub` would)."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}
        self.changed = asyncio.Event()

    async def on_msg(self, msg: Msg) -> None:
        turn = (msg.headers or {}).get("Morgan-Turn", "")
        self.at.setdefault(turn, time.monotonic())
        self.changed.set()

    async def wait(self, turns: set[str], timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while not turns <= set(self.at):
                self.changed.clear()
                await self.changed.wait()


async def send(nc: Client, tier: str, turn: str, pcm: bytes) -> None:
    utt = Utterance(sid="bench", turn=turn, rate=16000, first_seq=1, last_seq=1, pcm=pcm)
    await bus.publish(nc.jetstream(), f"morgan.work.stt.{tier}", utt, msg_id=f"bench.{turn}")


@dataclass
class Rate:
    saturated: float
    """Completions per second while every worker had work waiting (no start-up, no tail)."""
    batch: float
    """Utterances over the whole batch's time, from the first send to the last transcript."""


async def throughput(
    nc: Client, seen: Transcripts, pcms: list[bytes], n: int, tag: str, workers: int
) -> Rate:
    """Send ``n`` utterances at once and time their transcripts.

    While more utterances wait than there are workers, every worker is busy, so the
    completions between the first transcript and the ``n - workers + 1``-th come at the
    saturated rate; after that workers run dry one by one (the tail), which says how
    the batch was split, not how fast the workers are.
    """
    turns = [f"{tag}{i}" for i in range(n)]
    started = time.monotonic()
    for i, turn in enumerate(turns):
        await send(nc, "cpu", turn, pcms[i % len(pcms)])
    await seen.wait(set(turns), timeout=60 + 5 * n)
    done = sorted(seen.at[t] for t in turns)
    last_busy = done[n - workers]
    return Rate((n - workers) / (last_busy - done[0]), n / (done[-1] - started))


async def stt_scaling(dep: Deployment, pcms: list[bytes], n: int) -> tuple[Rate, Rate]:
    gpu1, gpu2 = dep.net["gpu1"], dep.net["gpu2"]
    # one core each (MORGAN_CPUS, one thread then): the question is how throughput scales
    # with workers, not threads, and unpinned workers lose ~10 % to the kernel moving them
    dep.processor("stt-1", gpu1, "stt", MORGAN_TIERS="cpu", MORGAN_CPUS="0")
    await dep.ready()
    nc = await dep.connect("bench")
    seen = Transcripts()
    await nc.subscribe("morgan.events.bench.transcript", cb=seen.on_msg)
    try:
        one = await throughput(nc, seen, pcms, n, "one", workers=1)
        dep.processor("stt-2", gpu2, "stt", MORGAN_TIERS="cpu", MORGAN_CPUS="1")
        await dep.ready()
        two = await throughput(nc, seen, pcms, n, "two", workers=2)
    finally:
        await nc.close()
    dep.kill("stt-1")
    dep.kill("stt-2")
    del dep.workers["stt-1"], dep.workers["stt-2"]
    return one, two


async def models_alone(n: int, cores: int) -> float:
    """Utterances/s of ``cores`` bare faster-whisper processes, one per core, all at once
    (bench/stt_alone.py): the hardware's own throughput, with nothing of Morgan around."""
    script = str(Path(__file__).with_name("stt_alone.py"))
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            script,
            str(core),
            str(n),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        for core in range(cores)
    ]
    for proc in procs:
        assert proc.stdout is not None
        assert (await proc.stdout.readline()).strip() == b"ready"
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        await proc.stdin.drain()
    rates = [float((await proc.communicate())[0]) for proc in procs]
    return sum(rates)


async def tier_fallback(dep: Deployment, pcm: bytes) -> tuple[float, int]:
    """Seconds from gpu STT death to the first transcript of an utterance sent after it
    (served by the cpu worker, directly or moved there by ``rescue_stranded``), and how
    many of those were still routed to the dead gpu tier."""
    dep.processor("stt-g", dep.net["gpu1"], "stt", MORGAN_TIERS="gpu")
    dep.processor("stt-c", dep.net["cpu"], "stt", MORGAN_TIERS="cpu")
    await dep.ready()
    nc = await dep.connect("bench-fallback")
    seen = Transcripts()
    await nc.subscribe("morgan.events.bench.transcript", cb=seen.on_msg)
    router = TierRouter(nc, nc.jetstream(), dep.settings())
    try:
        deadline = time.monotonic() + 10
        while await router.tier_for("stt") != "gpu":  # the gpu worker is seen pulling
            assert time.monotonic() < deadline, "the router never chose gpu"
            await asyncio.sleep(0.1)
        dep.kill("stt-g")
        died = time.monotonic()
        to_gpu, i = 0, 0
        after: list[str] = []
        while not any(t in seen.at for t in after):
            tier = await router.tier_for("stt")
            turn = f"fb{tier}{i}"
            await send(nc, tier, turn, pcm)
            after.append(turn)
            to_gpu += tier == "gpu"
            i += 1
            await asyncio.sleep(0.25)
            assert time.monotonic() - died < 60, "no utterance served within 60 s"
        first = min(seen.at[t] for t in after if t in seen.at)
        return first - died, to_gpu
    finally:
        await nc.close()
        for key in ("stt-g", "stt-c"):
            dep.kill(key)
            del dep.workers[key]


async def main(args: argparse.Namespace) -> int:
    reason = netns.available()
    if reason:
        print(f"cannot run: {reason}")
        return 1
    pcms = [silence(200) + speak(p) + silence(200) for p in QUESTIONS]
    results: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.utterances:  # 0: the chaos run only
            net = netns.Network(HOSTS, Path(tmp)).up()
            try:
                dep = Deployment(net)
                await dep.start_cluster(HOSTS)
                await dep.apply_definitions()
                one, two = await stt_scaling(dep, pcms, args.utterances)
                results.append(
                    f"STT throughput ({args.utterances} utterances, 1 core per worker), "
                    f"saturated: 1 worker {one.saturated:.2f} utt/s, 2 workers "
                    f"{two.saturated:.2f} utt/s -> {two.saturated / one.saturated:.2f}x "
                    f"(target >= 1.8x); whole batch incl. start and tail: {one.batch:.2f} vs "
                    f"{two.batch:.2f} utt/s -> {two.batch / one.batch:.2f}x"
                )
                print(results[-1], flush=True)
                alone = [await models_alone(args.utterances, cores) for cores in (1, 2)]
                results.append(
                    f"the same model alone (bench/stt_alone.py, no Morgan), 1 core: "
                    f"{alone[0]:.2f} utt/s, 2 cores: {alone[1]:.2f} utt/s -> "
                    f"{alone[1] / alone[0]:.2f}x; Morgan's scaling over the model's own: "
                    f"{(two.saturated / one.saturated) / (alone[1] / alone[0]):.2f}"
                )
                print(results[-1], flush=True)
                fallback, stranded = await tier_fallback(dep, pcms[0])
                results.append(
                    f"tier fallback: gpu STT death -> first utterance served on cpu "
                    f"{fallback:.2f} s (target < 2 s); {stranded} utterance(s) still routed "
                    "to gpu after the death"
                )
                print(results[-1], flush=True)
            finally:
                net.down()
        if args.chaos:
            net = netns.Network(HOSTS, Path(tmp) / "chaos").up()
            try:
                dep = await start_morgan(net, spare_llm=True)
                dep.restart_nice = args.restart_nice
                utts = [silence(300) + speak(p) + silence(900) for p in QUESTIONS]
                runs = {}
                for kill in (False, True):  # the same conversations, without kills first
                    runs[kill] = await chaos_run(
                        dep,
                        [dep.url_of("gw"), dep.url_of("gw2")],
                        utts,
                        conversations=args.chaos,
                        turns=args.turns,
                        interval_s=args.kill_every,
                        kill_vad=not args.no_vad,
                        parallel=args.parallel,
                        kill=kill,
                    )
                calm, res = runs[False], runs[True]
                results.append(
                    f"no kills ({args.chaos} conversations x {args.turns} turns, "
                    f"{calm.seconds:.0f} s): {calm.tally.line()}"
                )
                results.append(
                    f"chaos ({args.chaos} conversations x {args.turns} turns, "
                    f"{len(res.kills)} kills{'' if not args.no_vad else ', no VAD kills'}"
                    f"{f', restarts at nice {args.restart_nice}' if args.restart_nice else ''}, "
                    f"{res.seconds:.0f} s): {res.tally.line()}; p95 over the no-kill run: "
                    f"+{res.tally.p95() - calm.tally.p95():.2f} s (target <= 3 s)"
                )
                print("\n".join(results[-2:]), flush=True)
                if res.tally.lost or res.tally.duplicated or res.tally.extra:
                    print("\n".join(res.turns))
            finally:
                net.down()
    machine = f"{platform.node()} {platform.machine()}, {len(os.sched_getaffinity(0))} cores"
    print(f"machine: {machine}")
    if args.record:
        record(args, machine, results)
    return 0


def record(args: argparse.Namespace, machine: str, results: list[str]) -> None:
    """Replace this benchmark's last result in docs/benchmarks.md (or add it), keeping
    the prose that follows it."""
    path = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    command = "sudo .venv/bin/python bench/scale.py " + " ".join(sys.argv[1:])
    title = "## Multi-host scale and failover (bench/scale.py)"
    block = (
        f"{title}, {time.strftime('%Y-%m-%d')}\n\n"
        f"Machine: {machine}. Command: `{command}`\n\n" + "".join(f"- {r}\n" for r in results)
    )
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.startswith(title)), None)
    if start is None:
        path.write_text(text + "\n" + block)
        return
    end = start + 1  # past the heading, the machine line and the result bullets
    while end < len(lines) and (
        not lines[end].strip() or lines[end].startswith(("Machine:", "- "))
    ):
        end += 1
    while end > start + 1 and not lines[end - 1].strip():
        end -= 1  # keep the blank line before the prose
    path.write_text("".join(lines[:start]) + block + "".join(lines[end:]))


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--utterances", type=int, default=24, help="per throughput phase (0: skip it)")
    p.add_argument("--chaos", type=int, default=0, help="conversations in the chaos run")
    p.add_argument("--turns", type=int, default=3, help="turns per chaos conversation")
    p.add_argument("--parallel", type=int, default=5, help="chaos conversations at once")
    p.add_argument("--kill-every", type=float, default=5.0, help="seconds between kills")
    p.add_argument(
        "--restart-nice",
        type=int,
        default=0,
        help="niceness of restarted workers (19: a model reload takes only idle CPU, "
        "as on hosts that do not share cores)",
    )
    p.add_argument("--no-vad", action="store_true", help="never kill VAD workers")
    p.add_argument("--record", action="store_true", help="write the result into docs/benchmarks.md")
    return p.parse_args()


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse())))
