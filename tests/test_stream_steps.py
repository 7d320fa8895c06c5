"""Streaming model steps of many streams in one engine call - on the engine's threads and in worker
processes - checked against FunASR's own per-stream calls."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import numpy as np
import pytest

from app.engine.funasr_engine import FunasrEngine
from app.engine.loader import ModelLoadError
from app.engine.stream_workers import StreamLost, StreamState, StreamStep, StreamWorkerPool
from tests.helpers import settings_for, utterances

SR = 16000


@pytest.fixture(scope="module")
def pooled_engine(tiny_models):
    """The same models, with live streams' steps in two worker processes."""
    eng = FunasrEngine.load(settings_for(tiny_models, stream_processes=2))
    yield eng
    eng.close()


@pytest.fixture(params=["threads", "processes"])
def any_engine(request, engine, pooled_engine):
    return engine if request.param == "threads" else pooled_engine


def _streams() -> list[tuple[np.ndarray, int]]:
    """(audio, step length in samples): different speech/silence patterns, step sizes and lengths."""
    patterns = [
        (("silence", 0.7), ("speech", 1.8), ("silence", 1.2), ("speech", 1.1), ("silence", 1.0)),
        (("speech", 2.2), ("silence", 1.5), ("speech", 0.9)),
        (("silence", 1.9), ("speech", 1.4), ("silence", 0.9), ("speech", 2.0), ("silence", 0.4)),
        (("silence", 0.3), ("speech", 3.0), ("silence", 1.3)),
        (("silence", 0.5), ("speech", 1.5), ("silence", 1.0)),
    ]
    steps = [3200, 3200, 4800, 16000 + 320, 3200]  # 200 ms (the server's), 300 ms, a second and a bit
    return [(utterances(*p, seed=10 * i), step) for i, (p, step) in enumerate(zip(patterns, steps, strict=True))]


def _reference_vad(engine, audio: np.ndarray, step: int, silence_ms: int) -> list[list[tuple[int, int]]]:
    """What FunASR's own streaming VAD answers, one generate() per step, for one stream alone."""
    cache: dict = {}
    out = []
    for start in range(0, len(audio), step):
        final = start + step >= len(audio)
        kw = {"chunk_size": 200, "disable_pbar": True, "max_end_silence_time": silence_ms}
        result = engine._vad.generate(input=audio[start : start + step], cache=cache, is_final=final, **kw)
        out.append([(int(b), int(e)) for b, e in (result[0].get("value") or [])])
    return out


def _reference_online(engine, audio: np.ndarray, step: int) -> list[str]:
    cache: dict = {}
    out = []
    for start in range(0, len(audio), step):
        final = start + step >= len(audio)
        kw = {"chunk_size": [0, 10, 5], "encoder_chunk_look_back": 4, "decoder_chunk_look_back": 1, "disable_pbar": True}
        result = engine._online.generate(input=audio[start : start + step], cache=cache, is_final=final, **kw)
        out.append(result[0].get("text", "") if result else "")
    return out


async def _feed_together(run, streams: list[tuple[np.ndarray, int]], states: list[StreamState], **step_options) -> list[list]:
    """Each round, one step of every stream that has audio left, all in one engine call."""
    got: list[list] = [[] for _ in streams]
    positions = [0] * len(streams)
    while any(pos < len(audio) for pos, (audio, _) in zip(positions, streams, strict=True)):
        steps, owners = [], []
        for i, (audio, step) in enumerate(streams):
            if positions[i] < len(audio):
                chunk = audio[positions[i] : positions[i] + step]
                positions[i] += step
                steps.append(StreamStep(states[i], chunk, positions[i] >= len(audio), **step_options))
                owners.append(i)
        for i, result in zip(owners, await run(steps), strict=True):
            assert not isinstance(result, Exception), result
            got[i].append(result)
    return got


def test_batched_vad_steps_equal_funasr_per_stream_calls(any_engine, engine, monkeypatch):
    streams = _streams()
    expected = [_reference_vad(engine, audio, step, 500) for audio, step in streams]
    assert any(ev for stream in expected for ev in stream), "the reference found no speech: the test would prove nothing"
    batch_sizes = []
    if any_engine is engine:  # in-process: see that the network really ran once for several streams
        network = engine._vad.model.encoder.forward
        monkeypatch.setattr(engine._vad.model.encoder, "forward", lambda x, cache=None: batch_sizes.append(x.shape[0]) or network(x, cache))
    states = [StreamState() for _ in streams]
    got = asyncio.run(_feed_together(any_engine.vad_stream_steps, streams, states, max_end_silence_ms=500))
    assert got == expected
    if any_engine is engine:
        assert max(batch_sizes) >= 2
        assert all(s.vad == {} for s in states)  # a final step leaves nothing behind
    for state in states:
        any_engine.release_stream(state)


