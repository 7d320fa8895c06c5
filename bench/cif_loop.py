"""FunASR's per-frame integrate-and-fire loop (timestamps) vs app/engine/cif_fires.py, per call.

    .venv/bin/python -m bench.cif_loop [--device cuda]

Times one call of each as the ASR model makes it (a batch's predictor pass, or one segment's
timestamp fallback), including the read-back of the fire positions, and checks the fires are equal.
"""

from __future__ import annotations

import argparse
import time

import torch
from funasr.utils import timestamp_tools

from app.engine.cif_fires import cif_fires

FUNASR_LOOP = timestamp_tools.cif_wo_hidden  # taken before anything installs ours
THRESHOLD = 1.0 - 1e-4


def per_call_ms(loop, alphas: torch.Tensor, repeats: int) -> float:
    loop(alphas.clone(), THRESHOLD)  # warm-up (CUDA kernels, allocator)
    start = time.perf_counter()
    for _ in range(repeats):
        fires = loop(alphas.clone(), THRESHOLD)
        torch.where(fires >= THRESHOLD)[0].cpu()  # what FunASR does next; waits for the GPU
    return (time.perf_counter() - start) / repeats * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=30)
    args = p.parse_args()
    print(f"device {args.device}, torch {torch.__version__}")
    # 100 upsampled frames = a 2 s segment (100 frames/s, LFR 6, upsampled 3x); 300 = 6 s.
    for batch, frames in ((1, 100), (1, 300), (16, 100), (16, 300)):
        alphas = (torch.rand(batch, frames, generator=torch.Generator().manual_seed(frames)) * 0.6).to(args.device)
        same = torch.equal(FUNASR_LOOP(alphas.clone(), THRESHOLD), cif_fires(alphas.clone(), THRESHOLD))
        theirs, ours = per_call_ms(FUNASR_LOOP, alphas, args.repeats), per_call_ms(cif_fires, alphas, args.repeats)
        print(f"batch {batch:2d}, {frames} frames: FunASR's loop {theirs:.2f} ms, NumPy {ours:.3f} ms ({theirs / ours:.1f}x), same fires: {same}")


if __name__ == "__main__":
    main()
