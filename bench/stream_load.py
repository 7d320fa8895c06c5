"""Streaming benchmark of StreamingRecognize: real-time streams sustained, interim and final latency,
faster-than-real-time speed, and memory over one hour of audio in one stream.

    .venv/bin/python -m bench.stream_load --models tiny
    .venv/bin/python -m bench.stream_load --models large

One run starts a real server (`paraformer-asr serve` subprocess, loopback port, online + VAD +
offline + punctuation models, TWO_PASS streams) and measures, each part a --phases name:

1. sweep: N concurrent streams (e.g. 10, 25, 50, 75, 100), each sending speech/silence audio
   (2-3 s utterances, 1.5 s pauses) in 100 ms chunks at real-time pace for --seconds; per N: does
   the server keep up, interim latency, final latency after the endpoint, CPU;
2. compare: at one N, TWO_PASS streams (interim results from the online model + offline finals)
   against OFFLINE streams (VAD + offline finals only), interleaved: what the online pass costs;
3. fast: one stream sent as fast as the server takes it: audio seconds per second, with 100 ms
   and 600 ms chunks;
4. memory: one stream of --memory-hours of speech/silence audio as fast as possible, then one
   never-ending utterance (continuous speech, cut by --max-utterance-seconds): server VmRSS (with its worker processes).

Definitions (also in docs/benchmarks-streaming.md). Chunk k (100 ms) is written at
t0 + (k+1) * 100 ms, the moment a live source would have it; sent[k] is when write() was called.
- interim latency: for an interim with end_time_ms E (the audio the online model has decoded up
  to; the server steps when the chunk that ends at E arrives), received - sent[chunk ending at E].
  Also "spoken-to-interim": received - (t0 + E - 600 ms), the age of the oldest audio of the
  600 ms decoding chunk that the interim completes.
- final latency after the endpoint: for a final that follows a SPEECH_END at time S (VAD end of
  speech on the stream clock), received - sent[chunk that completes S + trailing silence], the
  earliest moment an endpointer with that trailing-silence setting could know. Also
  received(final) - received(SPEECH_END).
- keeps up: every stream ends OK, the client's writes stay on schedule (p99 slip < 100 ms), the
  interim latency p95 stays under the online chunk (600 ms: each decoding step finishes before
  the next chunk is complete) and does not grow over the run (median of the last third minus the
  first third < 100 ms).

Writes bench/results/stream_<label>.json and prints tables.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from app.gen.paraformer.asr.v1 import asr_pb2, asr_pb2_grpc
from bench.common import (
    REPO,
    Server,
    command_line,
    fmt,
    machine_info,
    model_dirs,
    percentiles_ms,
    process_tree,
    ratio,
    repair_token_list,
    source_env,
    table,
    write_json,
)
from bench.workload import SAMPLE_RATE_HZ, speechlike

DEFAULT_CACHE = Path.home() / ".cache" / "paraformer-asr" / "stream-bench-models"
PER_MS = SAMPLE_RATE_HZ // 1000
ONLINE_CHUNK_MS = 600
BEGIN, END = asr_pb2.SPEECH_EVENT_TYPE_SPEECH_BEGIN, asr_pb2.SPEECH_EVENT_TYPE_SPEECH_END

PRESETS = {
    "tiny": dict(levels="10,20,30,40,50,75,100", seconds=40.0, compare_level=20, fast_seconds=120.0, memory_hours=1.0, never_ending_s=900.0),
    "large": dict(levels="1,2,3,4,6", seconds=30.0, compare_level=1, fast_seconds=30.0, memory_hours=0.0, never_ending_s=0.0),
}
GOAL_STREAMS = {"tiny": 50}
GOAL_INTERIM_P95_MS = ONLINE_CHUNK_MS + 100
GOAL_FINAL_P95_MS = 300
GOAL_RSS_GROWTH_MB = 50
KEEP_UP_SLIP_P99_MS = 100
KEEP_UP_DRIFT_MS = 100


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="tiny", help="tiny | large (built into --model-cache if missing) or a directory with asr/ vad/ punc/ online/")
    p.add_argument("--model-cache", type=Path, default=DEFAULT_CACHE, help="where tiny/large models are built (outside the repo)")
    p.add_argument("--preset", choices=sorted(PRESETS), help="work per measurement (default: from --models)")
    p.add_argument("--label", help="results name (default: the model size): bench/results/stream_<label>.json")
    p.add_argument("--phases", default="sweep,compare,fast,memory", help="which parts to run")
    p.add_argument("--levels", help="concurrent streams per sweep point, e.g. 10,25,50,75,100")
    p.add_argument("--seconds", type=float, help="audio per stream in a sweep point (sent at real time)")
    p.add_argument("--compare-level", type=int, help="streams in the TWO_PASS vs OFFLINE comparison")
    p.add_argument("--fast-seconds", type=float, help="audio of the faster-than-real-time stream")
    p.add_argument("--memory-hours", type=float, help="audio of the memory stream (speech/silence)")
    p.add_argument("--never-ending-s", type=float, help="continuous speech of the never-ending utterance")
    p.add_argument("--chunk-ms", type=int, default=100, help="audio per message")
    p.add_argument("--trailing-silence-ms", type=int, default=800, help="streaming_config.endpointing.max_trailing_silence_ms")
    p.add_argument("--stagger-s", type=float, default=1.0, help="streams start spread over this long")
    p.add_argument("--stop-after-failures", type=int, default=2, help="sweep: stop after this many levels in a row that do not keep up")
    p.add_argument("--torch-threads", type=int, default=0)
    p.add_argument("--device", default="cpu", help="inference device of the server: cpu, cuda, cuda:N")
    p.add_argument("--max-utterance-seconds", type=float, default=60.0)
    p.add_argument("--server-flag", action="append", default=[], metavar="NAME=VALUE", help="extra serve flag, e.g. torch-threads=1")
    p.add_argument("--target", help="use this running server instead of starting one (no CPU/RSS figures)")
    p.add_argument("--reprint", type=Path, help="recompute the summaries of a results JSON, rewrite it and print its tables; runs nothing")
    args = p.parse_args(argv)
    args.preset = args.preset or (args.models if args.models in PRESETS else "tiny")
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.label = args.label or (args.models if args.models in PRESETS else Path(args.models).name)
    args.out = REPO / "bench" / "results" / f"stream_{args.label}.json"
    return args


def log(*parts) -> None:
    print(*parts, flush=True)


# ---------------------------------------------------------------------------- models, server
def ensure_stream_models(kind_or_dir: str, cache: Path) -> Path:
    import subprocess

    from bench.common import CLI

    root = Path(kind_or_dir) if kind_or_dir not in PRESETS else cache / kind_or_dir
    if not all((root / d / "config.yaml").exists() for d in ("asr", "vad", "punc", "online")):
        if kind_or_dir not in PRESETS:
            raise SystemExit(f"{root} lacks asr/ vad/ punc/ online/ models")
        cmd = [*CLI, "build-demo-models", str(root)] + (["--large"] if kind_or_dir == "large" else [])
        log(f"building {kind_or_dir} models: {' '.join(cmd)}")
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=source_env())
    for sub in ("asr", "online"):
        if (root / sub / "tokens.json").exists():
            repair_token_list(root / sub / "tokens.json")
    return root


def make_server(args, root: Path) -> Server:
    flags: dict[str, object] = {
        "online_model": root / "online",
        "max_streams": 500,
        "max_concurrent_rpcs": 2000,
        "torch_threads": args.torch_threads,
        "max_utterance_seconds": args.max_utterance_seconds,
        "stream_idle_timeout_s": 60,
    }
    for item in args.server_flag:
        name, _, value = item.partition("=")
        flags[name.replace("-", "_")] = value
    return Server(f"stream-{args.label}", model_dirs(root), flags, device=args.device)


def rss_mb(pid: int) -> float | None:
    """VmRSS of the server and its worker processes, summed (a stream's model state lives in a worker)."""
    total = None
    for member in process_tree(pid):
        try:
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmRSS"):
                    total = (total or 0.0) + int(line.split()[1]) / 1024
        except OSError:
            continue
    return total


def machine_busy_s() -> float:
    """CPU seconds all processes of the machine have used so far (/proc/stat), to see other load."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def scrape(server: Server | None) -> dict[str, float]:
    return server.scrape() if server is not None and server.metrics_port else {}


# ---------------------------------------------------------------------------- audio
@dataclass
class Track:
    """One stream's audio, cut into request messages, and where its speech really is."""

    requests: list[asr_pb2.StreamingRecognizeRequest]
    chunk_ms: int
    seconds: float
    speech: list[tuple[int, int]]  # (begin_ms, end_ms)


def speech_silence(seconds: float, seed: int, lead_s: float, speech_s=(2.0, 3.0), pause_s: float = 1.5) -> tuple[np.ndarray, list[tuple[int, int]]]:
    rng = random.Random(seed)
    parts = [np.zeros(int(lead_s * SAMPLE_RATE_HZ), np.float32)]
    spans, pos = [], int(lead_s * 1000)
    k = 0
    while pos < seconds * 1000:
        length = rng.uniform(*speech_s)
        parts.append(speechlike(length, seed=seed * 1000 + k))
        spans.append((pos, pos + int(length * 1000)))
        pos += int(length * 1000)
        parts.append(np.zeros(int(pause_s * SAMPLE_RATE_HZ), np.float32))
        pos += int(pause_s * 1000)
        k += 1
    audio = np.concatenate(parts)[: int(seconds * SAMPLE_RATE_HZ)]
    return audio, [(b, min(e, int(seconds * 1000))) for b, e in spans if b < seconds * 1000]


def pcm16(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()


def make_track(audio: np.ndarray, chunk_ms: int, speech: list[tuple[int, int]]) -> Track:
    data = pcm16(audio)
    step = chunk_ms * PER_MS * 2
    reqs = [asr_pb2.StreamingRecognizeRequest(audio_content=data[i : i + step]) for i in range(0, len(data), step)]
    return Track(reqs, chunk_ms, len(audio) / SAMPLE_RATE_HZ, speech)


def stream_config(args, mode: int = asr_pb2.STREAMING_MODE_TWO_PASS, interim: bool = True) -> asr_pb2.StreamingRecognizeRequest:
    rc = asr_pb2.RecognitionConfig(encoding=asr_pb2.AUDIO_ENCODING_LINEAR16, sample_rate_hertz=SAMPLE_RATE_HZ)
    cfg = asr_pb2.StreamingRecognitionConfig(
        config=rc,
        interim_results=interim,
        mode=mode,
        endpointing=asr_pb2.EndpointingConfig(max_trailing_silence_ms=args.trailing_silence_ms),
    )
    return asr_pb2.StreamingRecognizeRequest(streaming_config=cfg)


# ---------------------------------------------------------------------------- one stream
@dataclass
class StreamRecord:
    t0: float = 0.0  # audio position 0 on the client's clock (paced streams)
    sched: list[float] = field(default_factory=list)
    sent: list[float] = field(default_factory=list)
    responses: list[tuple] = field(default_factory=list)  # (received, kind, a, b, utterance)
    code: str = ""
    details: str = ""
    ended: float = 0.0


CHANNEL_OPTIONS = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_receive_message_length", 16 * 1024 * 1024)]


async def run_stream(
    target: str, track: Track, config_req, pace: bool, start_at: float, rec: StreamRecord, timeout_s: float, n_chunks: int | None = None, on_progress=None
) -> StreamRecord:
    """Send the track (paced at real time from start_at, or as fast as the server takes it)."""
    async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        await asyncio.wait_for(channel.channel_ready(), 30)
        stub = asr_pb2_grpc.RecognizerStub(channel)
        delay = start_at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        call = stub.StreamingRecognize(timeout=timeout_s)

        async def reader():
            while True:
                r = await call.read()
                if r is grpc.aio.EOF:
                    return
                now = time.perf_counter()
                if r.results:
                    res = r.results[0]
                    rec.responses.append((now, "final" if res.is_final else "interim", res.start_time_ms, res.end_time_ms, res.utterance_index))
                elif r.speech_event_type == BEGIN:
                    rec.responses.append((now, "begin", r.speech_event_time_ms, 0, -1))
                elif r.speech_event_type == END:
                    rec.responses.append((now, "end", r.speech_event_time_ms, 0, -1))

        read_task = asyncio.ensure_future(reader())
        try:
            await call.write(config_req)
            rec.t0 = time.perf_counter()
            chunk_s = track.chunk_ms / 1000
            total = n_chunks or len(track.requests)
            for k in range(total):
                req = track.requests[k % len(track.requests)]
                if pace:
                    due = rec.t0 + (k + 1) * chunk_s
                    wait = due - time.perf_counter()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    rec.sched.append(due)
                now = time.perf_counter()
                rec.sent.append(now)
                await call.write(req)
                if on_progress is not None and k % 50 == 0:
                    on_progress(k)
            await call.done_writing()
            await read_task
            rec.code = (await call.code()).name
        except grpc.aio.AioRpcError as e:
            rec.code, rec.details = e.code().name, e.details() or ""
        except asyncio.CancelledError:
            call.cancel()
            raise
        finally:
            read_task.cancel()
            if not rec.code:
                code = await call.code()
                rec.code, rec.details = code.name, (await call.details()) or ""
        rec.ended = time.perf_counter()
    return rec


# ---------------------------------------------------------------------------- analysis
def completing_chunk(pos_ms: float, chunk_ms: int) -> int:
    return max(0, math.ceil(pos_ms / chunk_ms) - 1)


@dataclass
class Latencies:
    interim: list[tuple[float, float]] = field(default_factory=list)  # (time in run, latency s)
    spoken_to_interim: list[float] = field(default_factory=list)
    final_endpoint: list[tuple[float, float]] = field(default_factory=list)
    final_after_end_event: list[float] = field(default_factory=list)
    end_event_after_endpoint: list[float] = field(default_factory=list)
    final_after_true_endpoint: list[float] = field(default_factory=list)
    vad_end_minus_true_end: list[float] = field(default_factory=list)
    slip: list[float] = field(default_factory=list)
    finals: int = 0
    endpoint_finals: int = 0
    flush_or_cap_finals: int = 0
    interims: int = 0
    speech_truth: int = 0


def analyse(records: list[StreamRecord], tracks: list[Track], args, run_t0: float) -> Latencies:
    lat = Latencies()
    for rec, track in zip(records, tracks, strict=True):
        n = len(rec.sent)
        c = track.chunk_ms
        lat.speech_truth += len(track.speech)
        lat.slip += [s - d for s, d in zip(rec.sent, rec.sched, strict=False)]
        last_end: tuple[float, int] | None = None
        for received, kind, a, b, _utt in rec.responses:
            if kind == "interim":
                lat.interims += 1
                k = completing_chunk(b, c)
                if k < n:
                    lat.interim.append((received - run_t0, received - rec.sent[k]))
                    lat.spoken_to_interim.append(received - (rec.t0 + (b - ONLINE_CHUNK_MS) / 1000))
            elif kind == "end":
                last_end = (received, a)
                k = completing_chunk(a + args.trailing_silence_ms, c)
                if k < n:
                    lat.end_event_after_endpoint.append(received - rec.sent[k])
            elif kind == "final":
                lat.finals += 1
                if last_end is not None and last_end[1] == b:
                    k = completing_chunk(b + args.trailing_silence_ms, c)
                    if k < n:
                        lat.endpoint_finals += 1
                        lat.final_endpoint.append((received - run_t0, received - rec.sent[k]))
                        lat.final_after_end_event.append(received - last_end[0])
                    else:
                        lat.flush_or_cap_finals += 1
                    true_end = min((e for _, e in track.speech), key=lambda e: abs(e - b), default=None)
                    if true_end is not None and abs(true_end - b) < 1500:
                        lat.vad_end_minus_true_end.append((b - true_end) / 1000)
                        k = completing_chunk(true_end + args.trailing_silence_ms, c)
                        if k < n:
                            lat.final_after_true_endpoint.append(received - rec.sent[k])
                else:
                    lat.flush_or_cap_finals += 1
                last_end = None
    return lat


def thirds_drift_ms(samples: list[tuple[float, float]]) -> dict:
    if len(samples) < 9:
        return {"first_p50_ms": None, "last_p50_ms": None, "drift_ms": None}
    samples = sorted(samples)
    span = samples[-1][0] - samples[0][0]
    lo, hi = samples[0][0] + span / 3, samples[0][0] + 2 * span / 3
    first = [v for t, v in samples if t <= lo] or [samples[0][1]]
    last = [v for t, v in samples if t >= hi] or [samples[-1][1]]
    a, b = float(np.median(first)) * 1000, float(np.median(last)) * 1000
    return {"first_p50_ms": round(a, 1), "last_p50_ms": round(b, 1), "drift_ms": round(b - a, 1)}


def summarize_point(lat: Latencies, records: list[StreamRecord], expect_interims: bool = True) -> dict:
    codes: dict[str, int] = {}
    for r in records:
        codes[r.code] = codes.get(r.code, 0) + 1
    interim = percentiles_ms([v for _, v in lat.interim])
    final = percentiles_ms([v for _, v in lat.final_endpoint])
    slip = percentiles_ms(lat.slip)
    drift = thirds_drift_ms(lat.interim)
    final_drift = thirds_drift_ms(lat.final_endpoint)
    errors = {k: v for k, v in codes.items() if k != "OK"}
    reasons = []
    if errors:
        reasons.append(f"errors {errors}")
    if slip["p99_ms"] is not None and slip["p99_ms"] >= KEEP_UP_SLIP_P99_MS:
        reasons.append(f"client writes slipped (p99 {slip['p99_ms']:.0f} ms)")
    if interim["p95_ms"] is None:
        if expect_interims:
            reasons.append("no interim results")
    elif interim["p95_ms"] >= ONLINE_CHUNK_MS:
        reasons.append(f"interim p95 {interim['p95_ms']:.0f} ms >= {ONLINE_CHUNK_MS} ms chunk")
    if drift["drift_ms"] is not None and drift["drift_ms"] >= KEEP_UP_DRIFT_MS:
        reasons.append(f"interim latency grows over the run (+{drift['drift_ms']:.0f} ms)")
    if final_drift["drift_ms"] is not None and final_drift["drift_ms"] >= KEEP_UP_DRIFT_MS:
        reasons.append(f"final latency grows over the run (+{final_drift['drift_ms']:.0f} ms)")
    goal_interim = interim["p95_ms"] is not None and interim["p95_ms"] <= GOAL_INTERIM_P95_MS
    return {
        "streams": len(records),
        "codes": codes,
        "interims": lat.interims,
        "finals": lat.finals,
        "endpoint_finals": lat.endpoint_finals,
        "flush_or_cap_finals": lat.flush_or_cap_finals,
        "true_utterances": lat.speech_truth,
        "interim_latency": interim,
        "interim_latency_drift": drift,
        "spoken_to_interim": percentiles_ms(lat.spoken_to_interim),
        "final_after_endpoint": final,
        "final_latency_drift": final_drift,
        "final_after_speech_end_event": percentiles_ms(lat.final_after_end_event),
        "speech_end_event_after_endpoint": percentiles_ms(lat.end_event_after_endpoint),
        "final_after_true_endpoint": percentiles_ms(lat.final_after_true_endpoint),
        "vad_end_minus_true_speech_end": percentiles_ms(lat.vad_end_minus_true_end),
        "send_slip": slip,
        "keeps_up": not reasons,
        "not_keeping_up_because": reasons,
        "meets_latency_goals": bool(
            not reasons and (goal_interim or not expect_interims) and final["p95_ms"] is not None and final["p95_ms"] <= GOAL_FINAL_P95_MS
        ),
    }


# ---------------------------------------------------------------------------- phases
class Bench:
    def __init__(self, args, server: Server | None, target: str):
        self.args = args
        self.server = server
        self.target = target
        self._tracks: dict[tuple, Track] = {}

    @property
    def pid(self) -> int | None:
        return self.server.process.pid if self.server and self.server.process else None

    def track(self, index: int, seconds: float) -> Track:
        key = (index % 8, seconds, self.args.chunk_ms)
        if key not in self._tracks:
            lead = 0.3 + 0.25 * (index % 8)
            audio, speech = speech_silence(seconds, seed=index % 8 + 1, lead_s=lead)
            self._tracks[key] = make_track(audio, self.args.chunk_ms, speech)
        return self._tracks[key]

    async def realtime_point(self, n: int, seconds: float, mode: int = asr_pb2.STREAMING_MODE_TWO_PASS) -> dict:
        tracks = [self.track(i, seconds) for i in range(n)]
        config_req = stream_config(self.args, mode)
        records = [StreamRecord() for _ in range(n)]
        before, cpu0, ccpu0 = scrape(self.server), self.server.cpu_seconds() if self.server else 0.0, time.process_time()
        rss0 = rss_mb(self.pid) if self.pid else None
        busy0 = machine_busy_s()
        t_start = time.perf_counter() + 1.0
        rng = random.Random(n)
        starts = [t_start + rng.uniform(0, self.args.stagger_s) for _ in range(n)]
        timeout = seconds * 3 + 120
        await asyncio.gather(*(run_stream(self.target, tr, config_req, True, s, r, timeout) for tr, s, r in zip(tracks, starts, records, strict=True)))
        wall = time.perf_counter() - t_start
        after = scrape(self.server)
        lat = analyse(records, tracks, self.args, t_start)
        point = {
            "n": n,
            "mode": asr_pb2.StreamingMode.Name(mode),
            "audio_s_per_stream": seconds,
            "wall_s": round(wall, 2),
            **summarize_point(lat, records, expect_interims=mode != asr_pb2.STREAMING_MODE_OFFLINE),
        }
        if self.server:
            cpu = self.server.cpu_seconds() - cpu0
            point["server_cpu_cores"] = round(cpu / wall, 2)
            point["server_cpu_ms_per_stream_audio_s"] = round(1000 * cpu / (n * seconds), 1)
            point["server_rss_mb"] = {"before": rss0, "after": rss_mb(self.pid)}
            batches = after.get("batches", 0) - before.get("batches", 0)
            segs = after.get("batch_segments", 0) - before.get("batch_segments", 0)
            point["offline_decoder"] = {
                "calls": int(batches),
                "mean_batch": round(segs / batches, 2) if batches else None,
                "busy_s": round(after.get("engine_busy_s", 0) - before.get("engine_busy_s", 0), 2),
            }
        point["client_cpu_cores"] = round((time.process_time() - ccpu0) / wall, 2)
        machine = (machine_busy_s() - busy0) / wall
        point["machine_cpu_cores_busy"] = round(machine, 2)
        point["other_processes_cpu_cores"] = round(machine - point["client_cpu_cores"] - point.get("server_cpu_cores", 0.0), 2)
        point["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
        return point

    async def sweep(self) -> list[dict]:
        points, misses = [], 0
        for n in [int(x) for x in self.args.levels.split(",") if x.strip()]:
            point = await self.realtime_point(n, self.args.seconds)
            points.append(point)
            log_point(point)
            misses = 0 if point["keeps_up"] else misses + 1
            if misses >= self.args.stop_after_failures:
                log(f"  stopping the sweep: {misses} levels in a row did not keep up")
                break
            await asyncio.sleep(3)
        return points

    async def compare(self) -> dict:
        n = self.args.compare_level
        out: dict[str, list] = {"TWO_PASS": [], "OFFLINE": []}
        order = [asr_pb2.STREAMING_MODE_TWO_PASS, asr_pb2.STREAMING_MODE_OFFLINE, asr_pb2.STREAMING_MODE_OFFLINE, asr_pb2.STREAMING_MODE_TWO_PASS]
        for mode in order:  # A B B A: both see the same machine
            point = await self.realtime_point(n, min(self.args.seconds, 30.0), mode)
            out[asr_pb2.StreamingMode.Name(mode).removeprefix("STREAMING_MODE_")].append(point)
            log_point(point)
            await asyncio.sleep(2)

        return {"n": n, "points": out, "summary": compare_summary(out)}

    async def fast(self) -> dict:
        out = {}
        seconds = self.args.fast_seconds
        audio, speech = speech_silence(seconds, seed=99, lead_s=0.5)
        for chunk_ms in (100, 600, 100, 600):
            track = make_track(audio, chunk_ms, speech)
            rec = StreamRecord()
            cpu0 = self.server.cpu_seconds() if self.server else 0.0
            start = time.perf_counter()
            await run_stream(self.target, track, stream_config(self.args), False, 0.0, rec, 3600)
            wall = time.perf_counter() - start
            cpu = (self.server.cpu_seconds() - cpu0) if self.server else None
            finals = sum(1 for r in rec.responses if r[1] == "final")
            res = {
                "chunk_ms": chunk_ms,
                "audio_s": round(track.seconds, 1),
                "wall_s": round(wall, 2),
                "x_real_time": round(track.seconds / wall, 1),
                "server_cpu_cores": round(cpu / wall, 2) if cpu is not None else None,
                "finals": finals,
                "true_utterances": len(speech),
                "code": rec.code,
            }
            out.setdefault(f"chunk_{chunk_ms}ms", []).append(res)
            log(f"  fast, {chunk_ms} ms chunks: {track.seconds:.0f} s of audio in {wall:.2f} s = {res['x_real_time']}x real time, {finals} finals, {rec.code}")
        best = {k: max(v, key=lambda r: r["x_real_time"]) for k, v in out.items()}
        return {"runs": out, "best": best, "chunk_600_over_100": ratio(best["chunk_600ms"]["x_real_time"], best["chunk_100ms"]["x_real_time"])}

    async def memory(self) -> dict:
        if not self.pid:
            return {"skipped": "needs a server started by this script"}
        out = {}
        pattern_s = 300.0
        audio, speech = speech_silence(pattern_s, seed=7, lead_s=0.5)
        track = make_track(audio, self.args.chunk_ms, speech)
        hours = self.args.memory_hours
        n_chunks = int(hours * 3600 * 1000 / self.args.chunk_ms)
        out["speech_silence"] = await self._memory_run(track, n_chunks, f"{hours:g} h speech/silence", speech_per_pattern=len(speech), pattern_s=pattern_s)
        if self.args.never_ending_s:
            cont = speechlike(60.0, seed=5)  # looped: never a pause
            track = make_track(cont, self.args.chunk_ms, [(0, 60000)])
            n_chunks = int(self.args.never_ending_s * 1000 / self.args.chunk_ms)
            out["never_ending_utterance"] = await self._memory_run(track, n_chunks, f"{self.args.never_ending_s:g} s of continuous speech")
        return out

    async def _memory_run(self, track: Track, n_chunks: int, what: str, speech_per_pattern: int = 0, pattern_s: float = 0.0) -> dict:
        samples: list[tuple[float, float, float]] = []  # (wall s, audio s sent, rss MB)
        progress = {"k": 0}
        chunk_s = track.chunk_ms / 1000
        rec = StreamRecord()
        start = time.perf_counter()
        rss_start = rss_mb(self.pid)

        async def sampler():
            while True:
                samples.append((time.perf_counter() - start, progress["k"] * chunk_s, rss_mb(self.pid)))
                await asyncio.sleep(1.0)

        def on_progress(k):
            progress["k"] = k

        task = asyncio.ensure_future(sampler())
        log(f"  memory: {what}, {n_chunks * chunk_s:.0f} s of audio in one stream, as fast as the server takes it")
        await run_stream(self.target, track, stream_config(self.args), False, 0.0, rec, 7200, n_chunks=n_chunks, on_progress=on_progress)
        task.cancel()
        wall = time.perf_counter() - start
        await asyncio.sleep(1.0)
        rss_end = rss_mb(self.pid)
        audio_s = n_chunks * chunk_s
        finals = [r for r in rec.responses if r[1] == "final"]
        # Growth after the first 10 % of the audio (allocator and caches warmed up) and over the whole run.
        warm = [s for s in samples if s[1] >= 0.1 * audio_s] or samples
        second_half = [s for s in samples if s[1] >= 0.5 * audio_s]
        slope = None
        if len(second_half) >= 5:
            x = np.array([s[1] for s in second_half]) / 3600
            y = np.array([s[2] for s in second_half])
            slope = round(float(np.polyfit(x, y, 1)[0]), 1)
        rss_values = [s[2] for s in samples if s[2] is not None]
        res = {
            "what": what,
            "audio_s": round(audio_s, 1),
            "wall_s": round(wall, 1),
            "x_real_time": round(audio_s / wall, 1),
            "code": rec.code,
            "details": rec.details,
            "finals": len(finals),
            "expected_utterances": round(speech_per_pattern * audio_s / pattern_s) if pattern_s else None,
            "longest_final_ms": max((r[3] - r[2] for r in finals), default=None),
            "rss_mb_start": round(rss_start, 1),
            "rss_mb_after_10pct": round(warm[0][2], 1),
            "rss_mb_max": round(max(rss_values), 1),
            "rss_mb_end": round(rss_end, 1),
            "growth_mb_whole_run": round(rss_end - rss_start, 1),
            "growth_mb_after_10pct": round(rss_end - warm[0][2], 1),
            "slope_mb_per_audio_hour_second_half": slope,
            "samples": [(round(t, 1), round(a, 1), round(r, 1)) for t, a, r in samples[:: max(1, len(samples) // 200)]],
        }
        log(
            f"  memory: {res['audio_s']:.0f} s in {res['wall_s']:.0f} s ({res['x_real_time']}x), {res['code']}, {res['finals']} finals; "
            f"RSS {res['rss_mb_start']} -> {res['rss_mb_after_10pct']} (10 %) -> max {res['rss_mb_max']} -> end {res['rss_mb_end']} MB; "
            f"growth {res['growth_mb_whole_run']:+.1f} MB whole run, {res['growth_mb_after_10pct']:+.1f} MB after 10 %, slope {fmt(slope)} MB/h"
        )
        return res


def compare_summary(out: dict[str, list]) -> dict:
    """Means of the TWO_PASS and OFFLINE runs, and their ratios."""

    def mean(mode, *path):
        vals = []
        for p in out[mode]:
            v = p
            for key in path:
                v = v.get(key) if isinstance(v, dict) else None
            if v is not None:
                vals.append(v)
        return round(sum(vals) / len(vals), 2) if vals else None

    summary = {}
    for key, path in {
        "server_cpu_cores": ("server_cpu_cores",),
        "server_cpu_ms_per_stream_audio_s": ("server_cpu_ms_per_stream_audio_s",),
        "final_after_endpoint_p50_ms": ("final_after_endpoint", "p50_ms"),
        "final_after_endpoint_p95_ms": ("final_after_endpoint", "p95_ms"),
        "final_after_true_endpoint_p50_ms": ("final_after_true_endpoint", "p50_ms"),
        "final_after_true_endpoint_p95_ms": ("final_after_true_endpoint", "p95_ms"),
    }.items():
        a, b = mean("TWO_PASS", *path), mean("OFFLINE", *path)
        # a ratio of figures that can be negative (before the reference point) means nothing
        summary[key] = {"two_pass": a, "offline": b, "two_pass_over_offline": ratio(a, b) if a and b and a > 0 and b > 0 else None}
    return summary


def log_point(p: dict) -> None:
    i, f, s = p["interim_latency"], p["final_after_endpoint"], p["send_slip"]
    verdict = "keeps up" if p["keeps_up"] else "BEHIND: " + "; ".join(p["not_keeping_up_because"])
    log(
        f"  N={p['n']:<3d} {p['mode'].removeprefix('STREAMING_MODE_'):8s} interim p50/p95 {fmt(i['p50_ms'], 0)}/{fmt(i['p95_ms'], 0)} ms "
        f"(drift {fmt(p['interim_latency_drift']['drift_ms'], 0)}), final after endpoint p50/p95 {fmt(f['p50_ms'], 0)}/{fmt(f['p95_ms'], 0)} ms, "
        f"slip p99 {fmt(s['p99_ms'], 0)} ms, cores: server {fmt(p.get('server_cpu_cores'), 2)} "
        f"client {p['client_cpu_cores']} others {p['other_processes_cpu_cores']}, "
        f"{p['finals']} finals/{p['true_utterances']} utterances: {verdict}"
    )


def print_tables(result: dict) -> None:
    if "sweep" in result:
        rows = []
        for p in result["sweep"]:
            i, s2i, f, ft, fe = (
                p["interim_latency"], p["spoken_to_interim"], p["final_after_endpoint"], p["final_after_true_endpoint"], p["final_after_speech_end_event"],
            )  # fmt: skip
            rows.append([
                p["n"], i["p50_ms"], i["p95_ms"], p["interim_latency_drift"]["drift_ms"], s2i["p50_ms"], s2i["p95_ms"],
                f["p50_ms"], f["p95_ms"], ft["p50_ms"], ft["p95_ms"], fe["p95_ms"], p["send_slip"]["p99_ms"],
                p.get("server_cpu_cores"), p["client_cpu_cores"], p["other_processes_cpu_cores"], f"{p['finals']}/{p['true_utterances']}",
                ",".join(f"{k}:{v}" for k, v in p["codes"].items()), "yes" if p["keeps_up"] else "NO", "yes" if p["meets_latency_goals"] else "no",
            ])  # fmt: skip
        log("\nreal-time streams (TWO_PASS, 100 ms chunks; latencies in ms)")
        log(table(
            ["N", "interim p50", "interim p95", "interim drift", "spoken->interim p50", "spoken->interim p95", "final p50", "final p95",
             "final(true end) p50", "final(true end) p95", "final-SPEECH_END p95", "slip p99", "server cores", "client cores", "other procs cores",
             "finals/utts", "codes", "keeps up", "goals"],
            rows,
        ))  # fmt: skip
    if "compare" in result:
        c = result["compare"]
        log(f"\nTWO_PASS vs OFFLINE at N={c['n']} (mean of 2 runs each, A B B A)")
        log(table(["figure", "TWO_PASS", "OFFLINE", "ratio"], [[k, v["two_pass"], v["offline"], v["two_pass_over_offline"]] for k, v in c["summary"].items()]))
    if "fast" in result:
        b = result["fast"]["best"]
        log("\none stream, as fast as possible (best of 2)")
        log(
            table(
                ["chunk", "audio s", "wall s", "x real time", "server cores"],
                [[k, v["audio_s"], v["wall_s"], v["x_real_time"], v["server_cpu_cores"]] for k, v in b.items()],
            )
        )
    if "memory" in result and "speech_silence" in result["memory"]:
        rows = []
        for name, m in result["memory"].items():
            rows.append(
                [
                    name,
                    m["audio_s"],
                    m["x_real_time"],
                    m["finals"],
                    m["rss_mb_start"],
                    m["rss_mb_after_10pct"],
                    m["rss_mb_max"],
                    m["rss_mb_end"],
                    m["growth_mb_whole_run"],
                    m["growth_mb_after_10pct"],
                    m["slope_mb_per_audio_hour_second_half"],
                    m["code"],
                ]
            )
        log("\nserver RSS over one stream (MB)")
        log(table(["run", "audio s", "x rt", "finals", "start", "after 10 %", "max", "end", "growth", "growth after 10 %", "MB/h 2nd half", "code"], rows))
    if "verdict" in result:
        log("\n" + json.dumps(result["verdict"], indent=1))


def verdict(result: dict, args) -> dict:
    v: dict = {}
    sweep = result.get("sweep", [])
    if sweep:
        kept = [p["n"] for p in sweep if p["keeps_up"]]
        goals = [p["n"] for p in sweep if p["meets_latency_goals"]]
        v["largest_n_keeping_up"] = max(kept) if kept else 0
        v["largest_n_meeting_latency_goals"] = max(goals) if goals else 0
        if args.preset in GOAL_STREAMS:
            v["goal_streams"] = GOAL_STREAMS[args.preset]
            v["goal_streams_met"] = v["largest_n_keeping_up"] >= GOAL_STREAMS[args.preset]
        at = next((p for p in sweep if p["n"] == v["largest_n_keeping_up"]), None) or sweep[0]
        v["at_n"] = at["n"]
        v["interim_p95_ms"] = at["interim_latency"]["p95_ms"]
        v["interim_goal_met"] = at["interim_latency"]["p95_ms"] is not None and at["interim_latency"]["p95_ms"] <= GOAL_INTERIM_P95_MS
        v["final_p95_ms"] = at["final_after_endpoint"]["p95_ms"]
        v["final_goal_met"] = at["final_after_endpoint"]["p95_ms"] is not None and at["final_after_endpoint"]["p95_ms"] <= GOAL_FINAL_P95_MS
        v["final_after_true_endpoint_p95_ms"] = at["final_after_true_endpoint"]["p95_ms"]
        if at.get("server_cpu_ms_per_stream_audio_s"):
            # CPU bound: how many streams the server's measured cost per stream would fill all cores with.
            cost = at["server_cpu_ms_per_stream_audio_s"]
            v["server_cpu_ms_per_stream_audio_s"] = cost
            v["streams_if_the_server_had_every_core"] = round(result["machine"]["nproc"] * 1000 / cost, 1)
    if "fast" in result:
        v["one_stream_x_real_time"] = result["fast"]["best"]["chunk_100ms"]["x_real_time"]
    mem = result.get("memory", {})
    if "speech_silence" in mem:
        g = mem["speech_silence"]["growth_mb_whole_run"]
        v["rss_growth_mb_one_hour"] = g
        v["rss_goal_met"] = g < GOAL_RSS_GROWTH_MB and mem["speech_silence"]["code"] == "OK"
    if "never_ending_utterance" in mem:
        v["never_ending_rss_growth_mb"] = mem["never_ending_utterance"]["growth_mb_whole_run"]
        v["never_ending_longest_final_ms"] = mem["never_ending_utterance"]["longest_final_ms"]
    return v


async def main_async(args, server: Server | None, target: str) -> dict:
    bench = Bench(args, server, target)
    phases = [x.strip() for x in args.phases.split(",") if x.strip()]
    result: dict = {}
    # Warm-up: a few streams, not counted.
    log("warm-up: 4 streams of 8 s")
    await bench.realtime_point(4, 8.0)
    if "sweep" in phases:
        log(f"\nsweep: {args.levels} real-time streams, {args.seconds:g} s of audio each")
        result["sweep"] = await bench.sweep()
    if "compare" in phases:
        log(f"\ncompare: TWO_PASS vs OFFLINE at N={args.compare_level}")
        result["compare"] = await bench.compare()
    if "fast" in phases:
        log("\nfast: one stream as fast as possible")
        result["fast"] = await bench.fast()
    if "memory" in phases and args.memory_hours:
        log("\nmemory: one long stream")
        result["memory"] = await bench.memory()
    return result


def reprint(path: Path, args) -> None:
    out = json.loads(path.read_text())
    args.preset = out.get("preset", args.preset)
    if "compare" in out:
        out["compare"]["summary"] = compare_summary(out["compare"]["points"])
    out["verdict"] = verdict(out, args)
    write_json(path, out)
    print_tables(out)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.reprint:
        return reprint(args.reprint, args)
    started = dt.datetime.now(dt.UTC)
    out: dict = {
        "benchmark": "bench/stream_load.py",
        "command": command_line(),
        "started_utc": started.isoformat(timespec="seconds"),
        "machine": machine_info(),
        "preset": args.preset,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "definitions": __doc__.split("Definitions")[1].split("Writes bench")[0].strip(),
        "goals": {
            "streams": GOAL_STREAMS.get(args.preset),
            "interim_p95_ms": GOAL_INTERIM_P95_MS,
            "final_p95_ms": GOAL_FINAL_P95_MS,
            "rss_growth_mb": GOAL_RSS_GROWTH_MB,
        },
    }
    server = None
    if args.target:
        target = args.target
    else:
        root = ensure_stream_models(args.models, args.model_cache)
        server = make_server(args, root).start()
        log(f"server: {server.display_command()}")
        server.wait_ready()
        log(f"ready in {server.startup_s:.1f} s, RSS {rss_mb(server.process.pid):.0f} MB")
        target = server.target
        out["server_command"] = server.display_command()
        out["server_startup_s"] = round(server.startup_s, 1)
    try:
        out.update(asyncio.run(main_async(args, server, target)))
    finally:
        if server is not None:
            out["server_rss_mb_at_end"] = rss_mb(server.process.pid)
            out["server_exit_code"] = server.stop()
            if out["server_exit_code"] not in (0, None):
                log(server.log_tail())
    out["verdict"] = verdict(out, args)
    out["finished_utc"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    out["machine"]["loadavg_at_end"] = os.getloadavg()
    print_tables(out)
    write_json(args.out, out)
    log(f"\nwrote {args.out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
