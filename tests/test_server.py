"""End to end: the real server on a loopback port, called over gRPC with plain generated stubs."""

from __future__ import annotations

import concurrent.futures

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from app.gen import asr_service_pb2, asr_service_pb2_grpc
from app.gen.paraformer.asr.v1 import asr_pb2, asr_pb2_grpc
from tests.helpers import encode, ffmpeg_encode, speechlike, utterances

pytestmark = pytest.mark.integration

SPEECH = utterances(("silence", 0.3), ("speech", 2.0), ("silence", 0.3))


def stub(target):
    channel = grpc.insecure_channel(target, options=[("grpc.max_send_message_length", 64 * 1024 * 1024)])
    return asr_pb2_grpc.RecognizerStub(channel), channel


def recognize(target, content: bytes, **config) -> asr_pb2.RecognizeResponse:
    s, channel = stub(target)
    with channel:
        request = asr_pb2.RecognizeRequest(config=asr_pb2.RecognitionConfig(**config), audio=asr_pb2.RecognitionAudio(content=content))
        return s.Recognize(request, timeout=60)


def expect_error(target, content: bytes, code: grpc.StatusCode, fragment: str, **config):
    with pytest.raises(grpc.RpcError) as err:
        recognize(target, content, **config)
    assert err.value.code() == code, err.value.details()
    assert fragment.lower() in err.value.details().lower()
    assert "Traceback" not in err.value.details()
    return err.value


def test_recognize_wav_gives_text_segments_and_timing(server):
    response = recognize(server.target, encode(SPEECH), enable_word_time_offsets=True)
    assert response.transcript
    assert response.audio_duration_ms == 2600
    assert response.processing_time_ms >= 0 and response.request_id and response.model == "tiny"
    assert response.results and response.results[0].alternatives[0].transcript
    assert response.results[0].alternatives[0].words
    words = [w for r in response.results for w in r.alternatives[0].words]
    assert all(0 <= w.start_time_ms < w.end_time_ms <= 2600 for w in words)


def test_same_audio_in_other_containers_and_rates(server, tmp_path):
    wav = recognize(server.target, encode(SPEECH)).transcript
    assert recognize(server.target, encode(SPEECH, fmt="FLAC")).transcript == wav
    pcm = (SPEECH * 32767).astype("<i2").tobytes()
    assert recognize(server.target, pcm, encoding=asr_pb2.AUDIO_ENCODING_LINEAR16, sample_rate_hertz=16000).transcript == wav
    f32 = SPEECH.astype("<f4").tobytes()
    assert recognize(server.target, f32, encoding=asr_pb2.AUDIO_ENCODING_FLOAT32, sample_rate_hertz=16000).transcript == wav
    # Lossy or resampled inputs are different samples: they must decode and give some text.
    speech44 = utterances(("silence", 0.3), ("speech", 2.0), ("silence", 0.3), sr=44100)
    assert recognize(server.target, ffmpeg_encode(speech44, 44100, "mp3", tmp_path)).transcript
    stereo = encode(np.stack([speech44, 0.5 * speech44], 1), 44100, "WAV", "PCM_16")
    response = recognize(server.target, stereo)
    assert response.transcript and abs(response.audio_duration_ms - 2600) <= 1


def test_recognition_is_deterministic_across_calls(server):
    a = recognize(server.target, encode(SPEECH), enable_word_time_offsets=True)
    b = recognize(server.target, encode(SPEECH), enable_word_time_offsets=True)
    assert list(a.results) == list(b.results)


def test_punctuation_switch(server):
    plain = recognize(server.target, encode(SPEECH), enable_automatic_punctuation=False).transcript
    assert plain and not any(c in plain for c in "，。？、")


def test_request_id_is_echoed_in_trailing_metadata(server):
    s, channel = stub(server.target)
    with channel:
        request = asr_pb2.RecognizeRequest(audio=asr_pb2.RecognitionAudio(content=encode(SPEECH)))
        response, call = s.Recognize.with_call(request, metadata=[("x-request-id", "my-id-123")], timeout=30)
        assert ("x-request-id", "my-id-123") in call.trailing_metadata()
        assert response.request_id == "my-id-123"
        with pytest.raises(grpc.RpcError) as err:
            s.Recognize(asr_pb2.RecognizeRequest(audio=asr_pb2.RecognitionAudio(content=b"junk" * 10)), timeout=30)
        rid = dict(err.value.trailing_metadata())["x-request-id"]
        assert len(rid) == 32  # generated when the client sends none


