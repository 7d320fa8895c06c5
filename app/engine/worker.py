"""A dedicated thread per model.

FunASR models mutate shared state on every call (frontend caches, VAD options, the tokenizer's
buffers) and are not safe to call from several threads; running them on the event loop would
stall every RPC. So each model gets exactly one thread, and everything that touches it runs there.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class ModelWorker:
    def __init__(self, name: str):
        self.name = name
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"model-{name}")
        self._thread_id: int | None = None
        self.busy_seconds = 0.0  # time spent inside model calls, for utilisation metrics

    def call(self, fn: Callable[..., T], *args, **kwargs) -> T:
        """Run on the worker thread and wait (for start-up code that is not async yet)."""
        return self._executor.submit(self._run, fn, args, kwargs).result()

    async def run(self, fn: Callable[..., T], *args, **kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._run, fn, args, kwargs)

    def _run(self, fn, args, kwargs):
        import time

        self._thread_id = threading.get_ident()
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.busy_seconds += time.perf_counter() - start

    def on_worker_thread(self) -> bool:
        return threading.get_ident() == self._thread_id

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
