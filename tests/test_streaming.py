"""StreamingRecognize end to end on the real server (tiny online, VAD, offline and punctuation models)."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest

from app import metrics
from app.core.audio import AudioInput, AudioLimits, FileUpload, decode_audio
from app.gen.paraformer.asr.v1 import asr_pb2, asr_pb2_grpc
from tests.helpers import encode, speechlike, utterances

pytestmark = pytest.mark.integration

TWO_UTTERANCES = utterances(("silence", 0.5), ("speech", 2.0), ("silence", 1.5), ("speech", 1.5), ("silence", 1.2))
BEGIN, END = asr_pb2.SPEECH_EVENT_TYPE_SPEECH_BEGIN, asr_pb2.SPEECH_EVENT_TYPE_SPEECH_END


def pcm16(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()


def config(**kw) -> asr_pb2.StreamingRecognitionConfig:
    rc = kw.pop("rc", None) or asr_pb2.RecognitionConfig(encoding=asr_pb2.AUDIO_ENCODING_LINEAR16, sample_rate_hertz=16000)
    return asr_pb2.StreamingRecognitionConfig(config=rc, **kw)


def requests(cfg, audio: bytes, chunk_bytes: int = 3200, pause: float = 0.0, first=None):
    if first is not None:
        yield first
    if cfg is not None:
        yield asr_pb2.StreamingRecognizeRequest(streaming_config=cfg)
    for i in range(0, len(audio), chunk_bytes):
        if pause:
            time.sleep(pause)
        yield asr_pb2.StreamingRecognizeRequest(audio_content=audio[i : i + chunk_bytes])


def live_requests(started: threading.Event, chunks: int, started_after: int, pause: float):
    """A live stream of 100 ms chunks with interim results; ``started`` is set once ``started_after`` chunks are out."""
    yield asr_pb2.StreamingRecognizeRequest(streaming_config=config(interim_results=True))
    for k in range(chunks):
        if k == started_after:
            started.set()
        time.sleep(pause)
        yield asr_pb2.StreamingRecognizeRequest(audio_content=pcm16(speechlike(0.1, seed=k)))


def run_stream(target, reqs, timeout=60):
    with grpc.insecure_channel(target) as channel:
        return list(asr_pb2_grpc.RecognizerStub(channel).StreamingRecognize(reqs, timeout=timeout))


def finals(responses):
    return [r.results[0] for r in responses if r.results and r.results[0].is_final]


def test_two_utterances_give_interims_then_one_final_each_in_order(server):
    responses = run_stream(server.target, requests(config(interim_results=True), pcm16(TWO_UTTERANCES)))
    assert all(r.request_id for r in responses)
    kinds = []
    for r in responses:
        if r.speech_event_type == BEGIN:
            kinds.append("begin")
        elif r.speech_event_type == END:
            kinds.append("end")
        elif r.results:
            kinds.append("final" if r.results[0].is_final else "interim")
    # Per utterance: begin, interims..., end, final. Nothing of utterance 1 after its final.
    done = [r.results[0] for r in responses if r.results]
    assert [f.utterance_index for f in finals(responses)] == [0, 1]
    for index in (0, 1):
        mine = [i for i, res in enumerate(done) if res.utterance_index == index]
        assert done[mine[-1]].is_final and not any(done[i].is_final for i in mine[:-1])
        assert any(not done[i].is_final for i in mine), "interim results expected before the final"
    assert kinds.count("begin") == 2 and kinds.count("end") == 2
    assert kinds.index("begin") < kinds.index("interim") < kinds.index("end") < kinds.index("final")
    f0, f1 = finals(responses)
    assert f0.alternatives[0].transcript and f1.alternatives[0].transcript
    assert 200 <= f0.start_time_ms < f0.end_time_ms <= f1.start_time_ms < f1.end_time_ms <= 6700
    assert f0.stability == 1.0


def test_half_close_in_mid_speech_flushes_the_last_utterance(server):
    audio = utterances(("silence", 0.4), ("speech", 2.0))  # no trailing silence: the VAD never ends it
    responses = run_stream(server.target, requests(config(), pcm16(audio)))
    (final,) = finals(responses)
    assert final.alternatives[0].transcript and final.end_time_ms == 2400


def test_without_interim_results_only_events_and_finals(server):
    responses = run_stream(server.target, requests(config(interim_results=False), pcm16(TWO_UTTERANCES)))
    assert all(r.results[0].is_final for r in responses if r.results)
    assert len(finals(responses)) == 2


def test_float32_44k_stereo_chunks_of_odd_sizes(server):
    x = utterances(("silence", 0.3), ("speech", 1.5), ("silence", 1.2), sr=44100)
    audio = np.stack([x, x], 1).astype("<f4").tobytes()
    rc = asr_pb2.RecognitionConfig(encoding=asr_pb2.AUDIO_ENCODING_FLOAT32, sample_rate_hertz=44100, audio_channel_count=2)
    responses = run_stream(server.target, requests(config(rc=rc), audio, chunk_bytes=1237))
    assert len(finals(responses)) == 1 and finals(responses)[0].alternatives[0].transcript


def test_offline_mode_and_word_times(server):
    rc = asr_pb2.RecognitionConfig(encoding=asr_pb2.AUDIO_ENCODING_LINEAR16, sample_rate_hertz=16000, enable_word_time_offsets=True)
    responses = run_stream(server.target, requests(config(rc=rc, interim_results=True, mode=asr_pb2.STREAMING_MODE_OFFLINE), pcm16(TWO_UTTERANCES)))
    assert all(r.results[0].is_final for r in responses if r.results)  # no online model, no interims
    for final in finals(responses):
        words = final.alternatives[0].words
        assert words and all(final.start_time_ms <= w.start_time_ms < w.end_time_ms <= final.end_time_ms for w in words)


def test_online_mode_finals_come_from_the_online_model(server):
    responses = run_stream(server.target, requests(config(interim_results=True, mode=asr_pb2.STREAMING_MODE_ONLINE), pcm16(TWO_UTTERANCES)))
    assert len(finals(responses)) == 2 and all(f.alternatives[0].transcript for f in finals(responses))


def test_single_utterance_ends_the_stream(server):
    responses = run_stream(server.target, requests(config(single_utterance=True), pcm16(TWO_UTTERANCES)))
    assert len(finals(responses)) == 1
    assert responses[-1].speech_event_type == asr_pb2.SPEECH_EVENT_TYPE_END_OF_SINGLE_UTTERANCE


def test_long_utterance_is_cut_at_max_utterance(server):
    audio = utterances(("speech", 5.0), ("silence", 1.0))
    responses = run_stream(server.target, requests(config(endpointing=asr_pb2.EndpointingConfig(max_utterance_ms=2000)), pcm16(audio)))
    assert len(finals(responses)) >= 2
    assert all(f.end_time_ms - f.start_time_ms <= 2300 for f in finals(responses))


def expect_stream_error(target, reqs, code, fragment, timeout=30):
    with pytest.raises(grpc.RpcError) as err:
        run_stream(target, reqs, timeout=timeout)
    assert err.value.code() == code, err.value.details()
    assert fragment in err.value.details()


FLOAT_RC = asr_pb2.RecognitionConfig(encoding=asr_pb2.AUDIO_ENCODING_FLOAT32, sample_rate_hertz=16000)
CONFIG_MSG = asr_pb2.StreamingRecognizeRequest(streaming_config=config())
STREAM_ERRORS = {
    "nothing": (lambda: iter([]), "first message of a stream must carry streaming_config"),
    "audio first": (lambda: requests(None, pcm16(speechlike(0.5))), "first message of a stream must carry streaming_config"),
    "container encoding": (lambda: requests(config(rc=asr_pb2.RecognitionConfig()), b""), "raw PCM"),
    "no rate": (lambda: requests(config(rc=asr_pb2.RecognitionConfig(encoding=asr_pb2.AUDIO_ENCODING_LINEAR16)), b""), "sample_rate_hertz"),
    "bad chunk": (lambda: requests(config(chunk_duration_ms=100), b""), "chunk_duration_ms must be one of"),
    "bad mode": (lambda: requests(config(mode=9), b""), "unknown streaming mode"),
    "config twice": (lambda: iter([CONFIG_MSG, CONFIG_MSG]), "only be sent in the first"),
    "nan audio": (lambda: requests(config(rc=FLOAT_RC), np.full(800, np.nan, "<f4").tobytes()), "NaN"),
}


@pytest.mark.parametrize("name", list(STREAM_ERRORS))
def test_config_and_audio_errors_are_invalid_argument(server, name):
    reqs, fragment = STREAM_ERRORS[name]
    expect_stream_error(server.target, reqs(), grpc.StatusCode.INVALID_ARGUMENT, fragment)


def test_modes_that_need_the_online_model_are_refused_without_it(make_server):
    srv = make_server(online_model="none")
    expect_stream_error(srv.target, requests(config(mode=asr_pb2.STREAMING_MODE_TWO_PASS), b""), grpc.StatusCode.INVALID_ARGUMENT, "needs the online model")
    responses = run_stream(srv.target, requests(config(interim_results=True), pcm16(TWO_UTTERANCES)))  # defaults to OFFLINE
    assert len(finals(responses)) == 2


def test_stream_limits(make_server):
    srv = make_server(max_streams=1, stream_idle_timeout_s=1.0, max_stream_seconds=2.0)
    # Idle: config, one chunk, then nothing for longer than the idle timeout.
    expect_stream_error(
        srv.target, requests(config(), pcm16(speechlike(0.2)), pause=2.5, chunk_bytes=6400), grpc.StatusCode.DEADLINE_EXCEEDED, "no audio received"
    )
    expect_stream_error(srv.target, requests(config(), pcm16(speechlike(3.0))), grpc.StatusCode.OUT_OF_RANGE, "limit of 2 seconds")
    # A second concurrent stream beyond max_streams=1 is refused.
    holder_started = threading.Event()

    def slow_requests():
        yield asr_pb2.StreamingRecognizeRequest(streaming_config=config())
        holder_started.set()
        for _ in range(10):
            time.sleep(0.1)
            yield asr_pb2.StreamingRecognizeRequest(audio_content=pcm16(np.zeros(1600, np.float32)))

    holder = threading.Thread(target=lambda: run_stream(srv.target, slow_requests()))
    holder.start()
    holder_started.wait(5)
    time.sleep(0.3)
    expect_stream_error(srv.target, requests(config(), pcm16(speechlike(0.5))), grpc.StatusCode.RESOURCE_EXHAUSTED, "streams open (limit 1)")
    holder.join(10)
    assert srv.pipeline.streams.open == 0


def test_cancelled_streams_leak_nothing(server):
    pipeline = server.pipeline
    gauge = metrics.STREAMS_OPEN.labels(pipeline.model_name)
    with grpc.insecure_channel(server.target) as channel:
        stub = asr_pb2_grpc.RecognizerStub(channel)
        for i in range(30):
            started = threading.Event()

            call = stub.StreamingRecognize(live_requests(started, chunks=40, started_after=3, pause=0.01), timeout=30)
            started.wait(5)
            if i % 2:
                next(call, None)  # cancel after the first response too
            call.cancel()
    deadline = time.monotonic() + 10
    while (pipeline.streams.open or gauge._value.get()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pipeline.streams.open == 0 and gauge._value.get() == 0


def test_streams_share_batches_with_unary_requests(make_server):
    srv = make_server(max_batch_wait_ms=40)
    threads = [threading.Thread(target=run_stream, args=(srv.target, requests(config(), pcm16(TWO_UTTERANCES), chunk_bytes=16000))) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert srv.pipeline.scheduler.stats.largest_batch > 1


def test_wav_upload_is_decoded_incrementally_and_equals_whole_file_decoding():
    limits = AudioLimits(max_duration_s=60)
    for rate, subtype in ((16000, "PCM_16"), (44100, "PCM_16"), (22050, "FLOAT")):
        data = encode(speechlike(2.0, rate), rate, "WAV", subtype)
        upload = FileUpload(10_000_000, limits)
        for i in range(0, len(data), 777):
            upload.add(data[i : i + 777])
        assert upload.incremental
        streamed = upload.finish()
        whole = decode_audio(AudioInput(data), limits)
        assert abs(len(streamed.samples) - len(whole.samples)) <= 1
        n = min(len(streamed.samples), len(whole.samples))
        a, b = streamed.samples[:n], whole.samples[:n]
        # Identical at 16 kHz; through the resampler, chunking changes only the filter's edges.
        assert 10 * np.log10(np.sum(b**2) / max(np.sum((a - b) ** 2), 1e-20)) > 50
    flac = encode(speechlike(1.0), 16000, "FLAC")
    upload = FileUpload(10_000_000, limits)
    upload.add(flac)
    assert not upload.incremental and upload.finish().duration_s == pytest.approx(1.0)


@pytest.mark.parametrize("stream_processes", [0, 1], ids=["threads", "worker-process"])
def test_concurrent_streams_share_model_steps_and_answer_as_if_alone(make_server, stream_processes):
    srv = make_server(stream_processes=stream_processes)
    audio = pcm16(TWO_UTTERANCES)

    def answers(responses):
        """Everything a client sees but the request ids: interims, finals and speech events, in order."""
        out = []
        for r in responses:
            if r.speech_event_type in (BEGIN, END):
                out.append((r.speech_event_type, r.speech_event_time_ms))
            for res in r.results:
                out.append((res.is_final, res.utterance_index, res.alternatives[0].transcript, res.start_time_ms, res.end_time_ms))
        return out

    alone = answers(run_stream(srv.target, requests(config(interim_results=True), audio)))
    assert srv.pipeline.vad_steps.largest == 1
    together: list = [None] * 6

    def one(i):
        # 10 ms pauses per 100 ms chunk keep the streams side by side, as live streams are.
        together[i] = answers(run_stream(srv.target, requests(config(interim_results=True), audio, pause=0.01)))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(together))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert srv.pipeline.vad_steps.largest > 1 and srv.pipeline.online_steps.largest > 1
    assert all(answer == alone for answer in together)
    if stream_processes:  # every stream's state left its worker when the stream ended
        assert srv.pipeline.engine.stream_pool.streams_held() == [0]


def test_a_dead_stream_worker_ends_its_streams_with_unavailable_and_the_server_goes_on(make_server):
    import os
    import signal

    srv = make_server(stream_processes=1)
    (pid,) = srv.pipeline.engine.stream_pool.pids()
    started = threading.Event()
    with grpc.insecure_channel(srv.target) as channel:
        call = asr_pb2_grpc.RecognizerStub(channel).StreamingRecognize(live_requests(started, chunks=100, started_after=5, pause=0.02), timeout=30)
        assert started.wait(10)
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(grpc.RpcError) as failure:
            list(call)
    assert failure.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "start a new stream" in failure.value.details()
    assert len(finals(run_stream(srv.target, requests(config(), pcm16(TWO_UTTERANCES))))) == 2  # a new worker serves new streams
    assert srv.pipeline.engine.stream_pool.pids() != [pid]


def test_a_restarted_stream_worker_that_cannot_load_says_why_and_is_tried_again(make_server, tiny_models, tmp_path, monkeypatch):
    import os
    import shutil
    import signal

    from app.engine import worker_process

    online = tmp_path / "online"
    shutil.copytree(tiny_models.online, online)
    srv = make_server(stream_processes=1, online_model=str(online))
    (pid,) = srv.pipeline.engine.stream_pool.pids()
    online.rename(tmp_path / "moved")  # the model files are gone when the worker is restarted
    os.kill(pid, signal.SIGKILL)
    expect_stream_error(srv.target, requests(config(), pcm16(TWO_UTTERANCES)), grpc.StatusCode.UNAVAILABLE, "start a new stream")
    # The restarted worker has no models: streams fail at once, with the reason.
    expect_stream_error(srv.target, requests(config(), pcm16(TWO_UTTERANCES)), grpc.StatusCode.UNAVAILABLE, "could not load its models")
    (tmp_path / "moved").rename(online)
    monkeypatch.setattr(worker_process, "LOAD_RETRY_S", 0.0)  # rather than waiting 30 s for the next attempt
    assert len(finals(run_stream(srv.target, requests(config(), pcm16(TWO_UTTERANCES))))) == 2


def test_new_streams_avoid_a_worker_that_is_still_reloading(make_server):
    import os
    import signal

    srv = make_server(stream_processes=2)
    reloading = srv.pipeline.engine.stream_pool._workers[0]
    reloading.restart(reloading._executor, "was replaced by the test")
    stopped = reloading.pid()
    os.kill(stopped, signal.SIGSTOP)  # holds the new process in its load for as long as the test needs
    try:
        # By "fewest streams" alone each of these would go to worker 0 and wait for its load.
        for _ in range(3):
            assert len(finals(run_stream(srv.target, requests(config(), pcm16(TWO_UTTERANCES)), timeout=30))) == 2
        assert not reloading.ready()
    finally:
        os.kill(stopped, signal.SIGCONT)
    reloading.wait_loaded()
    assert len(finals(run_stream(srv.target, requests(config(), pcm16(TWO_UTTERANCES))))) == 2


def test_new_streams_avoid_a_worker_that_could_not_load(make_server, tiny_models, tmp_path):
    import os
    import shutil
    import signal

    online = tmp_path / "online"
    shutil.copytree(tiny_models.online, online)
    srv = make_server(stream_processes=2, online_model=str(online))
    victim = srv.pipeline.engine.stream_pool.pids()[0]
    online.rename(tmp_path / "moved")
    os.kill(victim, signal.SIGKILL)
    outcomes = []
    for _ in range(6):
        try:
            outcomes.append(len(finals(run_stream(srv.target, requests(config(), pcm16(TWO_UTTERANCES))))))
        except grpc.RpcError as e:
            assert e.code() is grpc.StatusCode.UNAVAILABLE, e.details()
            outcomes.append(e.details())
    # The first streams may meet the dead worker, or its restart that fails; after that every
    # new stream goes to the worker that still has its models.
    assert outcomes[-3:] == [2, 2, 2], outcomes
