"""Live streams' model steps (streaming VAD and online ASR) in worker processes.

On the server's own threads these steps are the GIL's main load: a py-spy profile of a tiny-model
server at 30 real-time streams, with the steps already batched across streams, had the VAD and
online threads in 64 % of the samples, and the server fell behind with 1.3 of its 2 cores busy.
Each worker process loads its own streaming VAD and online model and keeps the model state of
the streams assigned to it: a stream stays on one worker for life (its caches live there, and
one process runs its steps in order). The server process keeps the sessions, gRPC, the offline
re-decode of finals (batched with unary requests) and punctuation.

A worker that dies takes its streams' state with it: their next step fails (the stream ends
with an error), the worker is restarted, and new streams go on.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from app.engine.heap import freeze_loaded
from app.engine.model_process import gpu_memory_here, picklable, sum_gpu_memory
from app.engine.stream_steps import DEFAULT_CHUNK_SIZE, OnlineStep, VadStep, accept_precomputed_scores, run_online_steps, run_vad_steps
from app.engine.worker import WorkerPriority
from app.engine.worker_process import WorkerDied, WorkerProcess

_stream_keys = itertools.count(1)


@dataclass(eq=False)
class StreamState:
    """One live stream's model state: here (model threads) or, by key, in a worker process."""

    vad: dict = field(default_factory=dict)
    online: dict = field(default_factory=dict)
    key: int = field(default_factory=lambda: next(_stream_keys))
    worker: int | None = None  # index of the worker process holding the state
    generation: int = 0  # of that worker when assigned: a restarted worker no longer has the state


@dataclass
class StreamStep:
    """New audio for one stream's VAD (``max_end_silence_ms``) or online model (``chunk_size``)."""

    stream: StreamState
    samples: np.ndarray
    is_final: bool
    max_end_silence_ms: int | None = None  # None: the model's own
    chunk_size: tuple[int, int, int] = DEFAULT_CHUNK_SIZE


class StreamLost(RuntimeError):
    """The worker process holding this stream's model state died."""


# ---------------------------------------------------------------- inside a worker process
_vad = None
_vad_default_end_silence_ms = 0
_online = None
_states: dict[int, StreamState] = {}
_load_failed = False  # a restart that could not load the models: every step answers StreamLost


def _load_in_worker(vad_dir: str | None, online_dir: str | None, device: str, fast_features: bool, priority: WorkerPriority) -> dict[str, tuple[int, float]]:
    """Load (and verify, like the server does) the models; per role, (tensors verified, seconds)."""
    global _load_failed
    try:
        return _load_models(vad_dir, online_dir, device, fast_features, priority)
    except Exception:
        # At start-up the server fails with the error; after a restart, the pool logs it.
        _load_failed = True
        raise


def _load_models(vad_dir: str | None, online_dir: str | None, device: str, fast_features: bool, priority: WorkerPriority) -> dict[str, tuple[int, float]]:
    global _vad, _online, _vad_default_end_silence_ms
    priority.apply()  # first, so that torch's threads inherit it (worker.py says why)
    import torch

    from app.engine import features
    from app.engine.loader import open_model

    logging.getLogger().setLevel(logging.WARNING)  # FunASR's INFO load messages would repeat the server's
    torch.set_num_threads(1)  # one stream's step is small; the processes share the cores
    features.install(fast_features)
    report = {}
    for role, path in (("vad", vad_dir), ("online", online_dir)):
        if not path:
            continue
        model, verified, seconds = open_model(role, path, device, 1, where=" in a stream worker")
        report[role] = (verified, seconds)
        if role == "vad":
            _vad, _vad_default_end_silence_ms = model, model.model.vad_opts.max_end_silence_time
            accept_precomputed_scores(model.model)
        else:
            _online = model
    freeze_loaded()
    return report


def _state(key: int) -> StreamState:
    state = _states.get(key)
    if state is None:
        state = _states[key] = StreamState(key=key)
    return state


def _unloaded(steps: list) -> tuple[list, dict] | None:
    if not _load_failed:
        return None
    # The cause (paths, memory) went to the server log when the load failed, not to clients.
    lost = StreamLost("the streaming worker process was restarted but could not load its models (see the server log); retry later")
    return [lost] * len(steps), {}


def _vad_steps_in_worker(steps: list[tuple[int, np.ndarray, bool, int | None]]) -> tuple[list, dict]:
    if (answer := _unloaded(steps)) is not None:
        return answer
    vad_steps = [VadStep(_state(key).vad, samples, final, silence) for key, samples, final, silence in steps]
    return picklable(run_vad_steps(_vad, _vad_default_end_silence_ms, vad_steps)), gpu_memory_here()


def _online_steps_in_worker(steps: list[tuple[int, np.ndarray, bool, tuple[int, int, int]]]) -> tuple[list, dict]:
    if (answer := _unloaded(steps)) is not None:
        return answer
    online_steps = [OnlineStep(_state(key).online, samples, final, chunk) for key, samples, final, chunk in steps]
    return picklable(run_online_steps(_online, online_steps)), gpu_memory_here()


def _reset_online_in_worker(key: int) -> None:
    if key in _states:
        _states[key].online = {}


def _release_in_worker(key: int) -> None:
    _states.pop(key, None)


def _streams_in_worker() -> int:
    return len(_states)


