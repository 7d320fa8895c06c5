"""Load benchmark of the gRPC server: batching on vs off, server overhead, overload.

    .venv/bin/python -m bench.load --models tiny
    .venv/bin/python -m bench.load --models large

One run starts real servers (`paraformer-asr serve` subprocesses on loopback ports) and measures:

1. sweep: closed-loop clients at each concurrency (1, 4, 16, 32, 64) on fixed audio sets (2 s
   utterances; 5-minute recordings), against a server with batching ON and one with batching
   OFF (--max-batch-size 1), points interleaved so that both see the same machine; prints the ratios;
2. overhead: unary Recognize at concurrency 1 vs the same work in-process (decode +
   RecognitionPipeline.recognize around FunasrEngine.load), interleaved, medians and ratios;
3. overload: a server with a small --max-queue-items (and, with --overload-queue-wait, a limit on the
   expected wait), an open-loop load of 0.5x (--overload-low-share), then 10x, then
   0.5x the measured sustainable rate: rejection latency, accepted latency, recovery.

Writes bench/results/<label>.json and a PNG plot (bench/plot.py; needs matplotlib, see --plot-python).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np

from bench.common import (
    CLI,
    REPO,
    Server,
    command_line,
    cpu_list,
    ensure_models,
    fmt,
    machine_busy_seconds,
    machine_info,
    model_dirs,
    percentiles_ms,
    pin_this_process,
    ratio,
    source_env,
    table,
    write_json,
)
from bench.loadgen import Client, calls_as_rows, closed_loop, open_loop, summarize
from bench.workload import AUDIO_SETS, AudioSet

# Per model size: how much work each measurement gets (every value has a flag).
PRESETS = {
    "tiny": dict(
        concurrency="1,4,16,32,64", sets="short,long", long_concurrency="1,4,16",
        requests_per_client=15, min_requests=40, max_requests=1000, point_seconds=30.0,
        long_requests_per_client=1, long_min_requests=4, long_max_requests=32, long_point_seconds=60.0,
        overhead_reps=200, overload_queue_items=32, overload_phases="5,10,8", timeout_s=120.0,
        goal_ratio=3.0,
    ),
    "large": dict(
        concurrency="1,4,16,32", sets="short,long", long_concurrency="1",
        requests_per_client=3, min_requests=12, max_requests=200, point_seconds=60.0,
        long_requests_per_client=1, long_min_requests=1, long_max_requests=4, long_point_seconds=60.0,
        overhead_reps=30, overload_queue_items=32, overload_phases="10,20,20", timeout_s=600.0,
        goal_ratio=2.0,
    ),
}  # fmt: skip
GOAL_CONCURRENCY = 32
OVERLOAD_FACTOR = 10.0
REJECT_WITHIN_MS = 10.0
RECOVERY_BIN_REQUESTS = 6


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="tiny", help="tiny | large (built into --model-cache if missing) or a directory with asr/ vad/ punc/")
    p.add_argument("--preset", choices=sorted(PRESETS), help="work per measurement (default: from --models, else tiny)")
    p.add_argument("--model-cache", type=Path, default=None, help="where tiny/large models are built (default ~/.cache/paraformer-asr/bench-models)")
    p.add_argument("--label", help="name of the results (default: the model size)")
    p.add_argument("--out", type=Path, help="JSON path (default bench/results/<label>.json)")
    p.add_argument("--plot", type=Path, help="PNG path (default bench/results/<label>.png); 'none' for no plot")
    p.add_argument("--plot-python", help="a Python with matplotlib for bench/plot.py (default: this one if it has matplotlib, else /tmp/benchvenv/bin/python)")
    p.add_argument("--phases", default="sweep,overhead,overload", help="which parts to run")
    p.add_argument("--sets", help="audio sets for the sweep: short,long")
    p.add_argument("--concurrency", help="concurrency levels for the short set, e.g. 1,4,16,32,64")
    p.add_argument("--long-concurrency", help="concurrency levels for the long set")
    p.add_argument("--requests-per-client", type=int)
    p.add_argument("--min-requests", type=int)
    p.add_argument("--max-requests", type=int)
    p.add_argument("--point-seconds", type=float, help="stop sending new requests of a sweep point after this long")
    p.add_argument("--long-requests-per-client", type=int)
    p.add_argument("--long-min-requests", type=int)
    p.add_argument("--long-max-requests", type=int)
    p.add_argument("--long-point-seconds", type=float)
    p.add_argument("--overhead-reps", type=int, help="requests per mode in the overhead comparison")
    p.add_argument("--overload-queue-items", type=int, help="--max-queue-items of the overload server")
    p.add_argument(
        "--overload-queue-wait",
        default="0",
        help="--max-queue-wait-seconds of the overload server: seconds, 0 for none, or 'p99' for the p99 latency of "
        "the closed-loop sweep point at the same queue depth (the latency that accepted requests are to keep)",
    )
    p.add_argument("--overload-phases", help="seconds of the 0.5x, 10x and 0.5x phases, e.g. 5,10,8")
    p.add_argument(
        "--overload-low-share", type=float, default=0.5,
        help="the load before and after the flood, as a share of the sustainable rate (which the sweep measures "
        "with full batches: a CPU serving small batches may be near its limit at 0.5x already)",
    )  # fmt: skip
    p.add_argument("--regoal", type=Path, metavar="RESULT.json", help="judge the goals of a stored result again (recovery from its timeline) and exit")
    p.add_argument("--sustainable-rps", type=float, help="skip measuring the sustainable rate and use this")
    p.add_argument("--timeout-s", type=float, help="per-request deadline")
    p.add_argument("--connections", type=int, default=8, help="TCP connections the clients share (closed loop: at most one per client)")
    p.add_argument("--goal-ratio", type=float, help="throughput goal, batching on / off, at 32 clients")
    p.add_argument("--max-batch-size", type=int, default=16, help="batching-ON server (the OFF server uses 1)")
    p.add_argument("--max-batch-wait-ms", type=float, default=5.0)
    p.add_argument("--max-batch-audio-seconds", type=float, default=300.0)
    p.add_argument("--torch-threads", type=int, default=0, help="for every server and the in-process engine (0: one per core)")
    p.add_argument("--device", default="cpu", help="inference device of every server and the in-process engine: cpu, cuda, cuda:N")
    p.add_argument(
        "--server-cpus", help="pin every server, with its worker processes, to these cores (e.g. 1 or 2-15): clients on "
        "other machines, imitated on one machine; the sustainable rate is then that of these cores",
    )  # fmt: skip
    p.add_argument("--client-cpus", help="pin this process (the load generator and the in-process engine) to these cores, e.g. 0")
    p.add_argument("--server-flag", action="append", default=[], metavar="NAME=VALUE", help="extra serve flag for both sweep servers, e.g. max-queue-items=512")
    p.add_argument(
        "--compare", action="append", default=[], metavar="NAME=VALUE",
        help="the sweep's second server is the batching-ON server with this serve flag changed, instead of batching "
        "OFF (e.g. model-processes=off): 'x' then reads ON / that server; the batching goals are not judged",
    )  # fmt: skip
    args = p.parse_args(argv)
    try:
        args.server_cpus_set, args.client_cpus_set = cpu_list(args.server_cpus), cpu_list(args.client_cpus)
    except ValueError:
        p.error(f"--server-cpus / --client-cpus take core numbers and ranges like 0 or 1,3 or 2-15, not {args.server_cpus!r} / {args.client_cpus!r}")
    if args.server_cpus_set and args.client_cpus_set and args.server_cpus_set & args.client_cpus_set:
        p.error("--server-cpus and --client-cpus overlap: pinning is there to keep them apart")
    if not 0 < args.overload_low_share < 1:  # the recovery goal divides by the capacity it leaves
        p.error(f"--overload-low-share must be between 0 and 1, not {args.overload_low_share:g}")
    preset = args.preset or (args.models if args.models in PRESETS else "tiny")
    for key, value in PRESETS[preset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.preset = preset
    args.label = args.label or (args.models if args.models in PRESETS else Path(args.models).name)
    args.out = args.out or REPO / "bench" / "results" / f"{args.label}.json"
    if args.plot is None:
        args.plot = REPO / "bench" / "results" / f"{args.label}.png"
    return args


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def log(*parts) -> None:
    print(*parts, flush=True)


def serve_flags(pairs: list[str]) -> dict[str, str]:
    """NAME=VALUE pairs of serve flags, as Server keyword names."""
    out = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        out[name.lstrip("-").replace("-", "_")] = value
    return out


def serve_supports(flag: str) -> bool:
    out = subprocess.run([*CLI, "serve", "--help"], capture_output=True, text=True, env=source_env()).stdout
    return flag in out


# ---------------------------------------------------------------------------- sweep
async def warm_up(server: Server, audio: AudioSet, timeout_s: float) -> None:
    async with Client(server.target, audio, timeout_s) as client:
        await closed_loop(client, 4, 8, 120.0)


async def run_point(server: Server, audio: AudioSet, concurrency: int, requests: int, seconds: float, timeout_s: float, connections: int) -> dict:
    before = server.scrape()
    cpu_server, cpu_client, cpu_machine = server.cpu_seconds(), time.process_time(), machine_busy_seconds()
    cpu_main = server.cpu_seconds(main_only=True)
    async with Client(server.target, audio, timeout_s, min(connections, concurrency)) as client:
        calls, wall = await closed_loop(client, concurrency, requests, seconds)
    cpu_server, cpu_client = server.cpu_seconds() - cpu_server, time.process_time() - cpu_client
    cpu_main = server.cpu_seconds(main_only=True) - cpu_main
    cpu_others = machine_busy_seconds() - cpu_machine - cpu_server - cpu_client
    after = server.scrape()
    point = {"concurrency": concurrency, **summarize(calls, wall)}
    batches = after.get("batches", 0) - before.get("batches", 0)
    segments = after.get("batch_segments", 0) - before.get("batch_segments", 0)
    busy = after.get("engine_busy_s", 0) - before.get("engine_busy_s", 0)
    point["server"] = {
        "asr_calls": int(batches),
        "segments": int(segments),
        "mean_batch": round(segments / batches, 2) if batches else None,
        "asr_busy_s": round(busy, 3),
        "asr_busy_fraction": round(busy / wall, 3) if wall else None,
        "cpu_cores_used": round(cpu_server / wall, 2) if wall else None,
        # The server process alone: near 1.0 while its workers idle says its GIL is the limit.
        "main_process_cpu_cores_used": round(cpu_main / wall, 2) if wall else None,
    }
    point["client_cpu_cores_used"] = round(cpu_client / wall, 2) if wall else None
    # Everything else on the machine (other people's processes): a disturbed point shows here.
    point["other_cpu_cores_used"] = round(max(0.0, cpu_others) / wall, 2) if wall else None
    return point


def sweep(args, servers: dict[str, Server], sets: list[AudioSet]) -> dict:
    out = {}
    for audio in sets:
        if audio.name == "long":
            levels = ints(args.long_concurrency)
            per_client, lo, hi, seconds = args.long_requests_per_client, args.long_min_requests, args.long_max_requests, args.long_point_seconds
        else:
            levels = ints(args.concurrency)
            per_client, lo, hi, seconds = args.requests_per_client, args.min_requests, args.max_requests, args.point_seconds
        points: dict[str, list[dict]] = {name: [] for name in servers}
        for k, c in enumerate(levels):
            requests = int(min(max(per_client * c, lo, c), hi))
            order = list(servers) if k % 2 == 0 else list(servers)[::-1]  # alternate who goes first
            for name in order:
                point = asyncio.run(run_point(servers[name], audio, c, requests, seconds, args.timeout_s, args.connections))
                points[name].append(point)
                log(
                    f"  {audio.name:5s} c={c:<3d} {name:3s}: {point['ok']}/{point['requests']} ok in {point['wall_s']:.1f} s, "
                    f"{point['requests_per_s']:.2f} req/s, {point['audio_s_per_s']:.1f} audio-s/s, p50 {fmt(point['p50_ms'], 0)} "
                    f"p99 {fmt(point['p99_ms'], 0)} ms, mean batch {fmt(point['server']['mean_batch'], 2)}, errors {point['errors'] or '-'}"
                )
        ratios = []
        for on, off in zip(points["on"], points["off"], strict=True):
            ratios.append({
                "concurrency": on["concurrency"],
                "throughput_x": ratio(on["requests_per_s"], off["requests_per_s"]),
                "p50_x": ratio(on["p50_ms"], off["p50_ms"]),
                "p99_x": ratio(on["p99_ms"], off["p99_ms"]),
            })  # fmt: skip
        described = {"description": audio.description, "clips": len(audio.clips), "mean_seconds": audio.mean_seconds}
        out[audio.name] = {"audio": described, **points, "ratios": ratios}
    return out


def print_sweep(result: dict) -> None:
    for name, data in result.items():
        log(f"\n{name}: {data['audio']['description']}")
        rows = []
        for on, off, r in zip(data["on"], data["off"], data["ratios"], strict=True):
            rows.append([
                on["concurrency"], on["requests_per_s"], off["requests_per_s"], r["throughput_x"],
                on["audio_s_per_s"], off["audio_s_per_s"],
                on["p50_ms"], off["p50_ms"], on["p95_ms"], off["p95_ms"], on["p99_ms"], off["p99_ms"], r["p99_x"],
                on["server"]["mean_batch"], on["server"]["cpu_cores_used"], off["server"]["cpu_cores_used"],
                on["server"]["main_process_cpu_cores_used"], off["server"]["main_process_cpu_cores_used"],
                max(on["other_cpu_cores_used"], off["other_cpu_cores_used"]), _errors(on), _errors(off),
            ])  # fmt: skip
        log(table(
            ["clients", "req/s on", "req/s off", "x", "audio-s/s on", "audio-s/s off", "p50 on", "p50 off",
             "p95 on", "p95 off", "p99 on", "p99 off", "p99 x", "batch", "cores on", "cores off", "main on", "main off", "others", "errors on", "errors off"],
            rows,
        ))  # fmt: skip


def _errors(point: dict) -> str:
    return ",".join(f"{k}:{v}" for k, v in point["errors"].items()) or "0"


# ---------------------------------------------------------------------------- overhead
def engine_settings(args, models, **overrides):
    from app.config import Settings

    values = dict(
        asr_model=str(models.asr), vad_model=str(models.vad), punc_model=str(models.punc),
        allow_random_weights=True, device=args.device, torch_threads=args.torch_threads, metrics_port=0, port=0,
        max_batch_size=args.max_batch_size, max_batch_wait_ms=args.max_batch_wait_ms,
        max_batch_audio_seconds=args.max_batch_audio_seconds, model_name="bench",
    )  # fmt: skip
    if "online_model" in Settings.__dataclass_fields__:
        values["online_model"] = "none"
    if "model_processes" in Settings.__dataclass_fields__:
        values["model_processes"] = "off"  # the direct call: the model in this process, as the baseline of "overhead"
    values.update(overrides)
    return Settings(**values).validate()


async def overhead(args, servers: dict[str, Server], models, audio: AudioSet) -> dict:
    """Concurrency 1: the server vs the same pipeline in this process, interleaved in blocks."""
    from app.core.audio import AudioInput
    from app.core.pipeline import RecognitionOptions, RecognitionPipeline
    from app.engine.funasr_engine import FunasrEngine

    logging.getLogger().setLevel(logging.WARNING)  # FunASR turns the root logger to INFO on import
    settings_on = engine_settings(args, models)
    engine = await asyncio.to_thread(FunasrEngine.load, settings_on)
    pipe_on = RecognitionPipeline(engine, settings_on, "bench")
    pipe_off = RecognitionPipeline(engine, engine_settings(args, models, max_batch_size=1), "bench")
    await pipe_on.start()
    await pipe_off.start()
    inputs = [AudioInput(c.wav) for c in audio.clips]
    clients = {name: Client(s.target, audio, args.timeout_s) for name, s in servers.items()}
    for c in clients.values():
        await c.__aenter__()

    async def grpc_call(name, i):
        call = await clients[name].call(i, 0.0)
        if call.code != "OK":
            raise RuntimeError(f"overhead call to {name} failed: {call.code}")
        return call.latency_s

    def direct(pipe):
        async def run(i):
            start = time.perf_counter()
            await pipe.recognize(inputs[i % len(inputs)], RecognitionOptions())
            return time.perf_counter() - start

        return run

    modes = {
        "grpc_on": lambda i: grpc_call("on", i),
        "inproc_on": direct(pipe_on),
        "grpc_off": lambda i: grpc_call("off", i),
        "inproc_off": direct(pipe_off),
    }
    samples: dict[str, list[float]] = {m: [] for m in modes}
    block = 5
    for fn in modes.values():  # warm-up, not counted
        for i in range(3):
            await fn(i)
    rounds = max(1, args.overhead_reps // block)
    names = list(modes)
    for r in range(rounds):
        for m in names[r % len(names) :] + names[: r % len(names)]:  # rotate who goes first
            for i in range(block):
                samples[m].append(await modes[m](r * block + i))
    for c in clients.values():
        await c.__aexit__()
    await pipe_on.scheduler.close()
    await pipe_off.scheduler.close()
    engine.close()

    stats = {m: {"n": len(v), **percentiles_ms(v)} for m, v in samples.items()}
    med = {m: stats[m]["p50_ms"] for m in modes}

    def over(a, b):
        return {"extra_ms": round(med[a] - med[b], 2), "ratio": ratio(med[a], med[b]), "extra_pct": round(100 * (med[a] / med[b] - 1), 1)}

    return {
        "audio": audio.description,
        "block": block,
        "modes": stats,
        "transport_overhead_batching_on": over("grpc_on", "inproc_on"),
        "transport_overhead_batching_off": over("grpc_off", "inproc_off"),
        "total_overhead_vs_unbatched_pipeline": over("grpc_on", "inproc_off"),
    }


def print_overhead(o: dict) -> None:
    log(f"\noverhead at concurrency 1 ({o['audio']}; medians of {o['modes']['grpc_on']['n']} requests per mode, interleaved in blocks of {o['block']}):")
    rows = [[m, s["p50_ms"], s["p95_ms"], s["mean_ms"]] for m, s in o["modes"].items()]
    log(table(["mode", "median ms", "p95 ms", "mean ms"], rows))
    for key in ("transport_overhead_batching_on", "transport_overhead_batching_off", "total_overhead_vs_unbatched_pipeline"):
        v = o[key]
        log(f"  {key}: {v['extra_ms']:+.2f} ms ({v['extra_pct']:+.1f} %, x{v['ratio']})")


# ---------------------------------------------------------------------------- overload
async def overload(args, server: Server, audio: AudioSet, sustainable_rps: float) -> dict:
    base_s, over_s, rec_s = (float(x) for x in args.overload_phases.split(","))
    low, high = args.overload_low_share * sustainable_rps, OVERLOAD_FACTOR * sustainable_rps
    phases = [("before", low, base_s), ("overload", high, over_s), ("after", low, rec_s)]
    before = server.scrape()
    samples: list[tuple[float, float, float, float]] = []  # (time since start, server, client, machine CPU s)
    probes: list[tuple[float, float]] = []  # (time since start, health check latency s)

    async def sample_cpu(t0: float) -> None:
        while True:
            samples.append((time.perf_counter() - t0, server.cpu_seconds(), time.process_time(), machine_busy_seconds()))
            await asyncio.sleep(0.25)

    async def probe_health(t0: float) -> None:
        """grpc.health.v1 Check every 50 ms on its own channel: how quickly the server's event loop answers."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                start = time.perf_counter()
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
                probes.append((start - t0, time.perf_counter() - start))
                await asyncio.sleep(0.05)

    async with Client(server.target, audio, args.timeout_s, args.connections) as client:
        t0 = time.perf_counter()
        background = [asyncio.ensure_future(sample_cpu(t0)), asyncio.ensure_future(probe_health(t0))]
        out, wall = await open_loop(client, phases)
        for task in background:
            task.cancel()
    after = server.scrape()
    result = {
        "sustainable_rps": round(sustainable_rps, 3),
        "phases": [{"name": n, "rate_rps": round(r, 3), "seconds": s} for n, r, s in phases],
        "server_rejected": int(after.get("rejected", 0) - before.get("rejected", 0)),
        "server_rejected_by_reason": {
            key.removeprefix("rejected_"): int(after[key] - before.get(key, 0))
            for key in sorted(after)
            if key.startswith("rejected_queue_") and after[key] - before.get(key, 0)
        },
    }
    # The server's own view of the refusals (its latency histogram, 10 ms bucket): without the
    # client's and the network's share, which a load generator on the same 2 cores inflates.
    n = after.get("rejected_server", 0) - before.get("rejected_server", 0)
    if n:
        within = after.get("rejected_within_10ms_server", 0) - before.get("rejected_within_10ms_server", 0)
        seconds = after.get("rejected_server_seconds", 0) - before.get("rejected_server_seconds", 0)
        result["server_side_rejections"] = {"count": int(n), "within_10ms_fraction": round(within / n, 4), "mean_ms": round(1000 * seconds / n, 2)}
    # Garbage collections during the three phases: a full one stops every RPC (app/metrics.py).
    gc_pauses = {}
    for gen in ("0", "1", "2"):
        count = after.get(f"gc{gen}_count", 0) - before.get(f"gc{gen}_count", 0)
        if count:
            long_ones = count - (after.get(f"gc{gen}_within_50ms", 0) - before.get(f"gc{gen}_within_50ms", 0))
            total = after.get(f"gc{gen}_seconds", 0) - before.get(f"gc{gen}_seconds", 0)
            gc_pauses[gen] = {"count": int(count), "total_ms": round(1000 * total, 1), "over_50ms": int(long_ones)}
    if gc_pauses:
        result["server_gc_pauses"] = gc_pauses
    over_start, over_end = base_s, base_s + over_s
    for name, calls in out.items():
        ok = [c for c in calls if c.code == "OK"]
        rejected = [c for c in calls if c.code == "RESOURCE_EXHAUSTED"]
        sent = sorted(c.sent_s for c in calls)
        span = {"before": (0, base_s), "overload": (over_start, over_end), "after": (over_end, over_end + rec_s)}[name]
        phase = {
            "sent": len(calls),
            "offered_rps": round(len(calls) / (span[1] - span[0]), 2),
            "send_lag_ms_p99": None,
            "ok": len(ok),
            "ok_rps": round(len(ok) / (span[1] - span[0]), 2),
            "rejected": len(rejected),
            "other_errors": {k: v for k, v in summarize(calls, 1.0)["errors"].items() if k != "RESOURCE_EXHAUSTED"},
            "accepted_latency": percentiles_ms([c.latency_s for c in ok]),
            "rejected_latency": percentiles_ms([c.latency_s for c in rejected]),
            "rejected_within_10ms_fraction": round(sum(c.latency_s * 1000 <= REJECT_WITHIN_MS for c in rejected) / len(rejected), 4) if rejected else None,
        }
        inside = [x for x in samples if span[0] <= x[0] <= span[1]]
        if len(inside) >= 2:
            dt_s = inside[-1][0] - inside[0][0]
            server_s, client_s, machine_s = (inside[-1][k] - inside[0][k] for k in (1, 2, 3))
            phase["server_cpu_cores"] = round(server_s / dt_s, 2)
            phase["client_cpu_cores"] = round(client_s / dt_s, 2)
            phase["other_cpu_cores"] = round(max(0.0, machine_s - server_s - client_s) / dt_s, 2)
        phase["health_check_latency"] = percentiles_ms([lat for t, lat in probes if span[0] <= t < span[1]])
        if sent:  # how late the generator sent (the client shares the machine with the server)
            due = np.arange(len(sent)) / (len(calls) / (span[1] - span[0])) + span[0]
            phase["send_lag_ms_p99"] = round(float(np.percentile((np.asarray(sent) - due) * 1000, 99)), 2)
        result[name] = phase
    result["timeline"] = calls_as_rows([c for calls in out.values() for c in calls])
    result["recovery"] = recovery(result["timeline"], over_end, result["before"]["accepted_latency"]["p50_ms"] or 0.0, low)
    result["wall_s"] = round(wall, 2)
    return result