def test_online_steps_of_several_streams_equal_their_calls_alone(any_engine, engine):
    streams = [(utterances(("speech", 2.4), seed=s), 9600) for s in (1, 2, 3)]
    expected = [_reference_online(engine, audio, step) for audio, step in streams]
    assert any(text for texts in expected for text in texts)
    states = [StreamState() for _ in streams]
    assert asyncio.run(_feed_together(any_engine.online_steps, streams, states)) == expected
    for state in states:
        any_engine.release_stream(state)


def test_a_broken_stream_fails_alone(engine):
    audio = utterances(("silence", 0.5), ("speech", 1.5), ("silence", 1.0), seed=3)
    (expected,) = asyncio.run(engine.vad_stream_steps([StreamStep(StreamState(), audio, True, 500)]))
    broken = StreamState(vad={"prev_samples": "not audio"})  # a stream whose state is corrupt
    results = asyncio.run(engine.vad_stream_steps([StreamStep(broken, audio, False, 500), StreamStep(StreamState(), audio, True, 500)]))
    assert isinstance(results[0], Exception)
    assert results[1] == expected and expected


def test_an_empty_final_step_answers_nothing_and_frees_the_stream(engine):
    state = StreamState()
    asyncio.run(engine.vad_stream_steps([StreamStep(state, utterances(("speech", 0.6), seed=5), False, 500)]))
    assert state.vad  # the stream has state
    (result,) = asyncio.run(engine.vad_stream_steps([StreamStep(state, np.zeros(0, np.float32), True, 500)]))
    assert result == [] and state.vad == {}


def test_worker_processes_hold_each_stream_until_it_ends(pooled_engine):
    pool = pooled_engine.stream_pool
    before = pool.streams_held()
    states = [StreamState() for _ in range(6)]
    audio = utterances(("speech", 1.0), seed=7)
    asyncio.run(pooled_engine.vad_stream_steps([StreamStep(s, audio, False) for s in states]))
    assert {s.worker for s in states} == {0, 1}  # spread over both workers
    held = pool.streams_held()
    assert sum(held) - sum(before) == 6
    for state in states:
        pooled_engine.release_stream(state)
    assert pool.streams_held() == before
    assert pooled_engine.worker_gpu_memory() == {}  # the workers report no GPU memory on this CPU machine


def test_a_dead_worker_ends_its_streams_and_is_replaced(tiny_models):
    eng = FunasrEngine.load(settings_for(tiny_models, stream_processes=1, online_model="none"))
    try:
        audio = utterances(("speech", 1.0), seed=8)
        old = StreamState()
        assert not isinstance(asyncio.run(eng.vad_stream_steps([StreamStep(old, audio, False)]))[0], Exception)
        (pid,) = eng.stream_pool.pids()
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
        (result,) = asyncio.run(eng.vad_stream_steps([StreamStep(old, audio, False)]))
        assert isinstance(result, StreamLost)  # the stream's state died with the process
        (again,) = asyncio.run(eng.vad_stream_steps([StreamStep(old, audio, False)]))
        assert isinstance(again, StreamLost)  # and the stream stays lost
        fresh = StreamState()
        (ok,) = asyncio.run(eng.vad_stream_steps([StreamStep(fresh, audio, False)]))
        assert not isinstance(ok, Exception)  # new streams go on, in a new process
        assert eng.stream_pool.pids() != [pid]
    finally:
        eng.close()


def test_with_stream_workers_only_they_hold_the_online_model(pooled_engine):
    assert pooled_engine._online is None and pooled_engine.has_online
    assert pooled_engine.report.tensors_verified["online"] > 10  # verified in the worker, as the server would


def test_an_online_model_that_does_not_load_fails_the_start_with_the_reason(tiny_models, tmp_path):
    import gc
    import shutil

    import torch

    from app.engine.loader import ModelLoadError

    broken = tmp_path / "online"
    shutil.copytree(tiny_models.online, broken)
    state = torch.load(broken / "model.pt")
    del state[next(k for k in state if k.startswith("decoder."))]
    torch.save(state, broken / "model.pt")
    gc.freeze()  # stands for the models of a version still serving (a failed hot reload's old one)
    with pytest.raises(ModelLoadError, match="1 tensors missing"):
        FunasrEngine.load(settings_for(tiny_models, online_model=str(broken), stream_processes=1))
    assert gc.get_freeze_count() > 0  # the failed engine was closed without thawing what serves


def test_a_stream_worker_killed_while_loading_fails_the_start_with_one_line(tiny_models):
    pool = StreamWorkerPool(str(tiny_models.vad), None, "cpu", 1, True)  # spawns the worker, which loads for seconds
    try:
        deadline = time.monotonic() + 30
        while not pool.pids() and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(pool.pids()[0], signal.SIGKILL)
        with pytest.raises(ModelLoadError, match="streaming worker process 0 died while loading its models"):
            pool.warm_up(utterances(("speech", 0.5)))
    finally:
        pool.close()