# ---------------------------------------------------------------- in the server process
class StreamWorkerPool:
    """``processes`` worker processes, each with the streaming VAD and/or online model loaded."""

    def __init__(
        self, vad_dir: str | None, online_dir: str | None, device: str, processes: int, fast_features: bool, priority: WorkerPriority = WorkerPriority()
    ):
        self._dirs = (vad_dir, online_dir)
        self.has_online = bool(online_dir)
        self._workers = [
            WorkerProcess(f"streaming worker process {i}", _load_in_worker, vad_dir, online_dir, device, fast_features, priority, models="its models")
            for i in range(processes)
        ]  # fmt: skip
        self._assigned = [0] * processes  # live streams per worker
        self._gpu_memory: list[dict[str, tuple[float, float]]] = [{} for _ in range(processes)]  # as last reported
        self._counted = [0] * processes  # the worker generation that _assigned and _gpu_memory count

    def warm_up(self, audio: np.ndarray) -> dict[str, tuple[int, float]]:
        """Wait for every worker's models, run them once; returns the first worker's load report."""
        reports = [worker.wait_loaded() for worker in self._workers]
        vad_dir, online_dir = self._dirs
        for i, worker in enumerate(self._workers):
            key = -(i + 1)  # warm-up states never collide with a stream's
            answers = []
            if vad_dir:
                answers += worker.call(_vad_steps_in_worker, [(key, audio, True, None)])[0]
            if online_dir:
                answers += worker.call(_online_steps_in_worker, [(key, audio, True, DEFAULT_CHUNK_SIZE)])[0]
            worker.call(_release_in_worker, key)
            for answer in answers:
                if isinstance(answer, Exception):
                    raise answer
        return reports[0] if reports else {}

    async def vad_steps(self, steps: Sequence[StreamStep]) -> list:
        return await self._run(_vad_steps_in_worker, steps, lambda s: (s.stream.key, s.samples, s.is_final, s.max_end_silence_ms))

    async def online_steps(self, steps: Sequence[StreamStep]) -> list:
        return await self._run(_online_steps_in_worker, steps, lambda s: (s.stream.key, s.samples, s.is_final, tuple(s.chunk_size)))

    async def _run(self, fn, steps: Sequence[StreamStep], wire) -> list:
        """One call per worker for the steps of its streams, the workers in parallel; results in input order."""
        results: list = [None] * len(steps)
        by_worker: dict[int, list[int]] = {}
        for i, step in enumerate(steps):
            stream = step.stream
            if stream.worker is None:
                self._assign(stream)
            if stream.generation != self._workers[stream.worker].generation:
                results[i] = StreamLost("the streaming worker process holding this stream's state died; start a new stream")
                continue
            by_worker.setdefault(stream.worker, []).append(i)

        async def one(index: int, positions: list[int]) -> None:
            try:
                answers, self._gpu_memory[index] = await self._workers[index].run(fn, [wire(steps[i]) for i in positions])
            except WorkerDied:
                self._replaced(index)
                answers = [StreamLost("the streaming worker process died during this step; start a new stream")] * len(positions)
            for i, answer in zip(positions, answers, strict=True):
                results[i] = answer

        await asyncio.gather(*(one(index, positions) for index, positions in by_worker.items()))
        return results

    def _assign(self, stream: StreamState) -> None:
        # A worker without models holds no streams, so "fewest streams" alone would send it all;
        # and a stream on a restarted worker still loading would wait seconds for its first step.
        index = min(range(len(self._workers)), key=lambda i: (*self._workers[i].unavailable(), self._assigned[i]))
        # Every worker is in that state (memory was short, say): a new stream gets a new attempt,
        # at most every LOAD_RETRY_S, instead of a worker that only refuses.
        if self._workers[index].retry_failed_load():
            self._replaced(index)
        stream.worker, stream.generation = index, self._workers[index].generation
        self._assigned[index] += 1

    def _replaced(self, index: int) -> None:
        """The worker was restarted: its streams are lost, and so are its counts (once per restart)."""
        if self._counted[index] != self._workers[index].generation:
            self._counted[index] = self._workers[index].generation
            self._assigned[index] = 0
            self._gpu_memory[index] = {}

    def reset_online(self, stream: StreamState) -> None:
        """Start the stream's next utterance with a fresh online-model state (ordered before its next step)."""
        if stream.worker is not None and stream.generation == self._workers[stream.worker].generation:
            self._workers[stream.worker].submit_quietly(_reset_online_in_worker, stream.key)

    def release(self, stream: StreamState) -> None:
        """The stream ended: its worker forgets its state."""
        if stream.worker is None:
            return
        if stream.generation == self._workers[stream.worker].generation:
            self._assigned[stream.worker] -= 1
            self._workers[stream.worker].submit_quietly(_release_in_worker, stream.key)
        stream.worker = None

    def gpu_memory(self) -> dict[str, tuple[float, float]]:
        """The workers' GPU memory as they last reported it (with each step call), summed per device."""
        return sum_gpu_memory(list(self._gpu_memory))

    def streams_held(self) -> list[int]:
        """Stream states each worker holds now (for tests: proves a stream's end frees its state)."""
        return [worker.call(_streams_in_worker) for worker in self._workers]

    def pids(self) -> list[int]:
        return [pid for worker in self._workers if (pid := worker.pid()) is not None]

    def close(self) -> None:
        for worker in self._workers:
            worker.close()
