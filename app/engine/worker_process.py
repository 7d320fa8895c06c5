"""A model loaded in a spawned worker process, replaced when the process dies.

The common part of the model processes (model_process.py), the VAD workers (vad_pool.py) and
the stream workers (stream_workers.py). Each holds one or more of these.

The model is loaded by the process's first task, not by an initializer: a task that fails
reports why (an initializer that raises only breaks the pool, "terminated abruptly"), and
every later call queues behind it. A process that dies fails the call it was running; the
first caller to notice starts a new process, which loads the model again. A restarted process
that cannot load its model answers nothing: its owner routes around it or refuses the call
(the cause is logged once), and asks for another attempt with ``retry_failed_load`` no more
often than every ``LOAD_RETRY_S``.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from app.engine.loader import ModelLoadError

log = logging.getLogger(__name__)

LOAD_RETRY_S = 30.0  # how often a process whose model failed to load is replaced by a new attempt


class ModelWorkerLost(RuntimeError):
    """A model's worker process died, or was restarted and could not load its model: retrying later can work."""


class WorkerDied(ModelWorkerLost):
    """The worker process died while running this call (killed, out of memory); a new one is starting."""


def _load_guarded(name: str, load: Callable, *args):
    """Runs in the worker: ``load``, with any failure as a ModelLoadError (one line that pickles)."""
    try:
        return load(*args)
    except ModelLoadError:
        raise
    except Exception as e:  # outside the model load itself (imports, priority); not every exception pickles
        raise ModelLoadError(f"{name} could not start: {type(e).__name__}: {e}") from None


class WorkerProcess:
    """One spawned process with a model loaded by ``load(*load_args)`` (a module-level function)."""

    def __init__(self, name: str, load: Callable, *load_args: Any, models: str = "its model"):
        self.name = name  # for messages: "the asr model's worker process", "VAD worker process 1"
        self.models = models  # what it loads, for messages
        self._load = (load, load_args)
        self.generation = 0  # how many times the process was replaced: state kept in the old one is gone
        self._executor, self.loading = self._start()

    def _start(self) -> tuple[ProcessPoolExecutor, Future]:
        self._started_at = time.monotonic()
        # spawn, not fork: the server process holds gRPC and torch threads that a fork would copy half-way.
        executor = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        load, args = self._load
        return executor, executor.submit(_load_guarded, self.name, load, *args)

    # ------------------------------------------------------------ start-up (blocking)
    def wait_loaded(self):
        """Block until the model is loaded; its load function's result. Raises ModelLoadError."""
        try:
            return self.loading.result()
        except BrokenProcessPool:
            raise self._died_at_start("loading") from None

    def call(self, fn: Callable, *args):
        """Run ``fn`` in the process and wait (start-up code: the warm-up). Raises ModelLoadError if the process dies."""
        try:
            return self._executor.submit(fn, *args).result()
        except BrokenProcessPool:
            raise self._died_at_start("warming up") from None

    def _died_at_start(self, doing: str) -> ModelLoadError:
        # Killed (out of memory, most often) or crashed: the start or the hot reload fails with one line.
        return ModelLoadError(f"{self.name} died while {doing} {self.models} (out of memory? see the kernel log)")

    # ------------------------------------------------------------ serving
    async def run(self, fn: Callable, *args):
        """Run ``fn(*args)`` in the process. Raises WorkerDied (and starts a new process) if the process dies meanwhile."""
        executor = self._executor
        try:
            return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)
        except BrokenProcessPool:
            self.restart(executor, "died")
            raise WorkerDied(f"{self.name} died during this call; it is being restarted, retry") from None

    def submit_quietly(self, fn: Callable, *args) -> None:
        """Send ``fn`` without waiting for it (ordered before later calls); a dying or closed process drops it."""
        try:
            self._executor.submit(fn, *args)
        except (BrokenProcessPool, RuntimeError):
            return

    def ready(self) -> bool:
        """Whether the model is loaded (a call would not wait for the load)."""
        loading = self.loading
        return loading.done() and not loading.cancelled() and loading.exception() is None

    def load_failed(self) -> bool:
        """Whether the model load finished with an error (not: still loading, loaded, cancelled at close)."""
        loading = self.loading
        return loading.done() and not loading.cancelled() and loading.exception() is not None

    def unavailable(self) -> tuple[bool, bool]:
        """(load failed, still loading): as a sort key, the processes that can answer now come first."""
        return self.load_failed(), not self.ready()

    def retry_failed_load(self) -> bool:
        """Replace a process whose load failed, once LOAD_RETRY_S has passed since it started; whether it was replaced."""
        if self.load_failed() and time.monotonic() - self._started_at > LOAD_RETRY_S:
            self.restart(self._executor, f"could not load {self.models}")
            return True
        return False

    def restart(self, broken: ProcessPoolExecutor, why: str) -> None:
        if self._executor is not broken:
            return  # another call already restarted it
        log.error("%s %s; starting a new one", self.name, why)
        self.generation += 1
        self._executor, self.loading = self._start()
        # Nobody waits for a restarted process's load (its next call does): say here if it fails.
        self.loading.add_done_callback(self._log_failed_load)
        broken.shutdown(wait=False, cancel_futures=True)

    def _log_failed_load(self, loading: Future) -> None:
        if not loading.cancelled() and (error := loading.exception()) is not None:
            log.error("restarted %s could not load %s: %s; tried again in %.0f s at the earliest", self.name, self.models, error, LOAD_RETRY_S)

    def pid(self) -> int | None:
        return next(iter(self._executor._processes or {}), None)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