BAD = [
    ("empty", b"", {}, "empty"),
    ("garbage", b"\x01\x02garbage" * 50, {}, "not a recognised audio format"),
    ("truncated wav", encode(SPEECH)[:40], {}, "wav"),
    ("zero samples wav", encode(np.zeros(0, np.float32)), {}, "too short"),
    ("too short", encode(np.zeros(100, np.float32)), {}, "too short"),
    ("nan", np.full(1600, np.nan, "<f4").tobytes(), {"encoding": asr_pb2.AUDIO_ENCODING_FLOAT32, "sample_rate_hertz": 16000}, "NaN"),
    ("pcm no rate", b"\x00\x00" * 1600, {"encoding": asr_pb2.AUDIO_ENCODING_LINEAR16}, "sample_rate_hertz"),
    ("absurd rate", b"\x00\x00" * 1600, {"encoding": asr_pb2.AUDIO_ENCODING_LINEAR16, "sample_rate_hertz": 1}, "sample rate"),
    ("negative rate", encode(SPEECH), {"sample_rate_hertz": -5}, "negative"),
    ("unknown encoding", encode(SPEECH), {"encoding": 42}, "encoding"),
    ("channels on a file", encode(SPEECH), {"audio_channel_count": 2}, "raw PCM only"),
    ("unknown engine option", encode(SPEECH), {"engine_options": {"device": "cuda"}}, "unknown engine option"),
    ("unknown model", encode(SPEECH), {"model": "whisper"}, "unknown model"),
    ("bad hotword", encode(SPEECH), {"hotwords": [asr_pb2.Hotword(phrase="x", boost=1000)]}, "boost"),
]


@pytest.mark.parametrize(("name", "content", "config", "fragment"), BAD, ids=[b[0] for b in BAD])
def test_bad_inputs_get_invalid_argument_and_the_server_keeps_serving(server, name, content, config, fragment):
    expect_error(server.target, content, grpc.StatusCode.INVALID_ARGUMENT, fragment, **config)
    assert recognize(server.target, encode(SPEECH)).transcript


def test_too_long_audio_names_the_limit(make_server):
    srv = make_server(max_audio_seconds=2.0)
    expect_error(srv.target, encode(speechlike(3.0)), grpc.StatusCode.INVALID_ARGUMENT, "limit of 2 seconds")


def test_oversized_message_names_the_limit(make_server):
    srv = make_server(max_receive_message_bytes=100_000)
    err = expect_error(srv.target, encode(speechlike(5.0)), grpc.StatusCode.RESOURCE_EXHAUSTED, "100000")
    assert "larger than max" in err.details()
    assert recognize(srv.target, encode(speechlike(1.0))).transcript


