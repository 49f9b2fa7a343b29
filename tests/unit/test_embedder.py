"""all-MiniLM-L6-v2 from the installed wheel (no hub): vectors that mean what they say."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator

import pytest

from store.longterm import DIMENSIONS, Embedder


@pytest.fixture(scope="module")
def embedder() -> Iterator[Embedder]:
    model = asyncio.run(Embedder.load())
    yield model
    model.close()


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


async def test_paraphrases_are_closer_than_unrelated_sentences(embedder: Embedder) -> None:
    sister, name, weather = await embedder.embed(
        ["my sister is called Ada", "what is my sister's name?", "it will rain in Paris tomorrow"]
    )
    assert cosine(sister, name) > cosine(sister, weather) + 0.2
    assert cosine(sister, name) > cosine(name, weather) + 0.2


async def test_each_text_gets_one_unit_vector_of_384_dimensions(embedder: Embedder) -> None:
    vectors = await embedder.embed(["hello", "good morning", "the cat sat on the mat"])
    assert [len(v) for v in vectors] == [DIMENSIONS] * 3
    assert all(math.isclose(math.hypot(*v), 1.0, abs_tol=1e-4) for v in vectors)
    assert await embedder.embed([]) == []


async def test_the_event_loop_runs_while_the_model_computes(embedder: Embedder) -> None:
    ticks = 0
    work = asyncio.create_task(embedder.embed(["a longer sentence to embed"] * 64))
    while not work.done():
        ticks += 1
        await asyncio.sleep(0.005)
    assert len(await work) == 64
    assert ticks > 3  # a model run on the loop itself would finish within one tick
