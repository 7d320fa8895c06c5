"""Whole-recording VAD in worker processes.

FSMN-VAD's decision logic runs in Python, frame by frame, holding the GIL: 44 % of the GIL in a
profiled tiny-model server, and the ceiling of a GPU server (an H200 served 46 requests/s of 2 s
audio with 1.8 of its 16 cores busy). Worker processes each load their own copy of the VAD model
(small: FunASR's fsmn-vad has 0.4M parameters) and run it on their own GIL.

Streaming VAD keeps per-stream state and stays on the engine's VAD thread.
"""

from __future__ import annotations

import logging

import numpy as np

from app.engine.heap import freeze_loaded
from app.engine.worker import WorkerPriority
from app.engine.worker_process import ModelWorkerLost, WorkerProcess

# One per worker process: the VAD model and its own default end-of-speech silence.
_vad = None
_default_end_silence_ms = 0


def detect_speech(vad, default_end_silence_ms: int, samples: np.ndarray, max_end_silence_ms: int | None) -> list[tuple[int, int]]:
    """Speech segments [(start_ms, end_ms)] of 16 kHz mono audio, from a FunASR VAD AutoModel.

    FunASR overwrites vad_opts.max_end_silence_time when a call passes one, so a call without one
    puts the model's own value back: a per-request setting never leaks into later requests.
    """
    kwargs = {}
    if max_end_silence_ms is None:
        vad.model.vad_opts.max_end_silence_time = default_end_silence_ms
    else:
        kwargs["max_end_silence_time"] = int(max_end_silence_ms)
    result = vad.generate(input=samples, disable_pbar=True, **kwargs)
    segments = result[0].get("value", []) if result else []
    return [(int(s), int(e)) for s, e in segments if e > s]


def _load_in_worker(model_dir: str, fast_features: bool, priority: WorkerPriority) -> None:
    global _vad, _default_end_silence_ms
    priority.apply()  # first, so that torch's threads inherit it (worker.py says why)
    import torch

    from app.engine import features
    from app.engine.loader import open_model

    # FunASR set up INFO logging on import; a worker's load messages would repeat the server's.
    logging.getLogger().setLevel(logging.WARNING)
    torch.set_num_threads(1)  # many processes share the cores: intra-op threads would only contend
    features.install(fast_features)
    _vad, _, _ = open_model("vad", model_dir, "cpu", 1, where=" in a VAD worker process")
    _default_end_silence_ms = _vad.model.vad_opts.max_end_silence_time
    freeze_loaded()


def _detect_in_worker(samples: np.ndarray, max_end_silence_ms: int | None) -> list[tuple[int, int]]:
    if _vad is None:  # queued behind a load that failed; the cause went to the server log
        raise ModelWorkerLost("the VAD worker process was restarted but could not load its model (see the server log); retry later")
    return detect_speech(_vad, _default_end_silence_ms, samples, max_end_silence_ms)


class VadProcessPool:
    """``processes`` worker processes, each with the VAD model of ``model_dir`` loaded.

    A call goes to the process with the fewest calls in flight, so that one slow recording does
    not hold up the calls queued behind it while another process is idle; a process that dies
    fails only its own calls (in one shared process pool, its death failed every call in flight).
    """

    def __init__(self, model_dir: str, processes: int, fast_features: bool, priority: WorkerPriority = WorkerPriority()):
        self._workers = [
            WorkerProcess(f"VAD worker process {i}", _load_in_worker, model_dir, fast_features, priority) for i in range(processes)
        ]  # fmt: skip
        self._in_flight = [0] * processes
        self._next = 0  # where the round of tied processes starts

    def warm_up(self, audio: np.ndarray) -> None:
        """Wait for every process's model and run it once in each."""
        for worker in self._workers:
            worker.wait_loaded()
        for worker in self._workers:
            worker.call(_detect_in_worker, audio, None)

    async def detect_speech(self, samples: np.ndarray, max_end_silence_ms: int | None) -> list[tuple[int, int]]:
        # Loaded processes first: a call queued behind a restarted one's load would wait seconds.
        # Ties go round, so that every process is called, and one that died is replaced.
        n = len(self._workers)
        index = min(range(n), key=lambda i: (*self._workers[i].unavailable(), self._in_flight[i], (i - self._next) % n))
        self._next = (index + 1) % n
        worker = self._workers[index]
        if worker.load_failed() and not worker.retry_failed_load():  # every process is without its model
            raise ModelWorkerLost("the VAD worker process was restarted but could not load its model (see the server log); retry later")
        self._in_flight[index] += 1
        try:
            return await worker.run(_detect_in_worker, samples, max_end_silence_ms)
        finally:
            self._in_flight[index] -= 1

    def pids(self) -> set[int]:
        """The worker processes' ids (for tests)."""
        return {pid for worker in self._workers if (pid := worker.pid()) is not None}

    def close(self) -> None:
        for worker in self._workers:
            worker.close()