def test_health_is_not_serving_until_models_load(make_server):
    srv = make_server(load=False)
    with grpc.insecure_channel(srv.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "paraformer.asr.v1.Recognizer", "ASRService"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
        expect_error(srv.target, encode(SPEECH), grpc.StatusCode.UNAVAILABLE, "loading")
        srv.load()
        for service in ("", "paraformer.asr.v1.Recognizer", "ASRService"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert recognize(srv.target, encode(SPEECH)).transcript


def test_reflection_lists_and_describes_every_service(server):
    with grpc.insecure_channel(server.target) as channel:
        db = ProtoReflectionDescriptorDatabase(channel)
        services = set(db.get_services())
        assert {
            "paraformer.asr.v1.Recognizer",
            "ASRService",
            "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection",
        } <= services
        from google.protobuf.descriptor_pool import DescriptorPool

        pool = DescriptorPool(db)
        recognize_method = pool.FindServiceByName("paraformer.asr.v1.Recognizer").methods_by_name["Recognize"]
        assert recognize_method.input_type.full_name == "paraformer.asr.v1.RecognizeRequest"
        legacy = pool.FindServiceByName("ASRService")
        assert {m.name for m in legacy.methods} == {"Recognize", "StreamRecognize"}


# ---------------------------------------------------------------- the legacy ASRService
# Written the way the recipe's client is: plain generated stubs, wav bytes, success/error_msg checks.


def legacy_stub(target):
    channel = grpc.insecure_channel(target)
    return asr_service_pb2_grpc.ASRServiceStub(channel), channel


def test_legacy_recognize(server):
    s, channel = legacy_stub(server.target)
    with channel:
        reply = s.Recognize(asr_service_pb2.AudioRequest(audio_data=encode(SPEECH), format="wav"))
    assert reply.success and reply.text and not reply.error_msg
    assert reply.text == recognize(server.target, encode(SPEECH)).transcript


def test_legacy_errors_are_in_band(server):
    s, channel = legacy_stub(server.target)
    with channel:
        reply = s.Recognize(asr_service_pb2.AudioRequest(audio_data=b"not audio" * 20, format="mp3"))
    assert not reply.success and reply.text == ""
    assert "not a recognised audio format" in reply.error_msg


def _chunks(data: bytes, size: int, mark_final: bool):
    for i in range(0, len(data), size):
        yield asr_service_pb2.AudioChunk(data=data[i : i + size], is_final=mark_final and i + size >= len(data))


def test_legacy_stream_recognize_with_is_final_and_with_half_close(server):
    data = encode(SPEECH)
    s, channel = legacy_stub(server.target)
    with channel:
        with_final = s.StreamRecognize(_chunks(data, 4096, mark_final=True))
        half_close = s.StreamRecognize(_chunks(data, 1000, mark_final=False))
    assert with_final.success and half_close.success
    assert with_final.text == half_close.text == recognize(server.target, data).transcript


def test_legacy_stream_upload_limit(make_server):
    srv = make_server(legacy_max_upload_bytes=50_000)
    s, channel = legacy_stub(srv.target)
    with channel:
        reply = s.StreamRecognize(_chunks(encode(speechlike(3.0)), 10_000, mark_final=True))
    assert not reply.success and "50000 bytes" in reply.error_msg


def test_concurrent_clients_are_batched(make_server):
    srv = make_server(max_batch_size=16, max_batch_wait_ms=30)
    clips = [encode(speechlike(1.0 + 0.05 * i, seed=i)) for i in range(16)]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda c: recognize(srv.target, c).transcript, clips))
    assert all(results)
    assert srv.pipeline.scheduler.stats.largest_batch > 1
    assert [recognize(srv.target, c).transcript for c in clips] == results


def test_a_second_server_on_the_same_port_fails_to_start(server, tiny_models):
    import asyncio

    from app.transport.server import start_server
    from tests.helpers import settings_for

    with pytest.raises(OSError, match="cannot listen"):
        asyncio.run(start_server(settings_for(tiny_models, port=server.running.port)))


def test_overload_refusals_carry_a_retry_hint(make_server):
    srv = make_server(max_queue_items=1, max_batch_size=1)
    s, channel = stub(srv.target)
    with channel:
        request = asr_pb2.RecognizeRequest(audio=asr_pb2.RecognitionAudio(content=encode(speechlike(20.0))))
        busy = [s.Recognize.future(request, timeout=60) for _ in range(3)]
        refused = [f for f in busy if f.exception() is not None]
        assert refused, "expected at least one refusal with a queue of one"
        for future in refused:
            err = future.exception()
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            metadata = dict(err.trailing_metadata())
            assert metadata["grpc-retry-pushback-ms"] == "250" and metadata["x-request-id"]


def test_legacy_upload_that_goes_quiet_is_ended(make_server):
    import time as _time

    srv = make_server(stream_idle_timeout_s=1.0)
    data = encode(SPEECH)

    def quiet_uploader():
        yield asr_service_pb2.AudioChunk(data=data[:4000])
        _time.sleep(2.5)  # longer than the idle timeout
        yield asr_service_pb2.AudioChunk(data=data[4000:], is_final=True)

    s, channel = legacy_stub(srv.target)
    with channel:
        reply = s.StreamRecognize(quiet_uploader(), timeout=30)
    assert not reply.success and "no audio received" in reply.error_msg
    assert srv.pipeline.admission.items == 0


def test_the_server_sets_the_gil_switch_interval(make_server, tiny_models):
    import sys

    from app.config import ConfigError
    from tests.helpers import settings_for

    make_server(load=False, gil_switch_interval_ms=0.7)  # process-wide: later servers set their own
    assert sys.getswitchinterval() == pytest.approx(0.0007)
    with pytest.raises(ConfigError, match="gil_switch_interval_ms"):
        settings_for(tiny_models, gil_switch_interval_ms=0.0)