def recovery(timeline: list[list], over_end_s: float, before_p50_ms: float, after_rps: float) -> dict:
    """When latency came back after the overload, from the timeline rows [sent_s, latency_ms, code].

    In bins of send time after the overload, each sized to hold about RECOVERY_BIN_REQUESTS
    requests at the "after" rate (at least 0.5 s): the first bin from which on every bin has no
    error and a median latency within 1.5x the "before" median (at least +20 ms). Medians of a
    few requests, so that one request stalled by another process on a shared machine does not
    read as "not recovered"; the stragglers are counted apart.
    """
    bin_s = max(0.5, math.ceil(2 * RECOVERY_BIN_REQUESTS / after_rps) / 2) if after_rps > 0 else 0.5
    limit_ms = max(1.5 * before_p50_ms, before_p50_ms + 20.0)
    bins: dict[int, list] = {}
    for row in timeline:
        if row[0] >= over_end_s:
            bins.setdefault(int((row[0] - over_end_s) / bin_s), []).append(row)
    good = {k: all(r[2] == "OK" for r in v) and float(np.median([r[1] for r in v])) <= limit_ms for k, v in bins.items()}
    first_ok = next((k for k in sorted(bins) if all(good[j] for j in bins if j >= k)), None)
    recovered_at = None if first_ok is None else bin_s * first_ok
    after = [r for v in bins.values() for r in v]
    steady = [r for r in after if recovered_at is not None and r[0] - over_end_s >= recovered_at]
    return {
        "bin_s": bin_s,
        "median_limit_ms": round(limit_ms, 2),
        "recovered_after_s": recovered_at,
        "errors_after_overload": sum(r[2] != "OK" for r in after),
        "stragglers_after_recovery": sum(r[1] > 2 * limit_ms for r in steady),
        "after_steady_latency": percentiles_ms([r[1] / 1000 for r in steady if r[2] == "OK"]),
        "bins": [
            {"from_s": bin_s * k, "sent": len(v), "errors": sum(r[2] != "OK" for r in v), "p50_ms": round(float(np.median([r[1] for r in v])), 1)}
            for k, v in sorted(bins.items())
        ],
    }


