"""Where a stream's server time goes: each model call a streaming session makes, timed in-process.

    .venv/bin/python -m bench.stream_steps --models tiny
    .venv/bin/python -m bench.stream_steps --models large

Loads the same FunasrEngine as the server and times, on this thread, the calls that
app/core/streaming.py makes per stream: a VAD step (200 ms of audio, every 200 ms), an online
Paraformer step (600 ms, every 600 ms), the offline re-decode of an utterance (2.5 s) and its
punctuation. From those it derives the work per second of real-time audio per stream, and the
number of streams each single-threaded model worker can serve (every model runs on one worker
thread, one call at a time).

Two configurations in the same run, interleaved: one stream per engine call (a lone stream), and
``--streams`` streams per call (what app/core/step_batcher.py forms on a loaded server; the VAD
network then runs once for all of them). Times are per stream. Writes
bench/results/stream_steps_<label>.json.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import io
import logging
import os
import pstats
import time
from pathlib import Path

import numpy as np

from bench.common import REPO, command_line, machine_info, percentiles_ms, table, write_json
from bench.stream_load import DEFAULT_CACHE, ensure_stream_models
from bench.workload import SAMPLE_RATE_HZ, speechlike

PER_S = {"vad_step": 1000 / 200, "online_step": 1000 / 600}  # calls per second of audio per stream
UTTERANCE_S, PAUSE_S = 2.5, 1.5  # the load generator's speech/silence pattern


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="tiny")
    p.add_argument("--model-cache", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--reps", type=int, default=0, help="calls per kind and configuration (default: 200 tiny, 20 large)")
    p.add_argument("--label")
    p.add_argument("--streams", type=int, default=32, help="streams per engine call in the batched configuration")
    p.add_argument("--profile", action="store_true", help="also print the top of a cProfile of the VAD and online steps")
    args = p.parse_args(argv)
    args.label = args.label or args.models
    args.reps = args.reps or (20 if args.models == "large" else 200)
    return args


def main(argv=None) -> None:
    args = parse_args(argv)

    from app.config import Settings
    from app.engine.funasr_engine import FunasrEngine
    from app.engine.stream_workers import StreamState, StreamStep

    root = ensure_stream_models(args.models, args.model_cache)
    settings = Settings(
        asr_model=str(root / "asr"),
        vad_model=str(root / "vad"),
        punc_model=str(root / "punc"),
        online_model=str(root / "online"),
        allow_random_weights=True,
        device="cpu",
        torch_threads=0,
        vad_processes=0,  # this script times the calls on this thread
        stream_processes=0,
        metrics_port=0,
        port=0,
        model_name="bench",
    ).validate()
    engine = FunasrEngine.load(settings)
    logging.getLogger().setLevel(logging.WARNING)
    cores = len(os.sched_getaffinity(0))
    speech = speechlike(60.0, seed=3)
    step_vad, step_online = 200 * 16, 600 * 16
    utterance = speech[: int(UTTERANCE_S * SAMPLE_RATE_HZ)]

    def vad_calls(n: int, streams: int = 1) -> list[float]:
        """Per-stream time of a VAD step, ``streams`` streams per engine call (each at its own place in the audio)."""
        states = [StreamState() for _ in range(streams)]
        pos = [(k * 7919 * 16) % (len(speech) - step_vad) for k in range(streams)]
        out = []
        for _ in range(n):
            steps = [StreamStep(states[k], speech[pos[k] : pos[k] + step_vad], False, 800) for k in range(streams)]
            pos = [(p + step_vad) % (len(speech) - step_vad) for p in pos]
            t = time.perf_counter()
            results = engine._vad_stream_steps(steps)
            out.append((time.perf_counter() - t) / streams)
            if any(isinstance(r, Exception) for r in results):
                raise next(r for r in results if isinstance(r, Exception))
        return out

    def online_calls(n: int, streams: int = 1) -> list[float]:
        states = [StreamState() for _ in range(streams)]
        pos = [(k * 7919 * 16) % (len(speech) - step_online) for k in range(streams)]
        out = []
        for i in range(n):
            if i and i % 8 == 0:  # a new utterance every 8 steps (4.8 s), as the session does
                engine._online_steps([StreamStep(s, np.zeros(0, np.float32), True) for s in states])
            steps = [StreamStep(states[k], speech[pos[k] : pos[k] + step_online], False) for k in range(streams)]
            pos = [(p + step_online) % (len(speech) - step_online) for p in pos]
            t = time.perf_counter()
            results = engine._online_steps(steps)
            out.append((time.perf_counter() - t) / streams)
            if any(isinstance(r, Exception) for r in results):
                raise next(r for r in results if isinstance(r, Exception))
        return out

    def offline_calls(n: int) -> list[float]:
        out = []
        for _ in range(n):
            t = time.perf_counter()
            engine._transcribe([utterance], ())
            out.append(time.perf_counter() - t)
        return out

    tokens = engine._transcribe([utterance], ())[0].tokens or ("你", "好")

    def punc_calls(n: int) -> list[float]:
        out = []
        for _ in range(n):
            t = time.perf_counter()
            engine._punctuate_batch([list(tokens)])
            out.append(time.perf_counter() - t)
        return out

    kinds = {"vad_step": vad_calls, "online_step": online_calls, "offline_utterance": offline_calls, "punctuation": punc_calls}
    # The server's live streams share engine calls (app/core/step_batcher.py): one stream per
    # call (a lone stream) against many (the batch a loaded server forms). ASR finals and
    # punctuation are per utterance here in both. torch threads stay at the server's default:
    # FunASR's generate() sets them back to the model's ncpu on every call anyway.
    configs = {"streams_per_call_1": 1, f"streams_per_call_{args.streams}": args.streams}
    samples: dict[str, dict[str, list[float]]] = {c: {k: [] for k in kinds} for c in configs}
    block = max(5, args.reps // 10)
    for fn in kinds.values():
        fn(3)  # warm-up
    print(f"timing {args.reps} calls per kind and configuration, in blocks of {block}, interleaved", flush=True)
    for r in range(0, args.reps, block):
        order = list(configs) if (r // block) % 2 == 0 else list(configs)[::-1]
        for cname in order:
            for kind, fn in kinds.items():
                batched = kind in ("vad_step", "online_step")
                samples[cname][kind] += fn(block, configs[cname]) if batched else fn(block)

    result: dict = {
        "benchmark": "bench/stream_steps.py",
        "command": command_line(),
        "started_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "utterance_s": UTTERANCE_S,
        "configs": {},
    }
    for cname in configs:
        stats = {k: percentiles_ms(v) for k, v in samples[cname].items()}
        med = {k: s["p50_ms"] for k, s in stats.items()}
        # Work per second of real-time audio per stream, per worker thread (utterance every 4 s).
        finals_per_s = 1 / (UTTERANCE_S + PAUSE_S)
        speech_fraction = UTTERANCE_S / (UTTERANCE_S + PAUSE_S)
        per_audio_s = {
            "vad": med["vad_step"] * PER_S["vad_step"],
            # online steps only while an utterance is open (plus the session's flush, ignored here)
            "online": med["online_step"] * PER_S["online_step"] * speech_fraction,
            "asr": med["offline_utterance"] * finals_per_s,
            "punc": med["punctuation"] * finals_per_s,
        }
        total = sum(per_audio_s.values())
        result["configs"][cname] = {
            "calls_ms": stats,
            "worker_ms_per_stream_audio_s": {k: round(v, 2) for k, v in per_audio_s.items()},
            "total_ms_per_stream_audio_s": round(total, 2),
            "streams_per_worker_limit": {k: round(1000 / v, 1) for k, v in per_audio_s.items() if v},
            "streams_limit_if_all_cores_busy": round(cores * 1000 / total, 1),
        }
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        vad_calls(100)
        online_calls(30)
        prof.disable()
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(35)
        result["profile_top"] = buf.getvalue()
        print(buf.getvalue())
    engine.close()

    rows = []
    for cname, c in result["configs"].items():
        for kind, s in c["calls_ms"].items():
            rows.append([cname, kind, s["p50_ms"], s["p95_ms"], s["mean_ms"]])
    print(table(["streams per call", "call", "p50 ms per stream", "p95 ms", "mean ms"], rows))
    rows = []
    for cname, c in result["configs"].items():
        w, lim = c["worker_ms_per_stream_audio_s"], c["streams_per_worker_limit"]
        rows.append(
            [
                cname,
                w["vad"],
                w["online"],
                w["asr"],
                w["punc"],
                c["total_ms_per_stream_audio_s"],
                lim.get("vad"),
                lim.get("online"),
                c["streams_limit_if_all_cores_busy"],
            ]
        )
    print(
        table(
            [
                "streams per call",
                "vad ms/s",
                "online ms/s",
                "asr ms/s",
                "punc ms/s",
                "total ms/s",
                "streams: vad worker",
                "streams: online worker",
                f"streams: {cores} cores",
            ],
            rows,
        )
    )
    out = REPO / "bench" / "results" / f"stream_steps_{args.label}.json"
    write_json(out, result)
    print(f"wrote {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
