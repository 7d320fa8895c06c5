"""The result cache: identical audio with identical settings is answered without the model.

Key: SHA-256 of the decoded 16 kHz PCM, quantised to 16 bits (so the same audio in another
container hits), plus everything that changes the result (model name, punctuation, word timings,
hotwords, engine options). Concurrent identical requests are computed once (single-flight).

Two stores behind one interface: an in-process LRU bounded in bytes, and Redis for many replicas.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Protocol

import numpy as np

from app import metrics
from app.core.text import Sentence, Word

log = logging.getLogger(__name__)


def cache_key(samples: np.ndarray, fingerprint: str) -> str:
    pcm = np.round(np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes()
    digest = hashlib.sha256(pcm)
    digest.update(b"\0" + fingerprint.encode())
    return digest.hexdigest()


def encode_sentences(sentences: list[Sentence]) -> bytes:
    return json.dumps([asdict(s) for s in sentences], ensure_ascii=False, separators=(",", ":")).encode()


def decode_sentences(data: bytes) -> list[Sentence]:
    return [Sentence(s["text"], s["start_ms"], s["end_ms"], tuple(Word(w["text"], w["start_ms"], w["end_ms"]) for w in s["words"])) for s in json.loads(data)]


class CacheStore(Protocol):
    name: str

    async def get(self, key: str) -> bytes | None: ...

    async def put(self, key: str, value: bytes) -> None: ...

    async def close(self) -> None: ...


class MemoryStore:
    """LRU bounded by the bytes of its values, with a TTL."""

    name = "memory"

    def __init__(self, max_bytes: int, ttl_s: float, model: str):
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self.model = model
        self.bytes = 0
        self._items: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    async def get(self, key: str) -> bytes | None:
        item = self._items.get(key)
        if item is None:
            return None
        expires, value = item
        if time.monotonic() >= expires:
            self._drop(key)
            return None
        self._items.move_to_end(key)
        return value

    async def put(self, key: str, value: bytes) -> None:
        cost = len(value) + len(key)
        if cost > self.max_bytes:
            return
        if key in self._items:
            self._drop(key)
        self._items[key] = (time.monotonic() + self.ttl_s, value)
        self.bytes += cost
        while self.bytes > self.max_bytes:
            oldest = next(iter(self._items))
            self._drop(oldest)
            metrics.CACHE_EVICTIONS.labels(self.model).inc()
        metrics.CACHE_BYTES.labels(self.model).set(self.bytes)

    def _drop(self, key: str) -> None:
        _, value = self._items.pop(key)
        self.bytes -= len(value) + len(key)
        metrics.CACHE_BYTES.labels(self.model).set(self.bytes)

    def __len__(self) -> int:
        return len(self._items)

    async def close(self) -> None:
        self._items.clear()
        self.bytes = 0


class RedisStore:
    """A cache shared by every replica. Redis bounds memory itself (maxmemory + an LRU policy)."""

    name = "redis"

    def __init__(self, url: str, ttl_s: float, prefix: str = "paraformer-asr:"):
        import redis.asyncio as redis

        self._client = redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self.ttl_s = ttl_s
        self.prefix = prefix

    async def get(self, key: str) -> bytes | None:
        try:
            return await self._client.get(self.prefix + key)
        except Exception as e:  # a cache outage must not fail recognition
            log.warning("redis cache unavailable on get (%s); recognizing without it", type(e).__name__)
            return None

    async def put(self, key: str, value: bytes) -> None:
        try:
            await self._client.set(self.prefix + key, value, ex=max(1, int(self.ttl_s)))
        except Exception as e:
            log.warning("redis cache unavailable on put (%s)", type(e).__name__)

    async def close(self) -> None:
        await self._client.aclose()


class ResultCache:
    """Lookup, single-flight computation and store, with hit/miss metrics."""

    def __init__(self, store: CacheStore, model: str):
        self.store = store
        self.model = model
        self._inflight: dict[str, asyncio.Future] = {}

    async def get_or_compute(self, key: str, compute: Callable[[], Awaitable[list[Sentence]]]) -> tuple[list[Sentence], bool]:
        """Returns (sentences, from_cache). Concurrent callers with the same key share one computation."""
        shared = self._inflight.get(key)
        if shared is not None:
            try:
                sentences = await asyncio.shield(shared)
            except asyncio.CancelledError:
                if asyncio.current_task().cancelling():
                    raise
                # The caller computing it failed or went away: compute for ourselves.
                return await compute(), False
            metrics.CACHE_REQUESTS.labels(self.model, "shared").inc()
            return sentences, True
        cached = await self.store.get(key)
        if cached is not None:
            metrics.CACHE_REQUESTS.labels(self.model, "hit").inc()
            return decode_sentences(cached), True
        metrics.CACHE_REQUESTS.labels(self.model, "miss").inc()
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            sentences = await compute()
        except BaseException:
            future.cancel()  # waiters compute for themselves; nothing is stored
            raise
        finally:
            self._inflight.pop(key, None)
        future.set_result(sentences)
        await self.store.put(key, encode_sentences(sentences))
        return sentences, False

    async def close(self) -> None:
        await self.store.close()