def print_overload(o: dict, queue_items: int, sweep_ref: dict | None) -> None:
    low = o["phases"][0]["rate_rps"] / o["sustainable_rps"]
    shares = f"{low:.2g}x / {OVERLOAD_FACTOR:g}x / {low:.2g}x"
    log(f"\noverload (--max-queue-items {queue_items}; sustainable {o['sustainable_rps']:.2f} req/s; open loop {shares}):")
    rows = []
    for name in ("before", "overload", "after"):
        p = o[name]
        rows.append([
            name, p["offered_rps"], p["ok_rps"], p["rejected"], _fmt_errors(p["other_errors"]),
            p["accepted_latency"]["p50_ms"], p["accepted_latency"]["p99_ms"],
            p["rejected_latency"]["p50_ms"], p["rejected_latency"]["p99_ms"], p["rejected_latency"]["max_ms"],
            fmt(None if p["rejected_within_10ms_fraction"] is None else 100 * p["rejected_within_10ms_fraction"]), p["send_lag_ms_p99"],
            p["health_check_latency"]["p50_ms"], p["health_check_latency"]["max_ms"],
            p.get("server_cpu_cores"), p.get("client_cpu_cores"), p.get("other_cpu_cores"),
        ])  # fmt: skip
    log(table(
        ["phase", "offered/s", "ok/s", "rejected", "other err", "ok p50", "ok p99", "rej p50", "rej p99", "rej max", "rej<=10ms %", "send lag p99",
         "health p50", "health max", "server cores", "client cores", "other cores"],
        rows,
    ))  # fmt: skip
    if sweep_ref:
        log(f"  closed loop at {sweep_ref['concurrency']} clients (same queue depth), batching on: p50 {sweep_ref['p50_ms']} ms, p99 {sweep_ref['p99_ms']} ms")
    if o.get("server_side_rejections"):
        sr = o["server_side_rejections"]
        log(f"  server-side (its latency histogram): {sr['count']} refusals, mean {sr['mean_ms']} ms, {100 * sr['within_10ms_fraction']:.1f} % within 10 ms")
    if o.get("server_gc_pauses"):
        log("  server's garbage collections in the three phases: " + ", ".join(
            f"generation {g}: {v['count']} ({v['total_ms']} ms in all, {v['over_50ms']} over 50 ms)" for g, v in o["server_gc_pauses"].items()
        ))  # fmt: skip
    if o.get("server_rejected_by_reason"):
        limit = f" (expected-wait limit {o['queue_wait_limit_s']} s)" if o.get("queue_wait_limit_s") else ""
        log(f"  refusals by reason{limit}: " + ", ".join(f"{k} {v}" for k, v in o["server_rejected_by_reason"].items()))
    r = o["recovery"]
    steady = r["after_steady_latency"]
    log(
        f"  recovered {fmt(r['recovered_after_s'], 2)} s after the overload ended "
        f"(from then on each {r.get('bin_s', 0.5):g} s bin error-free, median <= {r['median_limit_ms']} ms); "
        f"after that p50 {steady['p50_ms']} ms p99 {steady['p99_ms']} ms, {r['stragglers_after_recovery']} stragglers over 2x; "
        f"{r['errors_after_overload']} errors after the overload"
    )


