"""The step batcher alone, with a stand-in for the engine call (the engine's own steps are in test_stream_steps.py)."""

from __future__ import annotations

import asyncio

import pytest

from app.core.step_batcher import StepBatcher


class RecordingSteps:
    """Stands in for an engine call: records each call's steps; a step "bad" fails alone, "boom" fails the call."""

    def __init__(self):
        self.calls: list[list[str]] = []
        self.release = asyncio.Event()

    async def __call__(self, steps):
        self.calls.append(list(steps))
        await self.release.wait()
        if "boom" in steps:
            raise RuntimeError("the model fell over")
        return [ValueError(f"bad step {s}") if s == "bad" else s.upper() for s in steps]


def test_steps_queued_while_the_model_works_go_in_one_call_and_failures_stay_with_their_stream():
    async def go():
        run = RecordingSteps()
        batcher = StepBatcher(run, "m", "vad")
        batcher.start()
        first = asyncio.ensure_future(batcher.submit("a"))
        await asyncio.sleep(0.01)  # "a" is in the model now; the rest queue behind it
        rest = [asyncio.ensure_future(batcher.submit(s)) for s in ("b", "bad", "c", "gone")]
        await asyncio.sleep(0.01)
        rest[3].cancel()  # its stream went away while the step waited
        run.release.set()
        assert await first == "A"
        assert await rest[0] == "B" and await rest[2] == "C"
        with pytest.raises(ValueError, match="bad step"):
            await rest[1]
        assert run.calls == [["a"], ["b", "bad", "c"]]  # the cancelled step never reached the model
        failed = [asyncio.ensure_future(batcher.submit(s)) for s in ("x", "boom")]
        results = await asyncio.gather(*failed, return_exceptions=True)
        assert all(isinstance(r, RuntimeError) for r in results)
        assert await batcher.submit("after") == "AFTER"  # and the batcher goes on
        await batcher.close()

    asyncio.run(go())


class SlowTexts:
    """Stands in for a resumable model call: a step "name:n" needs n rounds; each call runs at most 2."""

    def __init__(self):
        self.calls: list[list[str]] = []

    async def __call__(self, steps):
        self.calls.append([s.split(":")[0] for s in steps])
        await asyncio.sleep(0)
        out = []
        for step in steps:
            name, rounds = step.split(":")
            left = int(rounds) - 2
            out.append(f"{name}:{left}" if left > 0 else name.upper())
        return out


def test_a_step_handed_back_unfinished_goes_round_again_ahead_of_new_ones_and_short_ones_do_not_wait():
    async def go():
        run = SlowTexts()
        batcher = StepBatcher(run, "m", "punc", max_steps=3, is_partial=lambda r: ":" in r)
        batcher.start()
        done_order = []

        async def submit(step):
            result = await batcher.submit(step)
            done_order.append(result)
            return result

        long = asyncio.ensure_future(submit("long:9"))  # five calls' worth
        await asyncio.sleep(0)
        short = [asyncio.ensure_future(submit(f"s{i}:1")) for i in range(4)]
        assert await asyncio.gather(long, *short) == ["LONG", "S0", "S1", "S2", "S3"]
        # The long text goes first in every call it needs; the short ones join as room allows
        # (three steps a call) and are answered long before it.
        assert run.calls[0] == ["long"] and all(c[0] == "long" for c in run.calls[:5])
        assert run.calls[1] == ["long", "s0", "s1"] and run.calls[2] == ["long", "s2", "s3"]
        assert done_order[-1] == "LONG" and len(run.calls) == 5
        await batcher.close()

    asyncio.run(go())
