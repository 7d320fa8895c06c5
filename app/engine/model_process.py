"""The offline ASR model and the punctuation model, each in a worker process of its own.

On a thread of the server process, the ASR model's Python (FunASR's generate(), its per-item
loops) shares one GIL with the event loop that takes calls in: a py-spy profile of a tiny-model
server at 32 clients had the ASR thread in 59 % of the samples and the event loop in 30 %, and an
H200 server answered 49 requests/s of 2 s audio with 1.7 of its 16 cores busy and the GPU mostly
idle. In a process of its own the model runs on its own GIL, and the event loop answers health
checks and refuses a flood without waiting for the model's Python to let go.

A batch goes over a pipe (a 2 s segment is 64 KB) and its results come back the same way. A
worker that dies fails the call it was running; it is restarted, its model loaded again, and the
calls that follow wait for that load (worker_process.py). The batching scheduler retries a failed
batch's items one by one, so a segment that kills the worker fails alone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from app.engine.heap import freeze_loaded
from app.engine.worker import WorkerPriority
from app.engine.worker_process import ModelWorkerLost, WorkerDied, WorkerProcess

# ---------------------------------------------------------------- inside a worker process
_call: Callable | None = None  # AsrCall or PunctuationCall (model_calls.py)


def _load_in_worker(role: str, path: str, device: str, threads: int, fast_features: bool, priority: WorkerPriority) -> tuple[int, float]:
    """Load and verify the model as the server would; returns (tensors verified, seconds)."""
    global _call
    priority.apply()  # first, so that torch's threads inherit it (worker.py says why)
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

    def __init__(self, role: str, path: str, device: str, threads: int, fast_features: bool, priority: WorkerPriority = WorkerPriority()):
        self.role = role
        self._worker = WorkerProcess(f"the {role} model's worker process", _load_in_worker, role, path, device, threads, fast_features, priority)
        self.gpu_memory: dict[str, tuple[float, float]] = {}  # as the worker last reported it

    def wait_loaded(self) -> tuple[int, float]:
        """Block until the model is loaded: (tensors verified, seconds). Raises ModelLoadError."""
        return self._worker.wait_loaded()

    def call(self, *args):
        """Run the model on ``args`` and wait (start-up code: the warm-up)."""
        result, self.gpu_memory = self._worker.call(_run_in_worker, *args)
        return result

    async def run(self, *args):
        if self._worker.retry_failed_load():
            self.gpu_memory = {}
        try:
            result, self.gpu_memory = await self._worker.run(_run_in_worker, *args)
        except WorkerDied:
            self.gpu_memory = {}
            raise
        return result

    def set_fault_hook(self, hook) -> None:
        """Test-only: install a picklable fault hook (see AsrCall) in the worker, before any later call."""
        self._worker.call(_set_fault_hook_in_worker, hook)

    def pid(self) -> int | None:
        """The worker process's id (for tests)."""
        return self._worker.pid()

    def close(self) -> None:
        self._worker.close()