def _fmt_errors(errors: dict) -> str:
    return ",".join(f"{k}:{v}" for k, v in errors.items()) or "0"


# ---------------------------------------------------------------------------- goals
def goals(args, result: dict) -> dict:
    out = {}
    short = result.get("sweep", {}).get("short")
    if short and not args.compare:
        r = next((r for r in short["ratios"] if r["concurrency"] == GOAL_CONCURRENCY), None)
        if r:
            out["batching_throughput"] = {
                "goal": f">= {args.goal_ratio:g}x batching-off at {GOAL_CONCURRENCY} clients (2 s utterances)",
                "measured": r["throughput_x"], "met": r["throughput_x"] is not None and r["throughput_x"] >= args.goal_ratio,
            }  # fmt: skip
            out["batching_p99"] = {"goal": "p99 with batching <= p99 without", "measured": r["p99_x"], "met": r["p99_x"] is not None and r["p99_x"] <= 1.0}
    o = result.get("overhead")
    if o:
        t = o["transport_overhead_batching_on"]
        out["server_overhead"] = {
            "goal": "<= 5 % or <= 3 ms over the in-process pipeline (concurrency 1, same settings)",
            "measured": f"{t['extra_ms']:+.2f} ms ({t['extra_pct']:+.1f} %)", "met": t["extra_pct"] <= 5.0 or t["extra_ms"] <= 3.0,
        }  # fmt: skip
        t = o["total_overhead_vs_unbatched_pipeline"]
        out["server_overhead_incl_batch_wait"] = {
            "goal": "same, server with batching ON vs the in-process pipeline with batching OFF (includes the batch wait)",
            "measured": f"{t['extra_ms']:+.2f} ms ({t['extra_pct']:+.1f} %)", "met": t["extra_pct"] <= 5.0 or t["extra_ms"] <= 3.0,
        }  # fmt: skip
    ov = result.get("overload")
    if ov:
        p = ov["overload"]
        rej = p["rejected_latency"]
        out["overload_reject_fast"] = {
            "goal": f"rejected requests get RESOURCE_EXHAUSTED within {REJECT_WITHIN_MS:g} ms at {OVERLOAD_FACTOR:g}x load",
            "measured": f"{p['rejected']} rejected, p50 {rej['p50_ms']} ms, p99 {rej['p99_ms']} ms, max {rej['max_ms']} ms, "
            f"{fmt(None if p['rejected_within_10ms_fraction'] is None else 100 * p['rejected_within_10ms_fraction'])} % within {REJECT_WITHIN_MS:g} ms",
            "met": bool(p["rejected"]) and rej["p99_ms"] is not None and rej["p99_ms"] <= REJECT_WITHIN_MS,
        }
        ref = ov.get("reference_closed_loop")
        acc = p["accepted_latency"]["p99_ms"]
        if ref and acc is not None:
            out["overload_accepted_latency"] = {
                "goal": "accepted requests keep their latency: p99 under overload <= 1.5x the closed-loop p99 at the same queue depth",
                "measured": f"p99 {acc} ms vs {ref['p99_ms']} ms", "met": acc <= 1.5 * ref["p99_ms"],
            }  # fmt: skip
        # The queue holds up to drain_s of work when the flood stops, and the "after" load keeps
        # arriving meanwhile: first-come first-served, the backlog shrinks only by the capacity
        # left over, so a new request sees its old latency after drain_s / (1 - after share) at
        # the earliest (2x drain_s at 0.5x). Until the eighth session this read drain_s + 1 s.
        rec = ov["recovery"]
        after_rate = next(p["rate_rps"] for p in ov["phases"] if p["name"] == "after")
        after_share = after_rate / ov["sustainable_rps"]
        clear_s = ov["drain_s"] / (1.0 - after_share)
        out["overload_recovery"] = {
            "goal": f"recovers as soon as the load drops: within the time to clear the queue while the {after_share:.2g}x load keeps arriving, + 1 s",
            "measured": f"{fmt(rec['recovered_after_s'], 2)} s (queue drains in {ov['drain_s']:.2f} s at full speed, clears in {clear_s:.2f} s)",
            "met": rec["recovered_after_s"] is not None and rec["recovered_after_s"] <= clear_s + 1.0,
        }  # fmt: skip
    return out


