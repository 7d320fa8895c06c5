"""Dynamic batching: where a batch is formed.

Segments from all requests in flight queue here; one loop per model forms batches and runs each
as ONE engine call on the model's worker. A batch closes at ``max_batch_size`` segments, at
``max_batch_audio_s`` of padded audio, or ``max_wait_s`` after its oldest segment arrived,
whichever comes first - or at once when no other request is on its way. The loop dispatches
one batch at a time (the model has one thread), so while the model works the queue fills and the
next batch forms by itself.

Segments are only batched with segments that share a key (e.g. the same hotwords), because one
engine call takes one set of options.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np

from app import metrics
from app.core.errors import DeadlineExpired

log = logging.getLogger(__name__)

R = TypeVar("R")
SAMPLE_RATE_HZ = 16000

BatchFn = Callable[[Sequence[np.ndarray], Hashable], Awaitable[list[R]]]


@dataclass(frozen=True)
class BatchPolicy:
    max_batch_size: int = 16
    max_batch_audio_s: float = 300.0
    max_wait_s: float = 0.005


@dataclass(eq=False)
class _Item(Generic[R]):
    samples: np.ndarray
    key: Hashable
    future: asyncio.Future
    deadline: float | None  # time.monotonic() value
    enqueued_at: float = field(default_factory=time.monotonic)

    @property
    def seconds(self) -> float:
        return len(self.samples) / SAMPLE_RATE_HZ


@dataclass
class SchedulerStats:
    """Counters for tests and debugging (the Prometheus metrics carry the same facts for ops)."""

    batches: int = 0
    segments: int = 0
    largest_batch: int = 0
    retried_alone: int = 0
    dropped: int = 0


class BatchScheduler(Generic[R]):
    def __init__(
        self,
        run_batch: BatchFn,
        policy: BatchPolicy,
        model_name: str = "default",
        others_in_flight: Callable[[int], bool] | None = None,
    ):
        self._run_batch = run_batch
        # Whether requests other than those already queued are on their way here (given the queue
        # length). When none is, waiting for company is pure latency: a lone request goes at once.
        self._others_in_flight = others_in_flight or (lambda queued: True)
        self.policy = policy
        self.model_name = model_name
        self._pending: list[_Item] = []
        self._arrived = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.stats = SchedulerStats()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher-{self.model_name}")

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        for item in self._pending:
            if not item.future.done():
                item.future.cancel()
        self._pending.clear()

    # ------------------------------------------------------------------ API
    async def submit(self, samples: np.ndarray, key: Hashable = (), deadline: float | None = None) -> R:
        """Queue one segment; resolves with its result. Cancelling the caller drops the segment."""
        if self._task is None:
            raise RuntimeError("scheduler not started")
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._pending.append(_Item(samples, key, future, deadline))
        self._arrived.set()
        return await future

    @property
    def pending(self) -> int:
        return len(self._pending)

    # ------------------------------------------------------------------ the loop
    async def _loop(self) -> None:
        while True:
            if not self._pending:
                self._arrived.clear()
                await self._arrived.wait()
            self._drop_dead()
            if not self._pending:
                continue
            oldest = self._pending[0]
            close_at = oldest.enqueued_at + self.policy.max_wait_s
            while (
                not self._batch_full(oldest.key)
                and self._others_in_flight(len(self._pending))
                and (wait := close_at - time.monotonic()) > 0
            ):
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), wait)
                except TimeoutError:
                    break
            self._drop_dead()
            batch = self._take_batch()
            if batch:
                await self._dispatch(batch)

    def _drop_dead(self) -> None:
        """Segments whose caller left or whose deadline passed never reach the model."""
        now = time.monotonic()
        alive = []
        for item in self._pending:
            if item.future.done():  # cancelled by a caller that went away
                reason = "cancelled"
            elif item.deadline is not None and now >= item.deadline:
                item.future.set_exception(DeadlineExpired("the request's deadline passed while it waited for the model"))
                reason = "deadline"
            else:
                alive.append(item)
                continue
            self.stats.dropped += 1
            metrics.DROPPED_BEFORE_MODEL.labels(self.model_name, reason).inc()
        self._pending = alive

    def _batch_full(self, key: Hashable) -> bool:
        same = [i for i in self._pending if i.key == key]
        if len(same) >= self.policy.max_batch_size:
            return True
        longest = max(i.seconds for i in same)
        return longest * len(same) >= self.policy.max_batch_audio_s

    def _take_batch(self) -> list[_Item]:
        """The oldest segment plus the compatible segments closest to it in length (little padding)."""
        if not self._pending:
            return []
        anchor = self._pending[0]
        candidates = sorted((i for i in self._pending if i.key == anchor.key), key=lambda i: len(i.samples))
        pos = candidates.index(anchor)
        lo = hi = pos  # grow a window [lo, hi] around the anchor, always towards the closer length
        while hi - lo + 1 < self.policy.max_batch_size:
            left = candidates[lo - 1] if lo > 0 else None
            right = candidates[hi + 1] if hi + 1 < len(candidates) else None
            if left is None and right is None:
                break
            pick_right = left is None or (right is not None and len(right.samples) - len(anchor.samples) <= len(anchor.samples) - len(left.samples))
            new_lo, new_hi = (lo, hi + 1) if pick_right else (lo - 1, hi)
            longest = max(i.seconds for i in candidates[new_lo : new_hi + 1])
            if longest * (new_hi - new_lo + 1) > self.policy.max_batch_audio_s:
                break
            lo, hi = new_lo, new_hi
        batch = candidates[lo : hi + 1]
        chosen = set(map(id, batch))
        self._pending = [i for i in self._pending if id(i) not in chosen]
        return batch

    async def _dispatch(self, batch: list[_Item]) -> None:
        now = time.monotonic()
        for item in batch:
            metrics.QUEUE_WAIT.labels(self.model_name).observe(now - item.enqueued_at)
        self.stats.batches += 1
        self.stats.segments += len(batch)
        self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
        metrics.BATCH_SIZE.labels(self.model_name).observe(len(batch))
        start = time.perf_counter()
        try:
            results = await self._run_batch([i.samples for i in batch], batch[0].key)
        except Exception as error:
            metrics.ENGINE_FAILURES.labels(self.model_name).inc()
            if len(batch) == 1:
                _settle(batch[0], error=error)
                return
            # One bad segment must not fail its neighbours: run each alone, fail only the guilty.
            log.warning("batch of %d failed (%s); retrying its segments one by one", len(batch), type(error).__name__)
            for item in batch:
                if item.future.done():
                    continue
                self.stats.retried_alone += 1
                try:
                    (result,) = await self._run_batch([item.samples], item.key)
                except Exception as single_error:
                    metrics.ENGINE_FAILURES.labels(self.model_name).inc()
                    _settle(item, error=single_error)
                else:
                    _settle(item, result=result)
            return
        finally:
            metrics.BATCH_SECONDS.labels(self.model_name).observe(time.perf_counter() - start)
        for item, result in zip(batch, results, strict=True):
            _settle(item, result=result)


async def cancel_and_wait(task: asyncio.Task | None) -> None:
    """Stop a batching loop's task and wait until it has stopped."""
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _settle(item: _Item, *, result=None, error: BaseException | None = None) -> None:
    if item.future.done():  # the caller left while the model worked
        return
    if error is not None:
        item.future.set_exception(error)
    else:
        item.future.set_result(result)
