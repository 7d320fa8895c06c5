"""WorkerProcess, the restartable process under the model, VAD and stream workers, with plain functions for models.

The load and call functions live in this module so that the spawned process can import them;
the model-backed uses are covered in test_model_process.py, test_vad_pool.py and test_stream_steps.py.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

from app.engine import worker_process
from app.engine.loader import ModelLoadError
from app.engine.worker_process import WorkerDied, WorkerProcess

_loaded: str | None = None


def load_text(path: str) -> str:
    """The "model" is a file's text; a missing file fails the load as a real model would."""
    global _loaded
    _loaded = Path(path).read_text()
    return f"loaded {len(_loaded)} characters"


def echo(suffix: str) -> tuple[str, str, int]:
    return _loaded, suffix, os.getpid()


def sleep_then_echo(seconds: float) -> tuple[str, str, int]:
    time.sleep(seconds)
    return echo("late")


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "model.txt"
    path.write_text("weights")
    return path


def test_the_load_result_comes_back_and_calls_run_in_the_process(model_file):
    worker = WorkerProcess("test worker", load_text, str(model_file))
    try:
        assert worker.wait_loaded() == "loaded 7 characters" and worker.ready() and not worker.load_failed()
        text, suffix, pid = asyncio.run(worker.run(echo, "x"))
        assert (text, suffix) == ("weights", "x") and pid == worker.pid() != os.getpid()
    finally:
        worker.close()


def test_a_load_that_fails_says_why_in_one_line(tmp_path):
    worker = WorkerProcess("test worker", load_text, str(tmp_path / "missing.txt"))
    try:
        with pytest.raises(ModelLoadError, match="test worker could not start: FileNotFoundError") as err:
            worker.wait_loaded()
        assert "\n" not in str(err.value) and worker.load_failed() and not worker.ready()
    finally:
        worker.close()


def test_a_process_killed_during_a_call_fails_that_call_and_is_replaced(model_file):
    worker = WorkerProcess("test worker", load_text, str(model_file))
    try:
        worker.wait_loaded()
        victim = worker.pid()

        async def kill_during_a_call():
            call = asyncio.ensure_future(worker.run(sleep_then_echo, 5.0))
            await asyncio.sleep(0.3)
            os.kill(victim, signal.SIGKILL)
            with pytest.raises(WorkerDied, match="test worker died during this call"):
                await call
            return await worker.run(echo, "after")

        text, suffix, pid = asyncio.run(kill_during_a_call())
        assert (text, suffix) == ("weights", "after")  # the new process loaded the model before the call
        assert pid != victim and worker.generation == 1
    finally:
        worker.close()


def test_a_failed_load_is_retried_only_after_the_retry_interval(tmp_path, monkeypatch):
    missing = tmp_path / "model.txt"
    worker = WorkerProcess("test worker", load_text, str(missing))
    try:
        with pytest.raises(ModelLoadError):
            worker.wait_loaded()
        assert not worker.retry_failed_load() and worker.generation == 0  # LOAD_RETRY_S (30 s) has not passed
        missing.write_text("fixed")  # the cause went away (memory freed, files back)
        monkeypatch.setattr(worker_process, "LOAD_RETRY_S", 0.0)
        assert worker.retry_failed_load() and worker.generation == 1
        assert worker.wait_loaded() == "loaded 5 characters"
        assert not worker.retry_failed_load()  # a loaded process is never replaced
    finally:
        worker.close()


def test_a_process_killed_while_loading_fails_the_start_with_one_line(tmp_path):
    fifo = tmp_path / "never-written"
    os.mkfifo(fifo)  # reading it blocks: the load never finishes by itself
    worker = WorkerProcess("test worker", load_text, str(fifo))
    try:
        deadline = time.monotonic() + 30
        while worker.pid() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(worker.pid(), signal.SIGKILL)
        with pytest.raises(ModelLoadError, match="test worker died while loading its model"):
            worker.wait_loaded()
    finally:
        worker.close()