def regoal(path: Path) -> int:
    """Judge a stored result's goals again, its recovery recomputed from its timeline (printed, not written)."""
    result = json.loads(path.read_text())
    ov = result.get("overload")
    if ov and ov.get("timeline"):
        phases = {p["name"]: p for p in ov["phases"]}
        over_end = phases["before"]["seconds"] + phases["overload"]["seconds"]
        before_p50 = ov["before"]["accepted_latency"]["p50_ms"] or 0.0
        ov["recovery"] = recovery(ov["timeline"], over_end, before_p50, phases["after"]["rate_rps"])
        r = ov["recovery"]
        log(f"{path.name}: recovered after {fmt(r['recovered_after_s'], 2)} s; {r['bin_s']:g} s bins (sent, median ms): "
            + " ".join(f"{b['sent']}:{b['p50_ms']:.0f}" for b in r["bins"]))  # fmt: skip
    settings = result.get("settings", {})
    print_goals(goals(argparse.Namespace(compare=settings.get("compare") or [], goal_ratio=settings.get("goal_ratio", 3.0)), result))
    return 0


def print_goals(g: dict) -> None:
    log("\ngoals:")
    for name, v in g.items():
        log(f"  [{'MET' if v['met'] else 'NOT MET'}] {name}: {v['goal']}: {v['measured']}")


