"""Many conversations while processors are killed (SIGKILL) and restarted at random.

Used small by tests/system/test_failover.py and full size by ``bench/scale.py --chaos N``.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field

from testbed.conversation import Talker, Tally
from testbed.deployment import Deployment


@dataclass
class ChaosResult:
    tally: Tally
    kills: list[str] = field(default_factory=list)
    turns: list[str] = field(default_factory=list)
    """Each conversation's turns (Talker.describe), for failure messages."""
    seconds: float = 0.0


async def _conversation(
    url: str, utterances: list[bytes], turns: int, rng: random.Random
) -> tuple[Tally, str]:
    talker = await Talker.open(url)
    try:
        for _ in range(turns):
            await talker.say(rng.choice(utterances), timeout=120.0, realtime=4.0)
        return talker.tally(), talker.describe()
    finally:
        await talker.close()


async def _killer(
    dep: Deployment, keys: list[str], interval_s: float, stop: asyncio.Event, rng: random.Random
) -> list[str]:
    kills: list[str] = []
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), interval_s)
            break
        except TimeoutError:
            pass
        if not keys:
            continue
        key = rng.choice(keys)
        dep.kill(key)
        kills.append(key)
        await dep.restore()  # one victim at a time: restarted and ready before the next
    return kills


async def chaos_run(
    dep: Deployment,
    urls: list[str],
    utterances: list[bytes],
    *,
    conversations: int,
    turns: int,
    interval_s: float = 4.0,
    seed: int = 7,
    kill_vad: bool = True,
    parallel: int = 0,
    kill: bool = True,
) -> ChaosResult:
    """Conversations take turns over ``urls`` (gateways). ``kill_vad=False`` kills only
    the stateless kinds (STT, LLM, TTS); ``parallel`` > 0 caps the conversations running
    at once; ``kill=False`` kills nothing (the same load, for a baseline)."""
    gate = asyncio.Semaphore(parallel or conversations)

    async def one(i: int) -> tuple[Tally, str]:
        async with gate:
            url = urls[i % len(urls)]
            return await _conversation(url, utterances, turns, random.Random(seed + i))

    rng = random.Random(seed)
    victims = [
        k for k in dep.workers if not k.startswith("gw") and (kill_vad or not k.startswith("vad"))
    ]
    stop = asyncio.Event()
    started = time.monotonic()
    killer = asyncio.create_task(_killer(dep, victims if kill else [], interval_s, stop, rng))
    try:
        tallies = await asyncio.gather(*(one(i) for i in range(conversations)))
    finally:
        stop.set()
        kills = await killer
    total = Tally()
    for t, _ in tallies:
        total.add(t)
    return ChaosResult(total, kills, [d for _, d in tallies], time.monotonic() - started)
