"""Whole-recording VAD in worker processes.

FSMN-VAD's decision logic runs in Python, frame by frame, holding the GIL: 44 % of the GIL in a
profiled tiny-model server, and the ceiling of a GPU server (an H200 served 46 requests/s of 2 s
audio with 1.8 of its 16 cores busy). Worker processes each load their own copy of the VAD model
(small: FunASR's fsmn-vad has 0.4M parameters) and run it on their own GIL.

Streaming VAD keeps per-stream state and stays on the engine's VAD thread.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import numpy as np

from app.engine.heap import freeze_loaded
from app.engine.loader import ModelLoadError
from app.engine.model_process import LOAD_RETRY_S, ModelWorkerLost
from app.engine.worker import lower_thread_priority

log = logging.getLogger(__name__)

# One per worker process: the VAD model and its own default end-of-speech silence.
_vad = None
_default_end_silence_ms = 0
_load_error: str | None = None  # why this process could not load the model; its calls raise it


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


def _load_in_worker(model_dir: str, fast_features: bool, nice: int) -> None:
    # An initializer that raises only breaks the pool ("terminated abruptly"): keep the reason for the calls.
    global _load_error
    try:
        _load(model_dir, fast_features, nice)
    except ModelLoadError as e:
        _load_error = str(e)
    except Exception as e:  # outside the model load itself (imports, priority)
        _load_error = f"a VAD worker process could not start: {type(e).__name__}: {e}"


def _load(model_dir: str, fast_features: bool, nice: int) -> None:
    global _vad, _default_end_silence_ms
    lower_thread_priority(nice)  # first, so that torch's threads inherit it (worker.py says why)
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
    if _load_error is not None:
        raise ModelLoadError(_load_error)
    return detect_speech(_vad, _default_end_silence_ms, samples, max_end_silence_ms)


class VadProcessPool:
    """``processes`` worker processes, each with the VAD model of ``model_dir`` loaded."""

    def __init__(self, model_dir: str, processes: int, fast_features: bool, nice: int = 0):
        self.model_dir, self.processes, self.fast_features, self.nice = model_dir, processes, fast_features, nice
        self._failed_pool: ProcessPoolExecutor | None = None  # the pool whose load failure was logged
        self._pool = self._start()

    def _start(self) -> ProcessPoolExecutor:
        self._started_at = time.monotonic()
        # spawn, not fork: the server process holds gRPC and torch threads that a fork would copy half-way.
        return ProcessPoolExecutor(
            max_workers=self.processes,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_load_in_worker,
            initargs=(self.model_dir, self.fast_features, self.nice),
        )

    def warm_up(self, audio: np.ndarray) -> None:
        """Start every process and run the model once in each (the pool starts them lazily)."""
        futures = [self._pool.submit(_detect_in_worker, audio, None) for _ in range(self.processes)]
        try:
            for future in futures:
                future.result()  # a ModelLoadError from a worker comes through as it is
        except BrokenProcessPool:
            raise ModelLoadError("a VAD worker process died while loading its model (out of memory? see the kernel log)") from None

    async def detect_speech(self, samples: np.ndarray, max_end_silence_ms: int | None) -> list[tuple[int, int]]:
        pool = self._pool
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, _detect_in_worker, samples, max_end_silence_ms)
        except BrokenProcessPool:
            # A worker died (killed, out of memory): this request fails, the next ones get a new pool.
            if pool is self._pool:
                log.error("a VAD worker process died; starting a new pool of %d", self.processes)
                self._pool = self._start()
                pool.shutdown(wait=False, cancel_futures=True)
            raise ModelWorkerLost("the VAD worker process died while processing this request; it is being restarted, retry") from None
        except ModelLoadError as e:  # a restarted pool could not load the model: the cause is for the log
            if pool is self._pool and pool is not self._failed_pool:
                self._failed_pool = pool
                log.error("%s; a new pool tries again in %.0f s", e, LOAD_RETRY_S)
            elif pool is self._pool and time.monotonic() - self._started_at > LOAD_RETRY_S:
                log.error("%s; starting a new pool of %d", e, self.processes)
                self._pool = self._start()
                pool.shutdown(wait=False, cancel_futures=True)
            raise ModelWorkerLost("the VAD worker process was restarted but could not load its model (see the server log); retry later") from None

    def pids(self) -> set[int]:
        """The worker processes' ids (for tests)."""
        return set(self._pool._processes or {})

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
