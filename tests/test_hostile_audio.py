"""A corpus of hostile audio and property-based fuzzing of the decoder: a clean error each, never a crash.

The corpus is generated (not committed): each entry is built the way such files occur in the wild.
"""

from __future__ import annotations

import io
import struct
import wave
import zlib
from pathlib import Path

import grpc
import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.core.audio import AudioInput, AudioLimits, Encoding, decode_audio
from app.core.errors import InvalidAudio, LimitExceeded
from app.gen.paraformer.asr.v1 import asr_pb2, asr_pb2_grpc
from tests.helpers import encode, ffmpeg_encode, speechlike

LIMITS = AudioLimits(max_duration_s=600)


def wav_header(channels=1, rate=16000, bits=16, fmt_tag=1, data_bytes=0, fmt_size=16) -> bytes:
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", fmt_tag, channels, rate, rate * block, block, bits)
    fmt = fmt[:fmt_size] if fmt_size < 16 else fmt + b"\x00" * (fmt_size - 16)
    body = b"WAVE" + b"fmt " + struct.pack("<I", fmt_size) + fmt + b"data" + struct.pack("<I", data_bytes)
    return b"RIFF" + struct.pack("<I", min(len(body) + data_bytes, 0xFFFFFFFF)) + body


def wav_with(samples: np.ndarray, rate=16000, subtype="PCM_16") -> bytes:
    return encode(samples, rate, "WAV", subtype)


def build_corpus(tmp: Path) -> dict[str, AudioInput]:
    x = speechlike(1.0)
    mp3 = ffmpeg_encode(x, 16000, "mp3", tmp)
    m4a = ffmpeg_encode(x, 16000, "m4a", tmp)
    ogg = encode(x, 16000, "OGG", "VORBIS")
    flac = encode(x, 16000, "FLAC")
    pcm = (x * 32767).astype("<i2").tobytes()
    rng = np.random.default_rng(0)
    corpus = {
        "truncated wav header": wav_with(x)[:10],
        "wav header only": wav_header(),
        "wav claims 4 GB": wav_header(data_bytes=0xFFFFFFF0) + pcm[:3200],
        "wav zero channels": wav_header(channels=0, data_bytes=3200) + b"\x00" * 3200,
        "wav 8 channels": wav_with(np.tile(x[:, None], (1, 8))),
        "wav 1 Hz": wav_header(rate=1, data_bytes=3200) + pcm[:3200],
        "wav 384 kHz": wav_header(rate=384000, data_bytes=32000) + pcm[:32000],
        "wav float NaN": wav_with(np.full(16000, np.nan, np.float32), subtype="FLOAT"),
        "wav float Inf": wav_with(np.full(16000, np.inf, np.float32), subtype="FLOAT"),
        "wav 24 bit": wav_with(x, subtype="PCM_24"),
        "wav 8 bit unsigned": wav_with(x, subtype="PCM_U8"),
        "wav fmt chunk too short": wav_header(fmt_size=8, data_bytes=3200) + pcm[:3200],
        "wav fmt chunk huge": wav_header(fmt_size=60000, data_bytes=100) + pcm[:100],
        "wav unknown codec tag": wav_header(fmt_tag=0x1234, data_bytes=3200) + pcm[:3200],
        "RIFF but AVI": b"RIFF" + struct.pack("<I", 100) + b"AVI LIST" + b"\x00" * 92,
        "mp3 garbage after ID3": b"ID3\x04\x00\x00\x00\x00\x00\x00" + rng.bytes(4000),
        "mp3 ID3 claims huge tag": b"ID3\x04\x00\x00\x7f\x7f\x7f\x7f" + mp3[10:2000],
        "mp3 truncated": mp3[:400],
        "mp3 frame sync noise": b"\xff\xfb\x90\x00" * 2000,
        "flac truncated": flac[:100],
        "flac garbage after magic": b"fLaC" + rng.bytes(2000),
        "ogg truncated": ogg[:300],
        "ogg garbage pages": b"OggS" + rng.bytes(3000),
        "m4a truncated": m4a[:500],
        "m4a ftyp only": m4a[:32],
        "webm header only": b"\x1a\x45\xdf\xa3" + b"\x00" * 60,
        "random megabyte": rng.bytes(1 << 20),
        "zeros megabyte": bytes(1 << 20),
        "0xff megabyte": b"\xff" * (1 << 20),
        "text file": "这不是音频文件。\n".encode() * 100,
        "png image": b"\x89PNG\r\n\x1a\n" + rng.bytes(2000),
        "zip": b"PK\x03\x04" + zlib.compress(bytes(100000)),
        "gzip": b"\x1f\x8b\x08\x00" + zlib.compress(bytes(100000)),
        "huge silence flac (10 min)": encode(np.zeros(16000 * 600 - 16000, np.float32), 16000, "FLAC"),
        "compressed bomb (2 h of silence as flac)": encode(np.zeros(8000 * 7200, np.float32), 8000, "FLAC"),
        "full-scale square wave": wav_with(np.sign(np.sin(np.arange(16000) / 3)).astype(np.float32)),
        "single sample": wav_with(np.zeros(1, np.float32)),
    }
    inputs = {name: AudioInput(data) for name, data in corpus.items()}
    inputs["raw pcm odd bytes"] = AudioInput(pcm[:3201], Encoding.PCM_S16LE, 16000)
    inputs["raw pcm rate 0"] = AudioInput(pcm, Encoding.PCM_S16LE, 0)
    inputs["raw float 1e30"] = AudioInput(np.full(16000, 1e30, "<f4").tobytes(), Encoding.PCM_F32LE, 16000)
    inputs["raw pcm 300 channels"] = AudioInput(pcm[:3000], Encoding.PCM_S16LE, 16000, channels=300)
    return inputs


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_corpus(tmp_path_factory.mktemp("hostile"))


