"""Recognition pipeline and batching scheduler on the real (tiny) engine."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from app.core.audio import AudioInput
from app.core.errors import DeadlineExpired, InvalidConfig, Overloaded
from app.core.pipeline import RecognitionOptions, RecognitionPipeline
from app.core.text import join_tokens
from tests.helpers import encode, settings_for, speechlike, utterances


def run_with_pipeline(engine, tiny_models, body, **overrides):
    """Build a pipeline around the shared engine (pipelines own event-loop state), run body(pipeline)."""

    async def go():
        pipeline = RecognitionPipeline(engine, settings_for(tiny_models, **overrides), "tiny")
        await pipeline.start()
        try:
            return await body(pipeline)
        finally:
            await pipeline.scheduler.close()
            for batcher in (pipeline.vad_steps, pipeline.online_steps, pipeline.punctuation):
                if batcher is not None:
                    await batcher.close()

    return asyncio.run(go())


def test_recognize_gives_sentences_with_times_and_words(engine, tiny_models):
    audio = AudioInput(encode(utterances(("silence", 0.5), ("speech", 2.0), ("silence", 2.0), ("speech", 1.5), ("silence", 0.3))))

    async def body(p):
        return await p.recognize(audio, RecognitionOptions(word_times=True))

    t = run_with_pipeline(engine, tiny_models, body)
    assert t.text and t.sentences
    assert abs(t.audio_duration_s - 6.3) < 0.01
    assert t.text == "".join(s.text for s in t.sentences)
    assert t.text[-1] in "。？"
    starts = [s.start_ms for s in t.sentences]
    assert starts == sorted(starts)
    for s in t.sentences:
        assert 0 <= s.start_ms < s.end_ms <= 6300
        assert s.words and all(s.start_ms <= w.start_ms < w.end_ms <= s.end_ms for w in s.words)
    # Nothing recognised inside the 2 s of silence between the utterances.
    words = [w for s in t.sentences for w in s.words]
    assert not any(2700 < w.start_ms < 4300 for w in words)


def test_without_punctuation_one_result_per_speech_segment(engine, tiny_models):
    audio = AudioInput(encode(utterances(("speech", 1.5), ("silence", 2.0), ("speech", 1.5))))

    async def body(p):
        return await p.recognize(audio, RecognitionOptions(punctuation=False))

    t = run_with_pipeline(engine, tiny_models, body)
    assert len(t.sentences) == 2
    assert not any(c in t.text for c in "，。？、")


def test_silence_gives_an_empty_transcript(engine, tiny_models):
    async def body(p):
        return await p.recognize(AudioInput(encode(np.zeros(32000, np.float32))), RecognitionOptions())

    t = run_with_pipeline(engine, tiny_models, body)
    assert t.text == "" and t.sentences == ()


def test_concurrent_requests_form_batches_and_get_their_own_results(engine, tiny_models):
    clips = [speechlike(1.0 + 0.1 * i, seed=i) for i in range(12)]

    async def alone(p):
        return [await p.recognize_samples(c, RecognitionOptions(punctuation=False)) for c in clips]

    expected = run_with_pipeline(engine, tiny_models, alone, max_batch_size=1)

    async def together(p):
        results = await asyncio.gather(*(p.recognize_samples(c, RecognitionOptions(punctuation=False)) for c in clips))
        return results, p.scheduler.stats

    results, stats = run_with_pipeline(engine, tiny_models, together, max_batch_size=8, max_batch_wait_ms=50)
    assert stats.largest_batch > 1 and stats.batches < len(clips)
    assert [[s.text for s in r] for r in results] == [[s.text for s in r] for r in expected]
    assert len({tuple(s.text for s in r) for r in results}) > 6  # distinct inputs, distinct outputs


def test_batching_off_runs_one_segment_per_call(engine, tiny_models):
    async def body(p):
        await asyncio.gather(*(p.recognize_samples(speechlike(1.0, seed=i), RecognitionOptions()) for i in range(4)))
        return p.scheduler.stats

    stats = run_with_pipeline(engine, tiny_models, body, max_batch_size=1)
    assert stats.largest_batch == 1 and stats.batches == 4


def test_a_poisoned_segment_fails_alone(engine, tiny_models):
    poison = speechlike(1.0, seed=99)
    poison[:4] = [0.123, -0.456, 0.789, -0.012]

    def hook(segments):
        if any(len(s) >= 4 and np.allclose(s[:4], [0.123, -0.456, 0.789, -0.012]) for s in segments):
            raise RuntimeError("injected engine failure")

    async def body(p):
        # Spans given: no VAD pass, so all six segments reach the scheduler at once and share a batch.
        clips = [speechlike(1.0, seed=i) for i in range(5)]
        opts, whole = RecognitionOptions(punctuation=False), [(0, 1000)]
        tasks = [p.recognize_samples(c, opts, spans=whole) for c in clips[:2]]
        tasks.append(p.recognize_samples(poison, opts, spans=whole))
        tasks += [p.recognize_samples(c, opts, spans=whole) for c in clips[2:]]
        return await asyncio.gather(*tasks, return_exceptions=True), p.scheduler.stats

    engine.fault_hook = hook
    try:
        results, stats = run_with_pipeline(engine, tiny_models, body, max_batch_size=8, max_batch_wait_ms=50)
    finally:
        engine.fault_hook = None
    failed = [r for r in results if isinstance(r, Exception)]
    assert len(failed) == 1 and "injected" in str(failed[0])
    assert isinstance(results[2], RuntimeError)
    assert all(isinstance(r, list) and r for i, r in enumerate(results) if i != 2)
    assert stats.retried_alone >= 2


def test_concurrent_transcripts_share_punctuation_passes_and_keep_their_own_marks(engine, tiny_models):
    clips = [speechlike(1.0 + 0.15 * i, seed=20 + i) for i in range(10)]
    opts, whole = RecognitionOptions(), [(0, 1000)]

    async def alone(p):
        return [await p.recognize_samples(c, opts, spans=whole) for c in clips]

    async def together(p):
        results = await asyncio.gather(*(p.recognize_samples(c, opts, spans=whole) for c in clips))
        return results, p.punctuation.calls, p.punctuation.largest

    expected = run_with_pipeline(engine, tiny_models, alone)
    results, calls, largest = run_with_pipeline(engine, tiny_models, together, max_batch_size=16, max_batch_wait_ms=50)
    assert largest > 1 and calls < len(clips)
    assert [[s.text for s in r] for r in results] == [[s.text for s in r] for r in expected]
    assert any(any(mark in s.text for mark in "，。？、") for r in results for s in r)


def test_a_short_transcript_is_punctuated_while_a_long_one_is_still_going(engine, tiny_models):
    from app.core.pipeline import PUNCTUATION_ROUNDS_PER_CALL

    tokens = [t for t in engine._calls["punc"].model.kwargs["tokenizer"].token_list if not t.startswith("<")][:200]
    long = [tokens[(7 * i) % len(tokens)] for i in range(900)]  # 45 rounds of 20 words
    short = tokens[:12]
    expected = asyncio.run(engine.punctuate_many([long, short]))  # each to its end, in one call

    async def body(p):
        finished = []

        async def mark(name, text):
            marks = await p.punctuation.submit(text)
            finished.append(name)
            return marks

        first = asyncio.ensure_future(mark("long", long))
        await asyncio.sleep(0.001)  # the long text is in the model now
        results = await asyncio.gather(first, mark("short", short))
        return results, finished, p.punctuation.calls

    results, finished, calls = run_with_pipeline(engine, tiny_models, body)
    assert results == expected
    assert finished == ["short", "long"]  # the short text did not wait for the long one's 45 rounds
    assert calls >= 45 // PUNCTUATION_ROUNDS_PER_CALL


def test_a_text_the_punctuation_model_fails_on_fails_alone(engine, tiny_models):
    clips = [speechlike(1.0, seed=40 + i) for i in range(6)]
    whole = [(0, 1000)]

    async def tokens_of(p):
        return [tuple(w for s in await p.recognize_samples(c, RecognitionOptions(punctuation=False), spans=whole) for w in s.text) for c in clips]

    poison = run_with_pipeline(engine, tiny_models, tokens_of)[3]
    assert poison
    passes = []

    def hook(texts):
        passes.append(len(texts))
        if any(tuple("".join(t)) == poison for t in texts):
            raise RuntimeError("injected punctuation failure")

    async def body(p):
        return await asyncio.gather(*(p.recognize_samples(c, RecognitionOptions(), spans=whole) for c in clips), return_exceptions=True)

    engine.punc_fault_hook = hook
    try:
        results = run_with_pipeline(engine, tiny_models, body, max_batch_size=16, max_batch_wait_ms=50)
    finally:
        engine.punc_fault_hook = None
    assert isinstance(results[3], RuntimeError) and "injected" in str(results[3])
    assert all(isinstance(r, list) and r for i, r in enumerate(results) if i != 3)
    assert max(passes) > 1  # they met in one pass, which failed, and were then marked one by one


def test_expired_deadline_never_reaches_the_model(engine, tiny_models):
    seen = []
    engine.fault_hook = lambda segments: seen.extend(len(s) for s in segments)
    marker = speechlike(1.234, seed=7)

    async def body(p):
        with pytest.raises(DeadlineExpired):
            await p.recognize_samples(marker, RecognitionOptions(), deadline=time.monotonic() - 0.001)
        # Deadline passes while the segment waits in the scheduler for its batch window to close
        # (the window stays open while other admitted requests are on their way).
        with p.admission.admit(), p.admission.admit(), pytest.raises(DeadlineExpired):
            await p.recognize_samples(marker, RecognitionOptions(), deadline=time.monotonic() + 0.1, spans=[(0, 1234)])
        return p.scheduler.stats

    try:
        stats = run_with_pipeline(engine, tiny_models, body, max_batch_wait_ms=1000)
    finally:
        engine.fault_hook = None
    assert len(marker) not in seen
    assert stats.dropped >= 1


def test_cancelled_request_leaves_the_queue(engine, tiny_models):
    async def body(p):
        others = [p.admission.admit() for _ in range(2)]  # requests in flight keep the batch window open
        for other in others:
            other.__enter__()
        task = asyncio.ensure_future(p.recognize_samples(speechlike(1.0), RecognitionOptions()))
        for _ in range(100):
            await asyncio.sleep(0.005)
            if p.scheduler.pending:
                break
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.3)
        for other in others:
            other.__exit__(None, None, None)
        return p.scheduler.pending, p.scheduler.stats

    pending, stats = run_with_pipeline(engine, tiny_models, body, max_batch_wait_ms=150)
    assert pending == 0 and stats.dropped == 1 and stats.segments == 0


def test_full_queue_rejects_at_once(engine, tiny_models):
    async def body(p):
        slow = [asyncio.ensure_future(p.recognize(AudioInput(encode(speechlike(2.0, seed=i))), RecognitionOptions())) for i in range(2)]
        await asyncio.sleep(0)
        start = time.perf_counter()
        with pytest.raises(Overloaded, match="limit 2"):
            await p.recognize(AudioInput(encode(speechlike(1.0))), RecognitionOptions())
        refused_in = time.perf_counter() - start
        done = await asyncio.gather(*slow)
        return refused_in, done

    refused_in, done = run_with_pipeline(engine, tiny_models, body, max_queue_items=2)
    assert refused_in < 0.5  # behaviour, loosely: refused without waiting for the queue
    assert all(t.text for t in done)


def test_wait_limit_refuses_while_the_requests_ahead_would_take_too_long(engine, tiny_models):
    async def body(p):
        # Real answers set the pace, if they came while others waited (a lone one does not).
        await p.recognize(AudioInput(encode(speechlike(1.0))), RecognitionOptions())
        assert p.admission.answer_interval_s is None
        await asyncio.gather(*(p.recognize(AudioInput(encode(speechlike(1.0, seed=s))), RecognitionOptions()) for s in (2, 3)))
        interval = p.admission.answer_interval_s
        # One request in flight: about `interval` of wait, over the 1 ms limit.
        with p.admission.admit(), pytest.raises(Overloaded, match=r"the 1 requests in progress would take about .* \(limit 0.001 s\)"):
            await p.recognize(AudioInput(encode(speechlike(1.0, seed=1))), RecognitionOptions())
        alone = await p.recognize(AudioInput(encode(speechlike(1.0, seed=1))), RecognitionOptions())
        return interval, alone

    interval, alone = run_with_pipeline(engine, tiny_models, body, max_queue_wait_seconds=0.001)
    assert interval > 0.001
    assert alone.text  # with nothing ahead it is admitted, however slow the last answers were


def test_options_validation():
    with pytest.raises(InvalidConfig, match="unknown engine option 'device'"):
        RecognitionOptions.from_request(None, False, [], {"device": "cuda"})
    with pytest.raises(InvalidConfig, match="out of range"):
        RecognitionOptions.from_request(None, False, [], {"max_end_silence_ms": "10"})
    with pytest.raises(InvalidConfig, match="boost"):
        RecognitionOptions.from_request(None, False, [("阿里巴巴", 500.0)], {})
    with pytest.raises(InvalidConfig, match="empty"):
        RecognitionOptions.from_request(None, False, [(" ", 1.0)], {})
    opts = RecognitionOptions.from_request(None, True, [("b", 1.0), ("a", 0.0), ("b", 2.0)], {"max_end_silence_ms": "500"})
    assert opts.punctuation and opts.word_times and opts.hotwords == ("a", "b") and opts.max_end_silence_ms == 500


def test_join_tokens():
    assert join_tokens(["你", "好", "hello", "world", "。"]) == "你好hello world。"
    assert join_tokens(["ok", "2", "个"]) == "ok 2个"


def test_a_lone_request_does_not_wait_for_the_batch_window(engine, tiny_models):
    async def body(p):
        start = time.perf_counter()
        await p.recognize(AudioInput(encode(speechlike(1.0))), RecognitionOptions())
        return time.perf_counter() - start

    # A 2 s window would dominate if a lone request waited for company that never comes.
    assert run_with_pipeline(engine, tiny_models, body, max_batch_wait_ms=2000) < 1.5
