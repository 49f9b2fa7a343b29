"""faster-whisper with nothing of Morgan around it, on one core: what the hardware does.

    .venv/bin/python bench/stt_alone.py CORE N

Loads the STT model as a worker would (pinned to CORE, so one thread), prints
``ready``, waits for a line on stdin, transcribes N utterances back to back and prints
their rate (utterances/s). bench/scale.py starts one, then two at once, on the same
input as its Morgan workers, so Morgan's scaling is printed beside the models' own.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from processors import hardware
from streams.settings import Settings


def main(core: int, n: int) -> None:
    hardware.pin(frozenset({core}))  # before numpy and CTranslate2 make their threads
    from processors import stt
    from testbed.audio import QUESTIONS, silence, speak

    pcms = [silence(200) + speak(p) + silence(200) for p in QUESTIONS]
    model = stt.open_model(Settings(), gpu=False)
    print("ready", flush=True)
    sys.stdin.readline()
    started = time.monotonic()
    for i in range(n):
        stt.transcribe(model, pcms[i % len(pcms)])
    print(f"{n / (time.monotonic() - started):.4f}", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
