"""The offline ASR model and the punctuation model, each in a worker process of its own.

On a thread of the server process, the ASR model's Python (FunASR's generate(), its per-item
loops) shares one GIL with the event loop that takes calls in: a py-spy profile of a tiny-model
server at 32 clients had the ASR thread in 59 % of the samples and the event loop in 30 %, and an
H200 server answered 49 requests/s of 2 s audio with 1.7 of its 16 cores busy and the GPU mostly
idle. In a process of its own the model runs on its own GIL, and the event loop answers health
checks and refuses a flood without waiting for the model's Python to let go.

A batch goes over a pipe (a 2 s segment is 64 KB) and its results come back the same way. A
worker that dies fails the call it was running; it is restarted, its model loaded again, and the
calls that follow wait for that load. The batching scheduler retries a failed batch's items one
by one, so a segment that kills the worker fails alone.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from app.engine.heap import freeze_loaded
from app.engine.loader import ModelLoadError
from app.engine.worker import lower_thread_priority

log = logging.getLogger(__name__)

LOAD_RETRY_S = 30.0  # how often a worker whose restart could not load its model is tried again


class ModelWorkerLost(RuntimeError):
    """The model's worker process died, or was restarted and could not load its model: retrying later can work."""


# ---------------------------------------------------------------- inside a worker process
_call: Callable | None = None  # AsrCall or PunctuationCall (model_calls.py)


def _load_in_worker(role: str, path: str, device: str, threads: int, fast_features: bool, nice: int) -> tuple[int, float]:
    """Load and verify the model as the server would; returns (tensors verified, seconds)."""
    global _call
    lower_thread_priority(nice)  # first, so that torch's threads inherit it (worker.py says why)
    import torch

    from app.engine import features
    from app.engine.loader import open_model
    from app.engine.model_calls import AsrCall, PunctuationCall

    logging.getLogger().setLevel(logging.WARNING)  # FunASR's INFO load messages would repeat the server's
    torch.set_num_threads(threads)
    features.install(fast_features)
    model, verified, seconds = open_model(role, path, device, threads, where=" in its worker process")
    _call = AsrCall(model) if role == "asr" else PunctuationCall(model, device)
    freeze_loaded()
    return verified, seconds


def _run_in_worker(*args) -> tuple[object, dict[str, tuple[float, float]]]:
    if _call is None:
        # The cause (paths, memory) went to the server log when the load failed, not to clients.
        raise ModelWorkerLost("the model's worker process was restarted but could not load its model (see the server log); retry later")
    try:
        result = _call(*args)
    except Exception as error:  # not every exception pickles; a RuntimeError with its text does
        raise RuntimeError(f"{type(error).__name__}: {error}") from None
    return picklable(result), gpu_memory_here()


def _set_fault_hook_in_worker(hook) -> None:
    _call.fault_hook = hook


def picklable(results):
    """A list's own exceptions as RuntimeErrors (not every exception pickles); other values as they are."""
    if not isinstance(results, list):
        return results
    return [RuntimeError(f"{type(r).__name__}: {r}") if isinstance(r, Exception) else r for r in results]


def gpu_memory_here() -> dict[str, tuple[float, float]]:
    """This process's GPU memory, {device: (allocated, reserved)}; {} while it has not used CUDA (on a CPU)."""
    import torch

    if not torch.cuda.is_initialized():
        return {}
    return {f"cuda:{i}": (float(torch.cuda.memory_allocated(i)), float(torch.cuda.memory_reserved(i))) for i in range(torch.cuda.device_count())}


def sum_gpu_memory(reports: list[dict[str, tuple[float, float]]]) -> dict[str, tuple[float, float]]:
    """Worker processes' GPU memory reports, summed per device."""
    total: dict[str, tuple[float, float]] = {}
    for report in reports:
        for device, (allocated, reserved) in report.items():
            a, r = total.get(device, (0.0, 0.0))
            total[device] = (a + allocated, r + reserved)
    return total


# ---------------------------------------------------------------- in the server process
class ModelProcess:
    """One model (``role``: "asr" or "punc") loaded in a worker process; calls run there one at a time."""

    def __init__(self, role: str, path: str, device: str, threads: int, fast_features: bool, nice: int = 0):
        self.role = role
        self._init_args = (role, path, device, threads, fast_features, nice)
        self._executor, self._loading = self._start()
        self._started_at = time.monotonic()
        self.gpu_memory: dict[str, tuple[float, float]] = {}  # as the worker last reported it

    def _start(self) -> tuple[ProcessPoolExecutor, Future]:
        # spawn, not fork: the server process holds gRPC and torch threads that a fork would copy half-way.
        executor = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        # The first task, so every call waits for it; a task (not an initializer) so that a model
        # that fails to load reports why instead of a bare "process pool broken".
        return executor, executor.submit(_load_in_worker, *self._init_args)

    def wait_loaded(self) -> tuple[int, float]:
        """Block until the model is loaded: (tensors verified, seconds). Raises ModelLoadError."""
        try:
            return self._loading.result()
        except BrokenProcessPool:
            raise self._died_at_start("loading") from None

    def call(self, *args):
        """Run the model on ``args`` and wait (start-up code: the warm-up)."""
        try:
            result, self.gpu_memory = self._executor.submit(_run_in_worker, *args).result()
        except BrokenProcessPool:
            raise self._died_at_start("warming up") from None
        return result

    def _died_at_start(self, doing: str) -> ModelLoadError:
        # Killed (out of memory, most often) or crashed: the start or the hot reload fails with one line.
        return ModelLoadError(f"the {self.role} model's worker process died while {doing} its model (out of memory? see the kernel log)")

    async def run(self, *args):
        self._retry_failed_load()
        executor = self._executor
        try:
            result, self.gpu_memory = await asyncio.get_running_loop().run_in_executor(executor, _run_in_worker, *args)
        except BrokenProcessPool:
            self._restart(executor, "died")
            raise ModelWorkerLost(f"the {self.role} model's worker process died during this call; it is being restarted, retry") from None
        return result

    def set_fault_hook(self, hook) -> None:
        """Test-only: install a picklable fault hook (see AsrCall) in the worker, before any later call."""
        self._executor.submit(_set_fault_hook_in_worker, hook).result()

    def _retry_failed_load(self) -> None:
        loading = self._loading
        failed = loading.done() and not loading.cancelled() and loading.exception() is not None
        if failed and time.monotonic() - self._started_at > LOAD_RETRY_S:
            self._restart(self._executor, "could not load its model")

    def _restart(self, broken: ProcessPoolExecutor, why: str) -> None:
        if self._executor is not broken:
            return  # another call already restarted it
        log.error("the %s model's worker process %s; starting a new one", self.role, why)
        self._executor, self._loading = self._start()
        self._started_at = time.monotonic()
        self.gpu_memory = {}
        # Nobody waits for a restarted worker's load (its next call does): say here if it fails.
        self._loading.add_done_callback(self._log_failed_load)
        broken.shutdown(wait=False, cancel_futures=True)

    def _log_failed_load(self, loading: Future) -> None:
        if not loading.cancelled() and (error := loading.exception()) is not None:
            log.error("the restarted %s model worker process could not load its model: %s", self.role, error)

    def pid(self) -> int | None:
        """The worker process's id (for tests)."""
        return next(iter(self._executor._processes or {}), None)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
