"""Memory of a serving server and its worker processes: models on threads vs in worker processes.

    .venv/bin/python -m bench.memory --models large
    .venv/bin/python -m bench.memory --models tiny --configs model-processes=off,model-processes=on

Per configuration: start `paraformer-asr serve`, wait until it serves, send --requests unary
requests (2 s utterances, 8 at a time) so that the models have run batched, then read every
process of the server's tree: RSS and PSS (from /proc/PID/smaps_rollup). RSS counts each shared
page (torch's libraries, say) once per process; PSS splits it among the processes that map it,
so the PSS sum is close to what the processes cost the machine (a pod's memory charge also
counts the page cache it touched). Writes bench/results/memory-<label>.json.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from bench.common import REPO, Server, ensure_models, machine_info, process_tree, table, write_json
from bench.loadgen import Client
from bench.workload import short_set


def memory_mb(pid: int) -> dict[str, float]:
    values = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("Rss", "Pss"):
            values[key.lower() + "_mb"] = int(rest.split()[0]) / 1024
    return values


def command_name(pid: int) -> str:
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    return "server" if b"serve" in argv else "worker"


async def exercise(target: str, requests: int) -> int:
    audio = short_set()
    async with Client(target, audio, 120.0, connections=2) as client:
        done = 0
        for start in range(0, requests, 8):
            calls = await asyncio.gather(*(client.call(i, 0.0) for i in range(start, min(start + 8, requests))))
            done += sum(c.code == "OK" for c in calls)
    return done


def measure(models, device: str, flags: dict[str, str], requests: int) -> dict:
    server = Server("memory", models, {"online_model": "none", **flags}, device=device).start()
    try:
        server.wait_ready()
        ok = asyncio.run(exercise(server.target, requests))
        processes = []
        for pid in process_tree(server.process.pid):
            try:
                processes.append({"pid": pid, "role": command_name(pid), **memory_mb(pid)})
            except OSError:  # ended meanwhile
                continue
    finally:
        server.stop()
    return {
        "flags": flags,
        "requests_ok": ok,
        "processes": processes,
        "rss_sum_mb": round(sum(p["rss_mb"] for p in processes), 1),
        "pss_sum_mb": round(sum(p["pss_mb"] for p in processes), 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="tiny", help="tiny | large (built into the bench model cache if missing)")
    p.add_argument("--configs", default="model-processes=off,model-processes=on", help="comma-separated NAME=VALUE serve flags, one configuration each")
    p.add_argument("--device", default="cpu")
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("--label", help="default: the model size")
    args = p.parse_args()
    models = ensure_models(args.models)
    results = []
    for config in args.configs.split(","):
        name, _, value = config.partition("=")
        result = measure(models, args.device, {name.replace("-", "_"): value}, args.requests)
        result["config"] = config
        results.append(result)
        print(f"{config}: {len(result['processes'])} processes, RSS {result['rss_sum_mb']:.0f} MB, PSS {result['pss_sum_mb']:.0f} MB", flush=True)
    rows = [[r["config"], p["role"], p["pid"], round(p["rss_mb"]), round(p["pss_mb"])] for r in results for p in r["processes"]]
    print(table(["configuration", "process", "pid", "RSS MB", "PSS MB"], rows))
    label = args.label or args.models
    out = REPO / "bench" / "results" / f"memory-{label}.json"
    write_json(out, {"machine": machine_info(), "models": args.models, "device": args.device, "results": results})
    print(f"wrote {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
