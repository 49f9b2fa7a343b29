"""A tiny Morgan client: stream a 16 kHz mono WAV in real time, print the events,
save the spoken reply.

    python examples/client.py question.wav --out reply.wav
    python examples/client.py --text "What is NATS?" --out reply.wav
    python examples/client.py question.wav --url ws://host:8080/ws --api-key KEY

It stops after the first reply whose audio is complete (or after --timeout
seconds) and ends the session. docs/protocol.md describes the messages.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import wave
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

FRAME_MS = 32
RATE = 16000


def read_pcm(path: Path) -> bytes:
    with wave.open(str(path), "rb") as w:
        if (w.getframerate(), w.getsampwidth(), w.getnchannels()) != (RATE, 2, 1):
            raise SystemExit(f"{path}: need 16 kHz 16-bit mono (sox in.wav -r 16000 -c 1 -b 16)")
        return w.readframes(w.getnframes())


async def stream_audio(ws: ClientConnection, pcm: bytes) -> None:
    """Send 32 ms frames at the pace a microphone would, then 1 s of silence."""
    step = RATE * FRAME_MS // 1000 * 2
    pcm += bytes(RATE * 2)
    started = time.monotonic()
    for i, at in enumerate(range(0, len(pcm), step)):
        await ws.send(pcm[at : at + step])
        await asyncio.sleep(max(0.0, started + (i + 1) * FRAME_MS / 1000 - time.monotonic()))


async def receive(ws: ClientConnection, audio: bytearray) -> int:
    """Print events until one turn's reply and all its audio are in; return its rate."""
    done: dict[str, int] = {}
    finished: dict[str, int] = {}
    rate = 22050
    while True:
        msg: dict[str, Any] = json.loads(await ws.recv())
        kind = msg["type"]
        if kind == "audio":
            pcm = await ws.recv()
            assert isinstance(pcm, bytes)
            audio += pcm
            rate = msg["rate"]
            finished[msg["turn"]] = finished.get(msg["turn"], 0) + int(msg["last"])
        elif kind == "reply.delta":
            print(msg["text"], end="", flush=True)
        elif kind == "reply.done":
            print()
            done[msg["turn"]] = msg["sentences"]
        else:
            print(json.dumps(msg))
        if kind == "reply.cancelled":
            done.pop(msg["turn"], None)
        if any(finished.get(turn, 0) >= n for turn, n in done.items()):
            return rate


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wav", nargs="?", type=Path, help="16 kHz 16-bit mono WAV to say")
    parser.add_argument("--text", help="type this turn instead of speaking")
    parser.add_argument("--url", default="ws://127.0.0.1:8080/ws")
    parser.add_argument("--api-key", default="")
    parser.add_argument("--out", type=Path, default=Path("reply.wav"))
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()
    if (args.wav is None) == (args.text is None):
        parser.error("give a WAV file or --text")
    # A header, not ?api_key=: a key in a URL ends up in proxies' access logs.
    auth = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    audio = bytearray()
    async with connect(args.url, additional_headers=auth) as ws:
        start = {"type": "session.start", "rate": RATE, "format": "s16le", "channels": 1}
        await ws.send(json.dumps(start))
        print(await ws.recv())
        if args.text:
            await ws.send(json.dumps({"type": "text", "text": args.text}))
            sender = None
        else:
            sender = asyncio.create_task(stream_audio(ws, read_pcm(args.wav)))
        try:
            rate = await asyncio.wait_for(receive(ws, audio), args.timeout)
        finally:
            if sender is not None:
                sender.cancel()
            await ws.send(json.dumps({"type": "session.end"}))
    with wave.open(str(args.out), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(bytes(audio))
    print(f"wrote {args.out}: {len(audio) / 2 / rate:.2f} s of reply audio")


if __name__ == "__main__":
    asyncio.run(main())
