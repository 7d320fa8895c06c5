"""A dedicated thread per model, optionally at a lower CPU priority than the event loop.

FunASR models mutate shared state on every call (frontend caches, VAD options, the tokenizer's
buffers) and are not safe to call from several threads; running them on the event loop would
stall every RPC. So each model gets exactly one thread, and everything that touches it runs there.

Why a lower priority (``inference_nice``): when the CPU is short, the thread that takes calls in
should win. It answers health probes, and under a flood it refuses the calls the queue cannot
take, in about half a millisecond each. At the same priority as inference, on the 2-core benchmark
machine at 10x load, 11 % of those refusals took over 10 ms at the client (p99 30 ms); with the
model threads at nice 10, 0.7-1.6 % (p99 9-12 ms; docs/benchmarks.md). At the higher 10x of a later,
faster server (1,100 calls/s) it was 2.5-3.2 % at nice 10 (p99 17-22 ms). An idle CPU runs a niced
thread at full speed, so this changes nothing until the CPU is short.

Worker processes can go further (``idle_worker_processes``): Linux's SCHED_IDLE policy, under
which a process runs only on CPU time nothing else wants, and a waking normal thread takes its
core at once, where a niced one may first finish a slice of a few milliseconds. At 1,230
calls/s with the models in processes, refusals within 10 ms went from 23-72 % at nice 10 to
87-97 % (docs/benchmarks.md, ninth session). Only when every model runs in a process: idle
processes starve behind model threads of the server, niced or not (VAD in an idle process
behind ASR on a niced thread cost a third of the throughput). And never for those threads
themselves: they hold the server's GIL, and a thread the kernel seldom runs would keep the
event loop waiting for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)

MAX_NICE = 19


def lower_thread_priority(increment: int, tid: int | None = None) -> None:
    """Raise a thread's nice value by ``increment`` (the calling thread's by default; threads it
    starts later inherit it).

    Linux keeps nice per thread, so this leaves the event loop alone; torch's intra-op threads are
    started by the thread that first runs a parallel operation and inherit its value. Elsewhere
    (macOS, say) the value is per process, and lowering it would slow the event loop too: skipped.
    """
    if increment <= 0:
        return
    if not sys.platform.startswith("linux"):
        log.info("inference_nice applies on Linux only; model threads keep the server's priority here")
        return
    tid = threading.get_native_id() if tid is None else tid
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(MAX_NICE, os.getpriority(os.PRIO_PROCESS, tid) + increment))
    except ProcessLookupError:  # the thread ended meanwhile
        return
    except OSError as e:  # a seccomp profile that forbids it, say: run at the normal priority
        log.warning("cannot lower the priority of the model threads (%s); they run at the server's", e)


@dataclass(frozen=True)
class WorkerPriority:
    """The CPU priority of a model worker process, set by its first task (``apply``)."""

    nice: int = 0  # Linux nice steps below the server, as for the model threads
    idle: bool = False  # SCHED_IDLE instead of nice: run only on CPU time nothing else wants

    def apply(self) -> None:
        """Lower the priority of every thread of this process; threads started later (torch's) inherit it.

        Every thread, not only the calling one: numpy's BLAS threads start when the process
        unpickles its first task, which imports the task's module, before the task runs.
        """
        if not sys.platform.startswith("linux"):
            lower_thread_priority(self.nice)  # says why it does nothing
            return
        threads = [int(tid) for tid in os.listdir("/proc/self/task")]
        if self.idle:
            try:
                for tid in threads:
                    with contextlib.suppress(ProcessLookupError):  # the thread ended meanwhile
                        os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
                return
            except OSError as e:  # a seccomp profile that forbids it, say
                log.warning("cannot run the worker process under SCHED_IDLE (%s); lowering its nice value instead", e)
        for tid in threads:
            lower_thread_priority(self.nice, tid)


class ModelWorker:
    def __init__(self, name: str, nice: int = 0):
        self.name = name
        self._executor = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix=f"model-{name}",
            initializer=lower_thread_priority,
            initargs=(nice,),
        )

    def call(self, fn: Callable[..., T], *args) -> T:
        """Run on the worker thread and wait (start-up code that is not async)."""
        return self._executor.submit(fn, *args).result()

    async def run(self, fn: Callable[..., T], *args) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