# ---------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.regoal:
        return regoal(args.regoal)
    phases = set(args.phases.split(","))
    models = ensure_models(args.models, args.model_cache) if args.models in PRESETS else model_dirs(Path(args.models))
    info = machine_info()
    result: dict = {
        "benchmark": "bench.load",
        "label": args.label,
        "command": command_line("bench.load"),
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": info,
        "models": {"kind": args.models, "preset": args.preset},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if not k.endswith("_cpus_set")},
    }
    if args.client_cpus_set:
        pin_this_process(args.client_cpus_set)
    log(f"command: {result['command']}")
    v = info["versions"]
    log(
        f"machine: {info['nproc']} CPUs ({info['cpu_model']}), {info['memory_gib']} GiB, GPU {info.get('gpu') or 'none'}, "
        f"load average {info['loadavg_at_start']}, "
        f"python {info['python']}, torch {v['torch']}, funasr {v['funasr']}, grpc {v['grpc']}, commit {info['git_commit']}"
    )

    common = {"torch_threads": args.torch_threads}
    if serve_supports("--online-model"):
        common["online_model"] = "none"
    common.update(serve_flags(args.server_flag))
    on_flags = {
        **common,
        "max_batch_size": args.max_batch_size,
        "max_batch_wait_ms": args.max_batch_wait_ms,
        "max_batch_audio_seconds": args.max_batch_audio_seconds,
    }
    # "off" names the second server of every comparison: batching off, or with --compare the ON
    # server with other flags, so that one run measures one change on the same machine.
    off_flags = {**on_flags, **serve_flags(args.compare)} if args.compare else {**common, "max_batch_size": 1}
    result["comparison"] = f"batching ON vs {', '.join(args.compare) if args.compare else 'batching OFF (max-batch-size 1)'}"
    log(f"comparison: {result['comparison']}")
    servers = {
        "on": Server("on", models, on_flags, device=args.device, cpus=args.server_cpus_set),
        "off": Server("off", models, off_flags, device=args.device, cpus=args.server_cpus_set),
    }
    result["servers"] = {}
    sets = {name: AUDIO_SETS[name]() for name in args.sets.split(",") if name}
    short = sets.get("short") or AUDIO_SETS["short"]()
    t_start = time.perf_counter()
    try:
        if phases & {"sweep", "overhead"}:
            for s in servers.values():
                s.start()
            for s in servers.values():
                s.wait_ready()
                result["servers"][s.name] = {"command": s.display_command(), "startup_s": round(s.startup_s, 1)}
                log(f"server {s.name}: {s.display_command()} (ready in {s.startup_s:.1f} s)")
            for s in servers.values():
                asyncio.run(warm_up(s, short, args.timeout_s))
        if "sweep" in phases:
            log("\nsweep (closed loop; each point: requests = clamp(per_client x clients) or the time limit, whichever first)")
            result["sweep"] = sweep(args, servers, list(sets.values()))
            print_sweep(result["sweep"])
            save(args, result)
        if "overhead" in phases:
            log("\noverhead ...")
            result["overhead"] = asyncio.run(overhead(args, servers, models, short))
            print_overhead(result["overhead"])
            save(args, result)
    finally:
        for s in servers.values():
            rc = s.stop()
            if s.name in result["servers"]:
                result["servers"][s.name]["exit_code"] = rc
    if "overload" in phases:
        sustainable = args.sustainable_rps
        ref = None
        short_sweep = result.get("sweep", {}).get("short")
        if short_sweep:
            ref = min(short_sweep["on"], key=lambda p: abs(p["concurrency"] - args.overload_queue_items))
        if sustainable is None:
            if not short_sweep:
                raise SystemExit("overload needs the sweep (for the sustainable rate) or --sustainable-rps")
            sustainable = max(p["requests_per_s"] for p in short_sweep["on"])
        drain_s = args.overload_queue_items / sustainable
        if args.overload_queue_wait == "p99":
            if not ref:
                raise SystemExit("--overload-queue-wait p99 needs the sweep (its point at the queue depth)")
            queue_wait_s = ref["p99_ms"] / 1000
        else:
            queue_wait_s = float(args.overload_queue_wait)
        overload_flags = {**on_flags, "max_queue_items": args.overload_queue_items}
        if queue_wait_s:
            overload_flags["max_queue_wait_seconds"] = round(queue_wait_s, 3)
        server = Server("overload", models, overload_flags, device=args.device, cpus=args.server_cpus_set)
        try:
            server.start().wait_ready()
            result["servers"]["overload"] = {"command": server.display_command(), "startup_s": round(server.startup_s, 1)}
            log(f"\nserver overload: {server.display_command()} (ready in {server.startup_s:.1f} s)")
            asyncio.run(warm_up(server, short, args.timeout_s))
            result["overload"] = asyncio.run(overload(args, server, short, sustainable))
            result["overload"]["queue_items"] = args.overload_queue_items
            result["overload"]["drain_s"] = round(drain_s, 3)
            result["overload"]["queue_wait_limit_s"] = round(queue_wait_s, 3)
            if ref:
                result["overload"]["reference_closed_loop"] = {k: ref[k] for k in ("concurrency", "requests_per_s", "p50_ms", "p95_ms", "p99_ms")}
            print_overload(result["overload"], args.overload_queue_items, ref)
        finally:
            result["servers"].setdefault("overload", {})["exit_code"] = server.stop()
    result["goals"] = goals(args, result)
    print_goals(result["goals"])
    result["total_s"] = round(time.perf_counter() - t_start, 1)
    result["loadavg_at_end"] = os.getloadavg()
    save(args, result)
    log(f"\nwrote {os.path.relpath(args.out, REPO)} ({result['total_s']:.0f} s)")
    plot(args)
    return 0


def save(args, result: dict) -> None:
    write_json(args.out, result)


def plot(args) -> None:
    if str(args.plot) == "none":
        return
    python = args.plot_python
    if python is None:
        try:
            import matplotlib  # noqa: F401

            python = sys.executable
        except ImportError:
            python = "/tmp/benchvenv/bin/python" if Path("/tmp/benchvenv/bin/python").exists() else None
    if python is None or (shutil.which(python) is None and not Path(python).exists()):
        log(f"no matplotlib: plot later with  <python with matplotlib> bench/plot.py {os.path.relpath(args.out, REPO)} {os.path.relpath(args.plot, REPO)}")
        return
    subprocess.run([python, str(REPO / "bench" / "plot.py"), str(args.out), str(args.plot)], check=False)


if __name__ == "__main__":
    sys.exit(main())
