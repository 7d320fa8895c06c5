"""The ASR and punctuation models in worker processes (model_processes): the same results as on
threads, readable errors across the process boundary, a dead worker fails one call and comes back."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time

import grpc
import numpy as np
import pytest

from app.config import ConfigError
from app.engine.funasr_engine import GEMM_BOUND_WEIGHT_BYTES, FunasrEngine
from app.engine.loader import ModelLoadError
from app.engine.model_process import ModelWorkerLost
from tests.helpers import settings_for, speechlike

POISON_SAMPLES = 12_345  # a segment of exactly this length makes poison_hook raise


def poison_hook(segments):
    """A fault hook the worker process can import (a lambda would not pickle)."""
    if any(len(s) == POISON_SAMPLES for s in segments):
        raise ValueError("poisoned segment")


@pytest.fixture(scope="module")
def engines(tiny_models):
    threaded = FunasrEngine.load(settings_for(tiny_models, online_model="none"))
    in_processes = FunasrEngine.load(settings_for(tiny_models, online_model="none", model_processes="on", idle_worker_processes="on"))
    yield threaded, in_processes
    threaded.close()
    in_processes.close()


def _segments() -> list[np.ndarray]:
    return [speechlike(seconds, seed=seed) for seed, seconds in enumerate((0.6, 1.0, 1.7, 2.3, 0.9))]


async def _recognise(engine: FunasrEngine, segments: list[np.ndarray]):
    hypotheses = await engine.transcribe(segments)
    marks = await engine.punctuate_many([list(h.tokens) for h in hypotheses])
    return hypotheses, marks


def test_processes_give_what_the_threads_give(engines):
    threaded, in_processes = engines
    assert set(in_processes._processes) == {"asr", "punc"} and not in_processes._calls
    pids = {p.pid() for p in in_processes._processes.values()}
    assert None not in pids and os.getpid() not in pids and len(pids) == 2
    segments = _segments()
    got = asyncio.run(_recognise(in_processes, segments))
    assert got == asyncio.run(_recognise(threaded, segments))
    hypotheses, marks = got
    assert len({h.tokens for h in hypotheses}) > 1  # distinct inputs, distinct outputs: not one answer for all
    assert all(m is not None and len(m) == len(h.tokens) for h, m in zip(hypotheses, marks, strict=True))
    # One at a time, each segment gets what it got in the batch (the results come back in order).
    alone = [asyncio.run(in_processes.transcribe([s]))[0] for s in segments]
    assert alone == hypotheses


def test_a_text_part_way_through_punctuation_goes_to_the_process_and_back(engines):
    from app.engine.punctuation import TextProgress

    threaded, in_processes = engines
    hypotheses = asyncio.run(threaded.transcribe(_segments()))
    long = [t for h in hypotheses for t in h.tokens] * 8  # several rounds of 20 words
    (expected,) = asyncio.run(threaded.punctuate_many([long]))

    async def in_steps():
        (item,), calls = await in_processes.punctuate_many([long], max_rounds=1), 1
        while isinstance(item, TextProgress):
            (item,) = await in_processes.punctuate_many([item], max_rounds=1)
            calls += 1
        return item, calls

    assert len(long) > 40
    got, calls = asyncio.run(in_steps())
    assert got == expected and calls > 2


def test_worker_processes_run_under_sched_idle_every_thread(engines):
    # The threads torch started for the warm-up inherit the policy. ("auto" would leave it off here:
    # the engines of these tests keep the VAD on a thread, see the next test.)
    _, in_processes = engines
    for process in in_processes._processes.values():
        threads = [int(tid) for tid in os.listdir(f"/proc/{process.pid()}/task")]
        assert {os.sched_getscheduler(tid) for tid in threads} == {os.SCHED_IDLE}
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the server's own threads keep the normal policy


def test_worker_processes_go_idle_by_default_only_when_no_model_is_on_a_server_thread():
    from app.engine.funasr_engine import every_model_in_a_process

    roles = {"asr": "asr-dir", "vad": "vad-dir", "punc": "punc-dir", "online": "online-dir"}
    assert every_model_in_a_process(roles, True, 1, 1)
    assert not every_model_in_a_process(roles, False, 1, 1)  # ASR and punctuation on threads
    assert not every_model_in_a_process(roles, True, 0, 1)  # whole-recording VAD on a thread
    assert not every_model_in_a_process(roles, True, 1, 0)  # live streams' steps on threads
    assert not every_model_in_a_process({**roles, "vad": "none"}, True, 1, 0)  # the online model's steps, still
    assert every_model_in_a_process({**roles, "vad": "none", "online": "none"}, True, 0, 0)  # nothing left to put on a thread


def test_a_model_error_in_the_worker_reaches_the_caller_and_the_worker_goes_on(engines):
    _, in_processes = engines
    good = speechlike(1.0, seed=9)
    expected = asyncio.run(in_processes.transcribe([good]))
    in_processes.fault_hook = poison_hook
    try:
        with pytest.raises(RuntimeError, match="ValueError: poisoned segment"):
            asyncio.run(in_processes.transcribe([good, speechlike(POISON_SAMPLES / 16000, seed=3)]))
        assert asyncio.run(in_processes.transcribe([good])) == expected
    finally:
        in_processes.fault_hook = None


def test_a_killed_worker_fails_its_call_and_comes_back(engines):
    _, in_processes = engines
    worker = in_processes._processes["asr"]
    segment = speechlike(1.2, seed=5)
    expected = asyncio.run(in_processes.transcribe([segment]))
    victim = worker.pid()
    os.kill(victim, signal.SIGKILL)

    async def after_the_kill():
        lost = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                result = await in_processes.transcribe([segment])
            except ModelWorkerLost as e:
                lost.append(str(e))
                continue
            if worker.pid() not in (None, victim):
                return lost, result
            await asyncio.sleep(0.05)
        raise AssertionError("the worker was not replaced within 60 s")

    lost, result = asyncio.run(after_the_kill())
    assert lost == ["the asr model's worker process died during this call; it is being restarted, retry"]
    assert result == expected
    assert worker.pid() != victim


def test_a_model_that_fails_to_load_in_its_worker_fails_the_start_with_one_line(tiny_models, tmp_path):
    import shutil

    broken = tmp_path / "asr"
    shutil.copytree(tiny_models.asr, broken)
    (broken / "model.pt").unlink()
    with pytest.raises(ModelLoadError, match="has no weights file") as err:
        FunasrEngine.load(settings_for(tiny_models, asr_model=str(broken), online_model="none", model_processes="on"))
    assert "\n" not in str(err.value)


def test_a_worker_killed_while_loading_fails_the_start_with_one_line(tiny_models):
    from app.engine.model_process import ModelProcess

    process = ModelProcess("asr", str(tiny_models.asr), "cpu", 1, True)
    try:
        os.kill(process.pid(), signal.SIGKILL)  # spawned at once; loading takes seconds (importing torch)
        with pytest.raises(ModelLoadError, match="asr model's worker process died while loading its model"):
            process.wait_loaded()
    finally:
        process.close()


def test_auto_runs_a_large_asr_model_in_its_process_on_cpu(engines, tiny_models, tmp_path):
    # The tiny model, made "large" by a sparse weight file that FunASR never reads.
    asr = tmp_path / "asr"
    shutil.copytree(tiny_models.asr, asr)
    with open(asr / "padding.bin", "wb") as padding:
        padding.truncate(GEMM_BOUND_WEIGHT_BYTES)
    engine = FunasrEngine.load(settings_for(tiny_models, asr_model=str(asr), online_model="none", model_processes="auto"))
    try:
        assert set(engine._processes) == {"asr", "punc"} and not engine._calls  # punctuation goes with it
        threaded, _ = engines
        segments = _segments()
        assert asyncio.run(_recognise(engine, segments)) == asyncio.run(_recognise(threaded, segments))
    finally:
        engine.close()
    small = FunasrEngine.load(settings_for(tiny_models, online_model="none", model_processes="auto"))
    try:
        assert not small._processes and set(small._calls) == {"asr", "punc"}
    finally:
        small.close()


def test_model_processes_is_checked(tiny_models):
    with pytest.raises(ConfigError, match="model_processes"):
        settings_for(tiny_models, model_processes="yes")


def test_server_answers_unavailable_when_its_model_worker_dies_then_serves_again(make_server):
    from tests.helpers import recognize_through_a_worker_death

    srv = make_server(model_processes="on", online_model="none")
    asr = srv.pipeline.engine._processes["asr"]
    victim = asr.pid()
    before, after, failed = recognize_through_a_worker_death(srv.target, lambda: os.kill(victim, signal.SIGKILL), lambda: asr.pid() not in (None, victim))
    assert after == before and len(before) > 0
    # The call that met the dead worker got UNAVAILABLE and a reason (a client may retry), never INTERNAL.
    assert failed and all(code is grpc.StatusCode.UNAVAILABLE and "worker process died" in details for code, details in failed)