def test_corpus_is_big_enough(corpus):
    assert len(corpus) >= 30


def test_every_hostile_input_decodes_or_fails_cleanly(corpus):
    outcomes = {}
    for name, inp in corpus.items():
        try:
            decoded = decode_audio(inp, LIMITS)
            assert decoded.samples.dtype == np.float32 and np.isfinite(decoded.samples).all()
            assert np.max(np.abs(decoded.samples), initial=0) <= 1.0
            outcomes[name] = "ok"
        except (InvalidAudio, LimitExceeded) as e:
            message = str(e)
            assert message and "Traceback" not in message and " at 0x" not in message, (name, message)
            outcomes[name] = "refused"
    # The clearly broken ones are refused; the odd-but-valid ones decode.
    for name in (
        "wav header only",
        "wav zero channels",
        "wav 1 Hz",
        "wav 384 kHz",
        "wav float NaN",
        "random megabyte",
        "compressed bomb (2 h of silence as flac)",
    ):
        assert outcomes[name] == "refused", name
    for name in ("wav 8 channels", "wav 24 bit", "wav 8 bit unsigned", "huge silence flac (10 min)", "full-scale square wave"):
        assert outcomes[name] == "ok", name


@pytest.mark.integration
def test_the_server_survives_the_whole_corpus(server, corpus):
    codes = {}
    with grpc.insecure_channel(server.target, options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
        stub = asr_pb2_grpc.RecognizerStub(channel)
        for name, inp in corpus.items():
            enc = {Encoding.CONTAINER: 0, Encoding.PCM_S16LE: 1, Encoding.PCM_F32LE: 2}[inp.encoding]
            config = asr_pb2.RecognitionConfig(encoding=enc, sample_rate_hertz=inp.sample_rate_hz, audio_channel_count=inp.channels)
            try:
                stub.Recognize(asr_pb2.RecognizeRequest(config=config, audio=asr_pb2.RecognitionAudio(content=inp.data)), timeout=120)
                codes[name] = grpc.StatusCode.OK
            except grpc.RpcError as e:
                codes[name] = e.code()
        good = stub.Recognize(asr_pb2.RecognizeRequest(audio=asr_pb2.RecognitionAudio(content=encode(speechlike(1.0)))), timeout=30)
    assert good.transcript
    assert set(codes.values()) <= {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT}, {
        k: v for k, v in codes.items() if v not in (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT)
    }


VALID = [
    encode(speechlike(0.3), 16000, "WAV", "PCM_16"),
    encode(speechlike(0.3), 22050, "FLAC"),
    encode(speechlike(0.3), 16000, "OGG", "VORBIS"),
]


def _decode_cleanly(inp: AudioInput) -> None:
    try:
        decoded = decode_audio(inp, AudioLimits(max_duration_s=30))
    except (InvalidAudio, LimitExceeded) as e:
        assert str(e)
        return
    assert np.isfinite(decoded.samples).all()


FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=4096))
def test_fuzz_arbitrary_bytes(data):
    _decode_cleanly(AudioInput(data))


@FUZZ
@given(st.sampled_from(VALID), st.lists(st.tuples(st.integers(0, 4095), st.integers(0, 255)), min_size=1, max_size=12), st.integers(8, 1 << 14))
def test_fuzz_mutated_files(original, flips, cut):
    data = bytearray(original[:cut])
    for pos, value in flips:
        if pos < len(data):
            data[pos] = value
    _decode_cleanly(AudioInput(bytes(data)))


@FUZZ
@given(st.binary(max_size=2048), st.sampled_from([Encoding.PCM_S16LE, Encoding.PCM_F32LE]), st.integers(-5, 400000), st.integers(0, 40))
def test_fuzz_raw_pcm(data, encoding, rate, channels):
    _decode_cleanly(AudioInput(data, encoding, rate, channels))


def test_wave_module_agrees_on_our_header_builder():
    # The corpus' hand-made headers are only meaningful if a well-formed one parses.
    with wave.open(io.BytesIO(wav_header(data_bytes=3200) + b"\x00" * 3200)) as w:
        assert w.getnframes() == 1600 and w.getframerate() == 16000
    assert sf.info(io.BytesIO(wav_header(data_bytes=3200) + b"\x00" * 3200)).frames == 1600
