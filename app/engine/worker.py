"""A dedicated thread per model.

FunASR models mutate shared state on every call (frontend caches, VAD options, the tokenizer's
buffers) and are not safe to call from several threads; running them on the event loop would
stall every RPC. So each model gets exactly one thread, and everything that touches it runs there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class ModelWorker:
    def __init__(self, name: str):
        self.name = name
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"model-{name}")

    def call(self, fn: Callable[..., T], *args) -> T:
        """Run on the worker thread and wait (start-up code that is not async)."""
        return self._executor.submit(fn, *args).result()

    async def run(self, fn: Callable[..., T], *args) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
