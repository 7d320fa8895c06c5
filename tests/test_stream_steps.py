"""Streaming model steps of many streams in one engine call, checked against FunASR's own per-stream calls."""

from __future__ import annotations

import asyncio

import numpy as np

from app.engine.funasr_engine import OnlineStep
from app.engine.stream_vad import VadStep
from tests.helpers import utterances

SR = 16000


def _streams() -> list[tuple[np.ndarray, int]]:
    """(audio, step length in samples): different speech/silence patterns, step sizes and lengths."""
    patterns = [
        (("silence", 0.7), ("speech", 1.8), ("silence", 1.2), ("speech", 1.1), ("silence", 1.0)),
        (("speech", 2.2), ("silence", 1.5), ("speech", 0.9)),
        (("silence", 1.9), ("speech", 1.4), ("silence", 0.9), ("speech", 2.0), ("silence", 0.4)),
        (("silence", 0.3), ("speech", 3.0), ("silence", 1.3)),
    ]
    steps = [3200, 3200, 4800, 16000 + 320]  # 200 ms (the server's), 300 ms, a second and a bit
    return [(utterances(*p, seed=10 * i), step) for i, (p, step) in enumerate(zip(patterns, steps, strict=True))]


def _reference_events(engine, audio: np.ndarray, step: int, silence_ms: int) -> list[list[tuple[int, int]]]:
    """What FunASR's own streaming VAD answers, one generate() per step, for one stream alone."""
    vad = engine._vad
    cache: dict = {}
    out = []
    for start in range(0, len(audio), step):
        chunk = audio[start : start + step]
        final = start + step >= len(audio)
        result = vad.generate(input=chunk, cache=cache, is_final=final, chunk_size=200, disable_pbar=True, max_end_silence_time=silence_ms)
        out.append([(int(b), int(e)) for b, e in (result[0].get("value") or [])])
    return out


def test_batched_vad_steps_equal_funasr_per_stream_calls(engine, monkeypatch):
    streams = _streams()
    network = engine._vad.model.encoder.forward
    batch_sizes = []

    def counting(input, cache=None):
        batch_sizes.append(input.shape[0])
        return network(input, cache)

    monkeypatch.setattr(engine._vad.model.encoder, "forward", counting)
    silence_ms = 500
    expected = [_reference_events(engine, audio, step, silence_ms) for audio, step in streams]
    assert any(ev for stream in expected for ev in stream), "the reference found no speech: the test would prove nothing"

    caches: list[dict] = [{} for _ in streams]
    got: list[list] = [[] for _ in streams]
    positions = [0] * len(streams)

    async def go():
        while any(pos < len(audio) for pos, (audio, _) in zip(positions, streams, strict=True)):
            steps, owners = [], []
            for i, (audio, step) in enumerate(streams):
                if positions[i] >= len(audio):
                    continue
                chunk = audio[positions[i] : positions[i] + step]
                positions[i] += step
                steps.append(VadStep(caches[i], chunk, positions[i] >= len(audio), silence_ms))
                owners.append(i)
            results = await engine.vad_stream_steps(steps)
            for i, result in zip(owners, results, strict=True):
                assert not isinstance(result, Exception), result
                got[i].append(result)

    asyncio.run(go())
    assert got == expected
    assert max(batch_sizes) >= 2  # the network really ran once for several streams
    assert all(cache == {} for cache in caches)  # a final step leaves nothing behind


def test_a_broken_vad_step_fails_alone(engine):
    audio = utterances(("silence", 0.5), ("speech", 1.5), ("silence", 1.0), seed=3)
    good_alone: dict = {}
    expected = asyncio.run(engine.vad_stream_steps([VadStep(good_alone, audio, True, 500)]))[0]
    broken = VadStep({"prev_samples": "not audio"}, audio, False, 500)  # a stream whose state is corrupt
    results = asyncio.run(engine.vad_stream_steps([broken, VadStep({}, audio, True, 500)]))
    assert isinstance(results[0], Exception)
    assert results[1] == expected and expected


def test_online_steps_of_several_streams_equal_their_calls_alone(engine):
    audios = [utterances(("speech", 2.4), seed=s) for s in (1, 2)]
    step = 9600  # 600 ms

    def alone(audio):
        cache: dict = {}
        return [engine._online_step(OnlineStep(cache, audio[i : i + step], i + step >= len(audio))) for i in range(0, len(audio), step)]

    expected = [engine._workers["online"].call(alone, a) for a in audios]
    caches = [{}, {}]

    async def together():
        out = []
        for i in range(0, len(audios[0]), step):
            final = i + step >= len(audios[0])
            out.append(await engine.online_steps([OnlineStep(caches[k], audios[k][i : i + step], final) for k in range(2)]))
        return out

    rounds = asyncio.run(together())
    assert [[r[k] for r in rounds] for k in range(2)] == expected
    assert any(text for texts in expected for text in texts)


def test_an_empty_final_step_answers_nothing_and_frees_the_stream(engine):
    cache: dict = {}
    asyncio.run(engine.vad_stream_steps([VadStep(cache, utterances(("speech", 0.6), seed=5), False, 500)]))
    assert cache  # the stream has state
    (result,) = asyncio.run(engine.vad_stream_steps([VadStep(cache, np.zeros(0, np.float32), True, 500)]))
    assert result == [] and cache == {}
