"""How long a dead worker's message waits before a survivor handles it, in one run.

Two STT workers (real processes, real tiny.en) on a fresh nats-server. The second is
frozen (SIGSTOP) while the first takes an utterance; then the second is thawed and
the first is SIGKILLed mid-work. Timed: the kill -> the survivor's transcript on the
bus, less the survivor's own transcription time (``stt_ms`` in the transcript): the
time the message waited for a new owner. Run with the kind's declared ack wait (3 s,
heartbeated every second while a message is handled) and with the 30 s
``MORGAN_WORK_ACK_WAIT_S`` Morgan used before, alternating; prints both and the ratio.

    .venv/bin/python bench/redelivery.py --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nats.aio.msg import Msg

from schemas import Subjects, Transcript, Utterance, decode
from streams import bus, definitions, embedded
from streams.settings import Settings
from testbed.audio import silence, speak
from testbed.stats import pct

ROOT = Path(__file__).resolve().parents[1]
SENTENCE = "please tell me a long story about a brave little fox who lived in the woods"


def worker(nats_url: str, data: Path, ack_wait: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "MORGAN_NATS_URL": nats_url,
        "MORGAN_DATA_DIR": str(data),
        "MORGAN_TIERS": "cpu",
        "MORGAN_STT_THREADS": "1",
        "MORGAN_WORK_ACK_WAIT_S": ack_wait,
        "MORGAN_LOG_FORMAT": "text",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "processors", "stt"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def wait_ready(proc: subprocess.Popen[bytes]) -> None:
    assert proc.stderr is not None
    for line in proc.stderr:
        if b" ready on " in line:
            return
    raise RuntimeError("worker exited before it was ready")


async def one(ack_wait: str, pcm: bytes, tmp: Path, n: int) -> float:
    """Seconds from the kill of the worker holding the utterance until the survivor
    started on it (its transcript's arrival less its transcription time)."""
    async with await embedded.start(store_dir=tmp / f"nats{n}") as srv:
        settings = Settings(nats_url=srv.url, data_dir=tmp / f"data{n}")
        nc = await bus.connect(settings, "bench")
        js = nc.jetstream()
        await definitions.apply(js, settings)
        first, second = (worker(srv.url, tmp / f"w{n}{i}", ack_wait) for i in range(2))
        try:
            await asyncio.gather(*(asyncio.to_thread(wait_ready, w) for w in (first, second)))
            second.send_signal(signal.SIGSTOP)
            await asyncio.sleep(1.5)  # its last pull request (1 s) expires: none is left
            done: asyncio.Queue[float] = asyncio.Queue()

            async def on_event(raw: Msg) -> None:
                event = decode(raw.headers, raw.data)
                if isinstance(event, Transcript):
                    await done.put(time.monotonic() - event.stt_ms / 1000)

            await nc.subscribe(Subjects().events(f"r{n}", "transcript"), cb=on_event)
            utt = Utterance(f"r{n}", "u1", rate=16000, first_seq=1, last_seq=2, pcm=pcm)
            await bus.publish(js, Subjects().work("stt", "cpu"), utt, msg_id=f"r{n}.u1.utt")
            while (await js.consumer_info(definitions.WORK, "stt-cpu")).num_ack_pending != 1:
                await asyncio.sleep(0.01)  # the first worker holds it now
            second.send_signal(signal.SIGCONT)
            first.kill()
            killed = time.monotonic()
            return await asyncio.wait_for(done.get(), 120) - killed
        finally:
            for w in (first, second):
                w.kill()
                w.wait()
            await nc.close()


async def main(rounds: int) -> None:
    pcm = silence(200) + speak(SENTENCE) * 3 + silence(200)  # a few seconds of work
    waits: dict[str, list[float]] = {"30": [], "0": []}
    with tempfile.TemporaryDirectory() as tmp:
        for n in range(rounds):
            for ack_wait in waits:  # alternate: drift of the machine hits both alike
                waits[ack_wait].append(await one(ack_wait, pcm, Path(tmp), n * 2 + len(ack_wait)))
    before, now = waits["30"], waits["0"]
    print(f"utterance: {len(pcm) / 32000:.1f} s of audio; {rounds} kills each")
    print(f"kill -> a survivor starts on it, 30 s ack wait (before): p50 {pct(before, 0.5):.2f} s")
    print(f"kill -> a survivor starts on it, declared 3 s ack wait: p50 {pct(now, 0.5):.2f} s")
    print(f"ratio now/before: {pct(now, 0.5) / pct(before, 0.5):.2f}")
    print("each (s): before " + ", ".join(f"{w:.2f}" for w in before))
    print("each (s): now    " + ", ".join(f"{w:.2f}" for w in now))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--rounds", type=int, default=3)
    asyncio.run(main(p.parse_args().rounds))
