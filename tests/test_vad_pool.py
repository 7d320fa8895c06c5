"""Whole-recording VAD in worker processes: same spans as on the thread, survives a dead worker, leaves nothing behind."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from app.config import ConfigError
from app.engine.funasr_engine import FunasrEngine
from app.engine.loader import ModelLoadError
from app.engine.vad_pool import VadProcessPool
from tests.helpers import settings_for, speechlike, utterances


@pytest.fixture(scope="module")
def pooled_engine(tiny_models):
    engine = FunasrEngine.load(settings_for(tiny_models, vad_processes=2, online_model="none", inference_nice=3))
    yield engine
    engine.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_processes_give_the_spans_the_thread_gives(pooled_engine):
    assert pooled_engine.vad_pool is not None and len(pooled_engine.vad_pool.pids()) == 2
    recordings = [
        utterances(("silence", 0.5), ("speech", 1.5), ("silence", 2.0), ("speech", 1.0), ("silence", 0.5)),
        speechlike(3.0, seed=4),
        np.zeros(16000, dtype=np.float32),
    ]

    async def spans(max_end_silence_ms):
        return await asyncio.gather(*(pooled_engine.detect_speech(r, max_end_silence_ms) for r in recordings))

    for setting in (None, 300, None):  # a per-request setting must not stick to a worker's model
        pooled = asyncio.run(spans(setting))
        on_thread = [pooled_engine._detect_speech(r, setting) for r in recordings]
        assert pooled == on_thread
    assert len(pooled[0]) == 2 and pooled[2] == []


def test_a_killed_worker_fails_one_call_and_the_pool_comes_back(pooled_engine):
    audio = speechlike(1.0)
    expected = pooled_engine._detect_speech(audio, None)
    victim = next(iter(pooled_engine.vad_pool.pids()))
    os.kill(victim, signal.SIGKILL)

    async def after_the_kill():
        outcomes = []
        deadline = time.monotonic() + 30
        # The pool learns of the death from its management thread; calls meanwhile may still succeed on the other worker.
        while victim in pooled_engine.vad_pool.pids() and time.monotonic() < deadline:
            try:
                outcomes.append(await pooled_engine.detect_speech(audio, None))
            except RuntimeError as e:
                outcomes.append(str(e))
            await asyncio.sleep(0.05)
        return outcomes, [await pooled_engine.detect_speech(audio, None) for _ in range(3)]

    during, after = asyncio.run(after_the_kill())
    assert victim not in pooled_engine.vad_pool.pids()
    assert after == [expected] * 3
    # Only calls that met the dead worker fail, with a message that says what happened.
    assert all(o == expected or re.search("VAD worker process [0-9]+ died", o) for o in during)
    assert sum(o != expected for o in during) <= 2


def test_closing_the_engine_ends_its_worker_processes(tiny_models):
    engine = FunasrEngine.load(settings_for(tiny_models, vad_processes=1, online_model="none"))
    pids = engine.vad_pool.pids()
    assert pids and all(_alive(p) for p in pids)
    engine.close()
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids)


def test_server_with_vad_in_processes_answers_as_the_threaded_one(server, make_server):
    from app.client import Client

    pooled = make_server(vad_processes=1)
    assert pooled.pipeline.engine.vad_pool is not None and server.pipeline.engine.vad_pool is None
    audio = utterances(("speech", 1.2), ("silence", 1.5), ("speech", 1.0))
    with Client(pooled.target) as a, Client(server.target) as b:
        got, reference = a.transcribe(audio, sample_rate_hz=16000), b.transcribe(audio, sample_rate_hz=16000)
    assert got.text and got.sentences
    assert [(s.text, s.start_ms, s.end_ms) for s in got.sentences] == [(s.text, s.start_ms, s.end_ms) for s in reference.sentences]


def test_worker_processes_run_at_the_inference_nice_beside_model_threads(pooled_engine):
    # The offline models are on threads here, so (idle_worker_processes auto) the VAD workers' main
    # threads, which run the model, sit inference_nice (3, above) below this process, not under SCHED_IDLE.
    # Every thread: numpy's BLAS threads start when the worker unpickles its task, before the load.
    base = os.getpriority(os.PRIO_PROCESS, 0)
    threads = [int(tid) for pid in pooled_engine.vad_pool.pids() for tid in os.listdir(f"/proc/{pid}/task")]
    assert {os.getpriority(os.PRIO_PROCESS, tid) for tid in threads} == {min(19, base + 3)}
    assert {os.sched_getscheduler(tid) for tid in threads} == {os.SCHED_OTHER}


def test_inference_nice_is_checked(tiny_models):
    with pytest.raises(ConfigError, match="inference_nice"):
        settings_for(tiny_models, inference_nice=20)


def test_vad_processes_setting_is_checked(tiny_models):
    with pytest.raises(ConfigError, match="vad_processes"):
        settings_for(tiny_models, vad_processes=-2)


def test_a_vad_worker_that_cannot_load_fails_the_start_with_one_line_and_is_retried(tmp_path, monkeypatch):
    from app.engine import worker_process
    from app.engine.worker_process import ModelWorkerLost

    (tmp_path / "config.yaml").write_text("model: NoSuchVadModel\n")  # a directory FunASR cannot load
    pool = VadProcessPool(str(tmp_path), 1, True)
    try:
        with pytest.raises(ModelLoadError, match="failed to load in a VAD worker process") as err:
            pool.warm_up(speechlike(0.5))
        assert "\n" not in str(err.value)
        # Serving (a worker restarted after a death that cannot load): requests are told to retry later,
        # and a new process tries the load again once LOAD_RETRY_S has passed.
        first = pool.pids()
        with pytest.raises(ModelWorkerLost, match="could not load its model"):
            asyncio.run(pool.detect_speech(speechlike(0.5), None))
        assert pool.pids() == first
        monkeypatch.setattr(worker_process, "LOAD_RETRY_S", 0.0)
        with pytest.raises(ModelWorkerLost, match="could not load its model"):
            asyncio.run(pool.detect_speech(speechlike(0.5), None))
        assert pool.pids() and pool.pids() != first
    finally:
        pool.close()


def test_a_vad_worker_killed_while_loading_fails_the_start_with_one_line(tiny_models):
    pool = VadProcessPool(str(tiny_models.vad), 1, True)
    try:
        with ThreadPoolExecutor(1) as starter:
            warming = starter.submit(pool.warm_up, speechlike(0.5))  # spawns the worker, which loads for seconds
            deadline = time.monotonic() + 30
            while not pool.pids() and time.monotonic() < deadline:
                time.sleep(0.01)
            os.kill(next(iter(pool.pids())), signal.SIGKILL)
            with pytest.raises(ModelLoadError, match="VAD worker process 0 died while loading its model"):
                warming.result(timeout=60)
    finally:
        pool.close()


def test_server_answers_unavailable_when_a_vad_worker_dies(make_server):
    import grpc

    from tests.helpers import recognize_through_a_worker_death

    srv = make_server(vad_processes=1, online_model="none")
    pool = srv.pipeline.engine.vad_pool
    (victim,) = pool.pids()
    before, after, failed = recognize_through_a_worker_death(srv.target, lambda: os.kill(victim, signal.SIGKILL), lambda: victim not in pool.pids())
    assert after == before and len(before) > 0
    # The call that met the dead worker (one always does: the only one) is told to retry, never INTERNAL.
    assert failed and all(code is grpc.StatusCode.UNAVAILABLE and "VAD worker process 0 died" in details for code, details in failed)


def test_calls_avoid_a_vad_worker_that_could_not_load(tiny_models, tmp_path):
    import shutil

    vad = tmp_path / "vad"
    shutil.copytree(tiny_models.vad, vad)
    pool = VadProcessPool(str(vad), 2, True)
    try:
        audio = speechlike(1.0)
        pool.warm_up(audio)
        expected = asyncio.run(pool.detect_speech(audio, None))
        vad.rename(tmp_path / "moved")  # the model files are gone when the worker is restarted
        victim = sorted(pool.pids())[0]
        os.kill(victim, signal.SIGKILL)

        async def calls(n):
            outcomes = []
            for _ in range(n):
                try:
                    outcomes.append(await pool.detect_speech(audio, None))
                except RuntimeError as e:
                    outcomes.append(str(e))
                await asyncio.sleep(0.05)
            return outcomes

        # Calls that met the dead worker or its failing reload are told to retry; once the reload
        # has failed, every call goes to the worker that still has its model.
        deadline = time.monotonic() + 60
        while not any(w.load_failed() for w in pool._workers) and time.monotonic() < deadline:
            asyncio.run(calls(1))
        assert any(w.load_failed() for w in pool._workers)
        assert asyncio.run(calls(6)) == [expected] * 6
    finally:
        pool.close()


def test_calls_avoid_a_vad_worker_that_is_still_reloading(tiny_models):
    pool = VadProcessPool(str(tiny_models.vad), 2, True)
    stopped = None
    try:
        audio = speechlike(1.0)
        pool.warm_up(audio)
        expected = asyncio.run(pool.detect_speech(audio, None))
        reloading = pool._workers[0]
        reloading.restart(reloading._executor, "was replaced by the test")
        stopped = reloading.pid()
        os.kill(stopped, signal.SIGSTOP)  # holds the new process in its load for as long as the test needs

        async def calls(n):
            return [await asyncio.wait_for(pool.detect_speech(audio, None), 30) for _ in range(n)]

        # In turn, two of these would go to the loading process and wait for its load.
        assert asyncio.run(calls(4)) == [expected] * 4
        assert not reloading.ready()
        os.kill(stopped, signal.SIGCONT)
        stopped = None
        reloading.wait_loaded()
        assert asyncio.run(calls(2)) == [expected] * 2
    finally:
        if stopped is not None:
            os.kill(stopped, signal.SIGCONT)  # a stopped process would hold up the pool's close
        pool.close()
