"""The result cache on the real server: hits skip the engine, bounds hold, single-flight, shared Redis."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time

import grpc
import numpy as np
import pytest

from app import metrics
from app.core.cache import MemoryStore, ResultCache, cache_key
from app.core.text import Sentence, Word
from app.gen.paraformer.asr.v1 import asr_pb2, asr_pb2_grpc
from tests.helpers import encode, speechlike, utterances

pytestmark = pytest.mark.integration

# Integer samples, so that every container holds exactly the same audio (libsndfile's float-to-int
# conversion differs between WAV and FLAC writers).
AUDIO = (utterances(("silence", 0.2), ("speech", 1.5), ("silence", 0.2), seed=11) * 32767).astype(np.int16)


def recognize(target, content: bytes, **config) -> asr_pb2.RecognizeResponse:
    with grpc.insecure_channel(target) as channel:
        request = asr_pb2.RecognizeRequest(config=asr_pb2.RecognitionConfig(**config), audio=asr_pb2.RecognitionAudio(content=content))
        return asr_pb2_grpc.RecognizerStub(channel).Recognize(request, timeout=30)


def counter(model: str, outcome: str) -> float:
    return metrics.CACHE_REQUESTS.labels(model, outcome)._value.get()


def test_identical_audio_is_answered_from_the_cache(make_server):
    srv = make_server(cache_max_bytes=1_000_000, model_name="cached")
    engine = srv.pipeline.engine
    first = recognize(srv.target, encode(AUDIO), enable_word_time_offsets=True)
    calls = engine.asr_calls
    hits = counter("cached", "hit")
    again = recognize(srv.target, encode(AUDIO), enable_word_time_offsets=True)
    as_flac = recognize(srv.target, encode(AUDIO, fmt="FLAC"), enable_word_time_offsets=True)  # another container
    assert engine.asr_calls == calls  # the engine was not called
    assert counter("cached", "hit") == hits + 2
    assert list(again.results) == list(first.results) == list(as_flac.results)
    # Settings that change the result are part of the key; skip_cache bypasses the cache.
    misses = counter("cached", "miss")
    recognize(srv.target, encode(AUDIO), enable_word_time_offsets=False)
    assert counter("cached", "miss") == misses + 1 and engine.asr_calls > calls
    calls = engine.asr_calls
    recognize(srv.target, encode(AUDIO), enable_word_time_offsets=True, skip_cache=True)
    assert engine.asr_calls > calls and counter("cached", "miss") == misses + 1


def test_concurrent_identical_requests_are_computed_once(make_server):
    srv = make_server(cache_max_bytes=1_000_000, model_name="flight", max_batch_wait_ms=20)
    engine = srv.pipeline.engine
    content = encode(utterances(("speech", 1.2), seed=12))
    recognize(srv.target, encode(speechlike(1.0, seed=13)), skip_cache=True)  # how many calls one request takes
    per_request = engine.asr_calls
    calls = engine.asr_calls
    with grpc.insecure_channel(srv.target) as channel:
        stub = asr_pb2_grpc.RecognizerStub(channel)
        futures = [stub.Recognize.future(asr_pb2.RecognizeRequest(audio=asr_pb2.RecognitionAudio(content=content)), timeout=30) for _ in range(8)]
        texts = {f.result().transcript for f in futures}
    assert len(texts) == 1
    assert engine.asr_calls - calls <= per_request  # one computation, not eight
    assert counter("flight", "shared") + counter("flight", "hit") >= 7


def test_memory_budget_and_ttl_are_respected():
    async def go():
        store = MemoryStore(max_bytes=2000, ttl_s=0.2, model="bound")
        cache = ResultCache(store, "bound")
        sentence = [Sentence("字" * 50, 0, 1000, (Word("字", 0, 10),))]

        async def compute():
            return sentence

        for i in range(40):
            await cache.get_or_compute(cache_key(np.full(100, i / 100, np.float32), "x"), compute)
            assert store.bytes <= 2000
        evictions = metrics.CACHE_EVICTIONS.labels("bound")._value.get()
        kept = len(store)
        key = cache_key(np.full(100, 39 / 100, np.float32), "x")
        _, hit = await cache.get_or_compute(key, compute)
        await asyncio.sleep(0.25)
        _, hit_after_ttl = await cache.get_or_compute(key, compute)
        return evictions, kept, hit, hit_after_ttl

    evictions, kept, hit, hit_after_ttl = asyncio.run(go())
    assert evictions >= 30 and 0 < kept < 40
    assert hit and not hit_after_ttl


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def redis_url(tmp_path):
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is missing: run `bash scripts/setup.sh` (it installs Debian's redis-server)")
    port = _free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)


def test_replicas_share_results_through_redis(make_server, redis_url):
    a = make_server(cache_redis_url=redis_url, model_name="shared")
    b = make_server(cache_redis_url=redis_url, model_name="shared")
    content = encode(speechlike(1.3, seed=21))
    first = recognize(a.target, content)
    calls_b = b.pipeline.engine.asr_calls
    second = recognize(b.target, content)
    assert second.transcript == first.transcript
    assert b.pipeline.engine.asr_calls == calls_b  # replica B answered from what A computed


def test_a_redis_outage_does_not_fail_recognition(make_server):
    srv = make_server(cache_redis_url=f"redis://127.0.0.1:{_free_port()}/0", model_name="no-redis")
    assert recognize(srv.target, encode(speechlike(1.0, seed=22))).transcript
