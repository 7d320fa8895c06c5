"""Markdown tables from bench.load results, for docs/benchmarks.md.

.venv/bin/python -m bench.report bench/results/tiny.json bench/results/large.json
"""

from __future__ import annotations

import json
import sys

from bench.common import fmt


def md_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---:" for _ in headers) + "|"]
    lines += ["| " + " | ".join(v if isinstance(v, str) else fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def sweep_table(data: dict) -> str:
    rows = []
    for on, off, r in zip(data["on"], data["off"], data["ratios"], strict=True):
        rows.append([
            on["concurrency"], on["requests_per_s"], off["requests_per_s"], f"**{r['throughput_x']:.2f}x**",
            on["audio_s_per_s"], off["audio_s_per_s"], on["p50_ms"], off["p50_ms"], on["p99_ms"], off["p99_ms"],
            f"{r['p99_x']:.2f}", fmt(on["server"]["mean_batch"]), fmt(max(on["other_cpu_cores_used"], off["other_cpu_cores_used"])),
            _errors(on, off),
        ])  # fmt: skip
    return md_table(
        ["clients", "req/s on", "req/s off", "on/off", "audio-s/s on", "audio-s/s off", "p50 ms on", "p50 ms off",
         "p99 ms on", "p99 ms off", "p99 on/off", "mean batch", "other procs (cores)", "errors"],
        rows,
    )  # fmt: skip


def _errors(on: dict, off: dict) -> str:
    e = {**{f"on {k}": v for k, v in on["errors"].items()}, **{f"off {k}": v for k, v in off["errors"].items()}}
    return ", ".join(f"{k}: {v}" for k, v in e.items()) or "0"


def overhead_table(o: dict) -> str:
    rows = [[m.replace("_", " "), s["n"], s["p50_ms"], s["p95_ms"]] for m, s in o["modes"].items()]
    out = md_table(["mode", "requests", "median ms", "p95 ms"], rows) + "\n\n"
    for key, label in (
        ("transport_overhead_batching_on", "gRPC server vs in-process pipeline, both batching on"),
        ("transport_overhead_batching_off", "gRPC server vs in-process pipeline, both batching off"),
        ("total_overhead_vs_unbatched_pipeline", "gRPC server batching on vs in-process pipeline batching off (adds the batch wait)"),
    ):
        v = o[key]
        out += f"- {label}: **{v['extra_ms']:+.2f} ms ({v['extra_pct']:+.1f} %)**\n"
    return out


def overload_table(o: dict) -> str:
    rows = []
    for name in ("before", "overload", "after"):
        p = o[name]
        frac = p["rejected_within_10ms_fraction"]
        rows.append([
            name, p["offered_rps"], p["ok_rps"], p["rejected"], p["accepted_latency"]["p50_ms"], p["accepted_latency"]["p99_ms"],
            p["rejected_latency"]["p50_ms"], p["rejected_latency"]["p99_ms"], p["rejected_latency"]["max_ms"],
            "-" if frac is None else f"{100 * frac:.1f}", p["health_check_latency"]["max_ms"],
            p.get("server_cpu_cores"), p.get("client_cpu_cores"), p.get("other_cpu_cores"),
        ])  # fmt: skip
    table = md_table(
        ["phase", "offered req/s", "OK req/s", "rejected", "OK p50 ms", "OK p99 ms", "rejected p50 ms", "rejected p99 ms",
         "rejected max ms", "rejected <= 10 ms (%)", "health check max ms", "server cores", "client cores", "other procs (cores)"],
        rows,
    )  # fmt: skip
    r = o["recovery"]
    ref = o.get("reference_closed_loop")
    notes = [
        f"- sustainable rate (best closed-loop throughput of the sweep, batching on): {o['sustainable_rps']:.1f} req/s; queue limit {o['queue_items']} "
        f"(drains in {o['drain_s']:.2f} s)",
    ]
    if o.get("server_side_rejections"):
        sr = o["server_side_rejections"]
        within = 100 * sr["within_10ms_fraction"]
        notes.append(f"- refusals as the server timed them (latency histogram): {sr['count']}, mean {sr['mean_ms']} ms, {within:.1f} % within 10 ms")
    if o.get("server_gc_pauses"):
        pauses = ", ".join(f"generation {g}: {v['count']} ({v['total_ms']} ms, {v['over_50ms']} over 50 ms)" for g, v in o["server_gc_pauses"].items())
        notes.append(f"- the server's garbage collections in the three phases: {pauses}")
    if ref:
        notes.append(f"- closed loop at {ref['concurrency']} clients, same server settings: p50 {ref['p50_ms']} ms, p99 {ref['p99_ms']} ms")
    notes.append(
        f"- recovery: {fmt(r['recovered_after_s'], 1)} s after the 10x phase ended "
        f"({r.get('bin_s', 0.5):g} s bins error-free, median <= {r['median_limit_ms']} ms); "
        f"after that p50 {r['after_steady_latency']['p50_ms']} ms, p99 {r['after_steady_latency']['p99_ms']} ms; "
        f"{r['errors_after_overload']} rejected after the overload"
    )
    return table + "\n\n" + "\n".join(notes) + "\n"


def goals_list(g: dict) -> str:
    return "\n".join(f"- {'met' if v['met'] else '**NOT met**'}: {v['goal']}: {v['measured']}" for v in g.values()) + "\n"


def main(paths: list[str]) -> None:
    for path in paths:
        with open(path) as f:
            r = json.load(f)
        m = r["machine"]
        print(f"## {r['label']} ({path})\n")
        load = m["loadavg_at_start"][0]
        print(f"`{r['command']}`, {r['started_at']}, commit {m['git_commit']}, {m['nproc']} CPUs ({m['cpu_model']}), load average at start {load:.1f}\n")
        for name, data in r.get("sweep", {}).items():
            print(f"### sweep: {name} ({data['audio']['description']})\n")
            print(sweep_table(data) + "\n")
        if "overhead" in r:
            print(f"### overhead at concurrency 1 ({r['overhead']['audio']})\n")
            print(overhead_table(r["overhead"]))
        if "overload" in r:
            print("### overload\n")
            print(overload_table(r["overload"]))
        if "goals" in r:
            print("### goals\n")
            print(goals_list(r["goals"]))


if __name__ == "__main__":
    main(sys.argv[1:])
