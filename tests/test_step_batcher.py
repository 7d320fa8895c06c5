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
