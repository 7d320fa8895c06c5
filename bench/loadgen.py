"""Load over real gRPC (grpc.aio): closed loop (N clients back to back) and open loop (a fixed rate).

Every request is timed on the client, from the call to its answer or error; nothing here knows
about the server's internals.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import time
from collections import Counter
from dataclasses import dataclass

import grpc

from app.gen.paraformer.asr.v1 import asr_pb2, asr_pb2_grpc
from bench.common import percentiles_ms
from bench.workload import AudioSet

CHANNEL_OPTIONS = [("grpc.max_send_message_length", 256 * 1024 * 1024), ("grpc.max_receive_message_length", 64 * 1024 * 1024)]


@dataclass
class Call:
    sent_s: float  # since the start of the run
    latency_s: float
    code: str  # grpc.StatusCode name; OK for success
    audio_s: float


class Client:
    """Connections to one server, with the requests of an audio set ready to send.

    Request i goes over connection i % connections: many clients mean many TCP connections, as
    in production, rather than every request queueing behind the others on one HTTP/2
    connection's flow-control window.
    """

    def __init__(self, target: str, audio: AudioSet, timeout_s: float, connections: int = 1):
        self.target = target
        self.audio = audio
        self.timeout_s = timeout_s
        self.connections = max(1, connections)
        self.requests = [(asr_pb2.RecognizeRequest(audio=asr_pb2.RecognitionAudio(content=c.wav)), c.seconds) for c in audio.clips]
        self.channels: list[grpc.aio.Channel] = []
        self.stubs: list[asr_pb2_grpc.RecognizerStub] = []

    async def __aenter__(self) -> Client:
        # A local subchannel pool gives every channel its own connection (grpc shares them otherwise).
        options = [*CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1)]
        self.channels = [grpc.aio.insecure_channel(self.target, options=options) for _ in range(self.connections)]
        await asyncio.wait_for(asyncio.gather(*(c.channel_ready() for c in self.channels)), 30)
        self.stubs = [asr_pb2_grpc.RecognizerStub(c) for c in self.channels]
        return self

    async def __aexit__(self, *exc) -> None:
        await asyncio.gather(*(c.close() for c in self.channels))

    async def call(self, index: int, t0: float) -> Call:
        request, seconds = self.requests[index % len(self.requests)]
        stub = self.stubs[index % len(self.stubs)]
        start = time.perf_counter()
        try:
            await stub.Recognize(request, timeout=self.timeout_s)
            code = "OK"
        except grpc.aio.AioRpcError as e:
            code = e.code().name
        return Call(start - t0, time.perf_counter() - start, code, seconds)


def freeze_own_heap() -> None:
    """Keep this process's full garbage collections out of the timings.

    A full collection walks every object the load generator holds, and every call in flight
    looks that much slower: one of 220 ms landed in an overload phase and made its refusals' p99
    106 ms instead of 13 (docs/benchmarks.md). Objects alive before a timed run are exempted, so
    collections during it only walk what the run itself creates.
    """
    gc.collect()
    gc.freeze()


async def closed_loop(client: Client, concurrency: int, max_requests: int, max_seconds: float) -> tuple[list[Call], float]:
    """``concurrency`` clients send back to back until ``max_requests`` were sent or ``max_seconds`` passed."""
    freeze_own_heap()
    counter = itertools.count()
    calls: list[Call] = []
    t0 = time.perf_counter()
    stop_at = t0 + max_seconds

    async def worker() -> None:
        while time.perf_counter() < stop_at:
            i = next(counter)
            if i >= max_requests:
                return
            calls.append(await client.call(i, t0))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return calls, time.perf_counter() - t0


async def open_loop(client: Client, phases: list[tuple[str, float, float]], first_index: int = 0) -> tuple[dict[str, list[Call]], float]:
    """Send at fixed rates regardless of answers: phases of (name, requests per second, seconds)."""
    freeze_own_heap()
    t0 = time.perf_counter()
    out: dict[str, list[Call]] = {name: [] for name, _, _ in phases}
    tasks: list[asyncio.Task] = []
    index = first_index
    phase_start = 0.0
    for name, rate, seconds in phases:
        n = int(rate * seconds)
        for k in range(n):
            due = t0 + phase_start + k / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.ensure_future(client.call(index, t0))
            task.add_done_callback(lambda t, bucket=out[name]: bucket.append(t.result()))
            tasks.append(task)
            index += 1
        phase_start += seconds
        delay = t0 + phase_start - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
    await asyncio.gather(*tasks)
    return out, time.perf_counter() - t0


def summarize(calls: list[Call], wall_s: float) -> dict:
    ok = [c for c in calls if c.code == "OK"]
    codes = Counter(c.code for c in calls)
    return {
        "requests": len(calls),
        "ok": len(ok),
        "errors": {code: n for code, n in sorted(codes.items()) if code != "OK"},
        "wall_s": round(wall_s, 3),
        "requests_per_s": round(len(ok) / wall_s, 3) if wall_s > 0 else None,
        "audio_s_per_s": round(sum(c.audio_s for c in ok) / wall_s, 2) if wall_s > 0 else None,
        **percentiles_ms([c.latency_s for c in ok]),
    }


def calls_as_rows(calls: list[Call]) -> list[list]:
    """Compact per-request rows [sent_s, latency_ms, code] for the JSON (overload timeline)."""
    return [[round(c.sent_s, 4), round(c.latency_s * 1000, 2), c.code] for c in sorted(calls, key=lambda c: c.sent_s)]


__all__ = ["Call", "Client", "calls_as_rows", "closed_loop", "open_loop", "summarize"]
