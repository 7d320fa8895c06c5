"""PNG of a bench.load result: throughput and p99 latency vs concurrency, batching on vs off.

    python bench/plot.py bench/results/tiny.json bench/results/tiny.png

Needs only matplotlib (not a dependency of the server: run it with any Python that has it).
With an overload phase in the JSON, a third row shows its timeline (latency of every request).
"""

from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

STYLE = {"on": dict(color="tab:blue", marker="o", label="batching on"), "off": dict(color="tab:red", marker="s", label="batching off")}


def main(src: str, dst: str) -> None:
    with open(src) as f:
        result = json.load(f)
    sweeps = result.get("sweep", {})
    overload = result.get("overload")
    rows = len(sweeps) + (1 if overload else 0)
    if rows == 0:  # e.g. an overhead-only run: nothing to draw
        print(f"{src}: no sweep or overload data, no plot")
        return
    fig, axes = plt.subplots(rows, 2, figsize=(10, 3.2 * rows), squeeze=False)
    for row, (name, data) in enumerate(sweeps.items()):
        ax_t, ax_p = axes[row]
        for mode in ("on", "off"):
            points = data[mode]
            xs = [p["concurrency"] for p in points]
            ax_t.plot(xs, [p["audio_s_per_s"] for p in points], **STYLE[mode])
            ax_p.plot(xs, [p["p99_ms"] / 1000 for p in points], **STYLE[mode])
        for ax in (ax_t, ax_p):
            ax.set_xscale("log", base=2)
            ax.set_xticks(xs, [str(x) for x in xs])
            ax.set_xlabel("concurrent clients")
            ax.grid(alpha=0.3)
        ax_t.set_ylabel("audio seconds / second")
        ax_t.set_title(f"{name}: throughput ({data['audio']['mean_seconds']:.0f} s clips)", fontsize=10)
        ax_p.set_ylabel("p99 latency (s)")
        ax_p.set_title(f"{name}: p99 latency", fontsize=10)
        ax_t.legend(fontsize=8)
    if overload:
        ax_l, ax_r = axes[-1]
        rows_ = overload["timeline"]
        ok = [(t, ms) for t, ms, code in rows_ if code == "OK"]
        rej = [(t, ms) for t, ms, code in rows_ if code == "RESOURCE_EXHAUSTED"]
        for ax in (ax_l, ax_r):
            if ok:
                ax.scatter(*zip(*ok, strict=True), s=4, color="tab:blue", label="OK")
            if rej:
                ax.scatter(*zip(*rej, strict=True), s=4, color="tab:orange", label="RESOURCE_EXHAUSTED")
            start = 0.0
            for phase in overload["phases"]:
                if phase["name"] == "overload":
                    ax.axvspan(start, start + phase["seconds"], color="grey", alpha=0.15)
                start += phase["seconds"]
            ax.set_xlabel("time sent (s); grey: 10x load")
            ax.grid(alpha=0.3)
        ax_l.set_yscale("log")
        ax_l.set_ylabel("latency (ms, log)")
        ax_l.set_title(f"overload: every request (queue limit {overload.get('queue_items')})", fontsize=10)
        ax_l.legend(fontsize=8, markerscale=3)
        ax_r.set_ylim(0, 20)
        ax_r.axhline(10, color="black", lw=0.8, ls="--")
        ax_r.set_ylabel("latency (ms), 0-20")
        ax_r.set_title("rejections: dashed line = 10 ms", fontsize=10)
    machine = result.get("machine", {})
    fig.suptitle(f"{result.get('label')} model, {machine.get('nproc')} CPUs ({machine.get('cpu_model')})", fontsize=11)
    fig.tight_layout()
    fig.savefig(dst, dpi=80)
    print(f"wrote {dst}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
