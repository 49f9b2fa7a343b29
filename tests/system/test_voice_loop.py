"""The whole voice loop: ``morgan up`` as a person runs it, spoken to over a WebSocket."""

from __future__ import annotations

import asyncio
import base64
import io
import os
import re
import signal
import time
import wave
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from testbed.audio import resample, silence, speak, transcribe
from testbed.morgan_process import MorganUp, VoiceClient

pytestmark = pytest.mark.system


@pytest.fixture(scope="module")
def morgan(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MorganUp]:
    up = MorganUp(tmp_path_factory.mktemp("morgan"), MORGAN_VAD_SILENCE_MS="500")
    try:
        up.wait_ready()
        yield up
    finally:
        code = up.stop()
        assert code == 0, up.log()
        assert up.violations() == [], "a role lacks a permission it needs"


def words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z']+", text.lower()) if len(w) > 3}


async def test_a_spoken_question_gets_a_spoken_answer(morgan: MorganUp) -> None:
    client = await VoiceClient.open(morgan.url)
    question = speak("what color is the sky on a sunny day")
    await client.send_audio(silence(400) + question + silence(1500))
    await client.wait_for(lambda: any(t.complete for t in client.turns.values()))
    turn_id, turn = next((k, t) for k, t in client.turns.items() if t.complete)
    await client.close()

    kinds = [e["type"] for e in turn.events]
    transcript = next(e for e in turn.events if e["type"] == "transcript")
    assert "sky" in transcript["text"].lower() and "sunny" in transcript["text"].lower()
    assert kinds.index("vad.speech_started") < kinds.index("transcript")
    assert kinds.index("reply.delta") < kinds.index("reply.done")
    deltas = "".join(e["text"] for e in turn.events if e["type"] == "reply.delta")
    assert turn.done is not None and deltas == turn.done["text"] and turn.done["sentences"] >= 1
    heard = transcribe(resample(bytes(turn.audio), turn.audio_rate, 16000))
    said = words(turn.done["text"])
    assert said and len(said & words(heard)) >= max(1, len(said) // 3), (said, heard)


async def test_speaking_over_a_reply_cancels_it(morgan: MorganUp) -> None:
    client = await VoiceClient.open(morgan.url)
    story = speak("tell me a long story about a dragon and a knight")
    await client.send_audio(story + silence(800))
    await client.wait_for(lambda: any(t.audio for t in client.turns.values()))
    first_turn = next(k for k, t in client.turns.items() if t.audio)
    await client.send_audio(speak("stop, what time is it") + silence(1200), realtime=1.0)
    await client.wait_for(lambda: client.turns[first_turn].cancelled)
    await client.wait_for(
        lambda: any(t.complete for k, t in client.turns.items() if k != first_turn)
    )
    await client.close()
    cancelled = next(e for e in client.turns[first_turn].events if e["type"] == "reply.cancelled")
    assert cancelled.get("flush") is True


async def test_post_api_text_returns_text_and_a_playable_wav(morgan: MorganUp) -> None:
    async with httpx.AsyncClient(base_url=morgan.url, timeout=120) as http:
        r = await http.post("/api/text", json={"text": "Say hello to my friend Sam."})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["text"].strip()
    with wave.open(io.BytesIO(base64.b64decode(body["audio_base64"]))) as wav:
        assert wav.getnchannels() == 1 and wav.getsampwidth() == 2
        assert wav.getnframes() > wav.getframerate() // 4
        pcm, rate = wav.readframes(wav.getnframes()), wav.getframerate()
    assert words(transcribe(resample(pcm, rate, 16000))) & words(body["text"])


def test_morgan_up_logs_every_part_ready(morgan: MorganUp) -> None:
    out = "".join(morgan.out)
    for part in ("vad", "stt", "llm", "tts", "gateway"):
        assert f"ready: {part}" in out
    assert Path(morgan.url).name  # served on the chosen port


def children(parent: int, needle: str) -> list[int]:
    """PIDs of ``parent``'s children whose command line contains ``needle``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(stat[1]) == parent and needle in cmd:
            found.append(int(proc.name))
    return found


async def test_a_crashed_processor_is_restarted_and_the_next_turn_works(
    morgan: MorganUp,
) -> None:
    [tts] = children(morgan.proc.pid, "processors tts")
    readies = "".join(morgan.err).count("tts ready on")
    os.kill(tts, signal.SIGKILL)
    deadline = time.monotonic() + 120
    while "".join(morgan.err).count("tts ready on") <= readies:
        assert time.monotonic() < deadline, "tts was not restarted"
        await asyncio.sleep(0.2)
    [again] = children(morgan.proc.pid, "processors tts")
    assert again != tts
    async with httpx.AsyncClient(base_url=morgan.url, timeout=120) as http:
        r = await http.post("/api/text", json={"text": "Say hello to my friend Sam."})
    assert r.status_code == 200 and r.json()["audio_base64"]
