"""Coalescing the model steps of concurrent live streams into one engine call.

Every open stream feeds its streaming VAD every 200 ms and its online model every 600 ms. Sent
one by one, those are thousands of small calls a second, each a thread hand-off and a pass
through the model's per-call overhead. Here the steps queue while the model's worker is busy,
and the next call takes all of them at once. There is no waiting window: a lone stream's step
goes at once, and under load the batch forms by itself while the previous one runs, so batching
adds no latency.

Unlike the ASR scheduler's segments, the steps are stateful (each carries its stream's model
state), so a caller must never queue two steps of one stream (a session awaits each of its steps),
and a failed step fails only its own stream.

The same coalescing serves the punctuation of concurrent requests (each "step" a transcript's
tokens; stateless, so any number may queue): the punctuation model marks them in one pass. A
long transcript takes many rounds of that model, so a call may hand a step back unfinished
(``is_partial``): it goes on in the next call, ahead of the steps that arrived since, and short
texts no longer wait for all of a long one's rounds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from app import metrics
from app.core.scheduler import cancel_and_wait

log = logging.getLogger(__name__)

S = TypeVar("S")
R = TypeVar("R")

# One engine call for a batch of steps: per step, its result or its own exception.
RunSteps = Callable[[Sequence[S]], Awaitable[list]]


class StepBatcher(Generic[S, R]):
    def __init__(
        self, run_steps: RunSteps, model_name: str, role: str, max_steps: int = 256, batch_sizes=None, is_partial: Callable[[object], bool] | None = None
    ):
        self._run_steps = run_steps
        self._is_partial = is_partial  # a result that is the step itself, part-done: it goes round again
        # Where each call's size is observed: the stream-step histogram unless the caller names another.
        self._batch_sizes = batch_sizes if batch_sizes is not None else metrics.STREAM_STEP_BATCH.labels(model_name, role)
        self.model_name = model_name
        self.role = role
        self.max_steps = max_steps
        self._pending: list[tuple[S, asyncio.Future]] = []
        self._arrived = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.calls = 0  # engine calls made, for tests
        self.largest = 0  # most steps in one call, for tests

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"{self.role}-steps-{self.model_name}")

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        for _, future in self._pending:
            future.cancel()
        self._pending.clear()

    async def submit(self, step: S) -> R:
        """Queue one stream's step; resolves with its result. Cancelling the caller drops a queued step."""
        if self._task is None:
            raise RuntimeError("step batcher not started")
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._pending.append((step, future))
        self._arrived.set()
        return await future

    async def _loop(self) -> None:
        while True:
            if not self._pending:
                self._arrived.clear()
                await self._arrived.wait()
            batch = [(step, future) for step, future in self._pending[: self.max_steps] if not future.done()]
            del self._pending[: self.max_steps]
            if not batch:
                continue
            self.calls += 1
            self.largest = max(self.largest, len(batch))
            self._batch_sizes.observe(len(batch))
            try:
                results = await self._run_steps([step for step, _ in batch])
            except Exception as error:  # the whole call failed (a model fault): every step in it fails
                log.warning("%s: a call for %d failed: %s", self.role, len(batch), type(error).__name__)
                results = [error] * len(batch)
            unfinished = []
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():  # the stream went away while the model worked
                    continue
                if self._is_partial is not None and self._is_partial(result):
                    unfinished.append((result, future))
                elif isinstance(result, Exception):
                    metrics.ENGINE_FAILURES.labels(self.model_name).inc()
                    future.set_exception(result)
                else:
                    future.set_result(result)
            self._pending[:0] = unfinished  # older than anything queued meanwhile
