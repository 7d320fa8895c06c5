"""Short transcripts punctuated while a long one is in the model: passes of a few rounds vs whole texts.

    .venv/bin/python -m bench.punctuation_mix --models large [--device cuda]

In-process, on the engine the server would load (the punctuation model on its thread), through the
step batcher the pipeline uses: one with ``max_rounds`` = PUNCTUATION_ROUNDS_PER_CALL and texts
handed back part-done (the server), one that runs every text to its end per call (before the
eighth session). Each trial submits one long transcript (``--long-tokens``, 1,500 = about 5
minutes of speech), then a short one (12 tokens, a 2 s utterance) every ``--gap-ms``; the two
batchers alternate trial by trial. Reports the short texts' latency and the long one's, and
checks that both batchers give the same marks.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import time

from bench.common import REPO, ensure_models, machine_info, percentiles_ms, write_json

SHORT_TOKENS = 12


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="large", help="tiny | large (built into the bench model cache if missing)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--long-tokens", type=int, default=1500)
    p.add_argument("--shorts", type=int, default=20, help="short texts per trial")
    p.add_argument("--gap-ms", type=float, default=10.0, help="between short texts (20 x 10 ms: all arrive while the long one is in the model)")
    p.add_argument("--trials", type=int, default=3, help="per batcher")
    p.add_argument("--label", help="write bench/results/punctuation_mix_<label>.json")
    args = p.parse_args()

    from app.config import Settings
    from app.core.pipeline import PUNCTUATION_ROUNDS_PER_CALL
    from app.core.step_batcher import StepBatcher
    from app.engine.funasr_engine import FunasrEngine
    from app.engine.punctuation import TextProgress

    models = ensure_models(args.models)
    settings = Settings(
        asr_model=str(models.asr), vad_model="none", punc_model=str(models.punc), online_model="none",
        allow_random_weights=True, device=args.device, model_processes="off", metrics_port=0, port=0,
    ).validate()  # fmt: skip
    engine = FunasrEngine.load(settings)
    vocab = [t for t in engine._calls["punc"].model.kwargs["tokenizer"].token_list if not t.startswith("<")][:3000]
    long_text = [vocab[(7919 * i) % len(vocab)] for i in range(args.long_tokens)]
    shorts = [[vocab[(31 * i + 17 * j) % len(vocab)] for j in range(SHORT_TOKENS)] for i in range(args.shorts)]

    async def trial(resumable: bool) -> dict:
        if resumable:
            run = functools.partial(engine.punctuate_many, max_rounds=PUNCTUATION_ROUNDS_PER_CALL)
            batcher = StepBatcher(run, "bench", "punc", max_steps=16, is_partial=lambda r: isinstance(r, TextProgress))
        else:
            batcher = StepBatcher(engine.punctuate_many, "bench", "punc", max_steps=16)
        batcher.start()

        async def timed(text, delay_s):
            await asyncio.sleep(delay_s)
            start = time.perf_counter()
            marks = await batcher.submit(text)
            return time.perf_counter() - start, marks

        try:
            results = await asyncio.gather(
                timed(long_text, 0.0), *(timed(s, 0.005 + i * args.gap_ms / 1000) for i, s in enumerate(shorts))
            )  # fmt: skip
        finally:
            await batcher.close()
        (long_s, long_marks), rest = results[0], results[1:]
        return {
            "short_ms": [round(1000 * s, 2) for s, _ in rest],
            "long_ms": round(1000 * long_s, 1),
            "calls": batcher.calls,
            "marks": [long_marks, *(m for _, m in rest)],
        }

    out = {"machine": machine_info(), "models": args.models, "device": args.device, "long_tokens": args.long_tokens,
           "rounds_per_call": PUNCTUATION_ROUNDS_PER_CALL, "trials": {"resumable": [], "whole": []}}  # fmt: skip
    for _ in range(args.trials):
        for name in ("whole", "resumable"):
            out["trials"][name].append(asyncio.run(trial(name == "resumable")))
    engine.close()
    same = all(r["marks"] == w["marks"] for r, w in zip(out["trials"]["resumable"], out["trials"]["whole"], strict=True))
    workload = f"one {args.long_tokens}-token text, then {args.shorts} texts of {SHORT_TOKENS} tokens every {args.gap_ms:g} ms"
    print(f"{args.models} punctuation model on {args.device}: {workload}")
    for name, trials in out["trials"].items():
        q = percentiles_ms([ms / 1000 for t in trials for ms in t["short_ms"]])
        summary = {"short_p50_ms": q["p50_ms"], "short_p99_ms": q["p99_ms"], "short_max_ms": q["max_ms"],
                   "long_ms": [t["long_ms"] for t in trials], "calls": [t["calls"] for t in trials]}  # fmt: skip
        out[name] = summary
        print(
            f"  {name:9s}: short p50 {summary['short_p50_ms']} ms, p99 {summary['short_p99_ms']} ms, max {summary['short_max_ms']} ms; "
            f"long {summary['long_ms']} ms in {summary['calls']} calls"
        )
    ratios = {k: round(out["whole"][k] / out["resumable"][k], 1) for k in ("short_p50_ms", "short_p99_ms")}
    out["whole_over_resumable"] = ratios
    print(f"  short texts, whole / resumable: p50 {ratios['short_p50_ms']}x, p99 {ratios['short_p99_ms']}x; same marks: {same}")
    for trials in out["trials"].values():
        for t in trials:
            del t["marks"]
    out["same_marks"] = same
    if args.label:
        path = REPO / "bench" / "results" / f"punctuation_mix_{args.label}.json"
        write_json(path, out)
        print(f"wrote {path.relative_to(REPO)}")


if __name__ == "__main__":
    main()
