"""Audio decoding: every container, raw PCM, resampling and downmix, validation, and the FunASR guard."""

from __future__ import annotations

import io
import shutil
import subprocess
import wave

import numpy as np
import pytest
import soundfile as sf

from app.core.audio import AudioInput, AudioLimits, Encoding, decode_audio, sniff_container
from app.core.errors import InvalidAudio, LimitExceeded
from tests.helpers import encode, ffmpeg_encode, speechlike

LIMITS = AudioLimits(max_duration_s=60)


def _snr_db(reference: np.ndarray, other: np.ndarray) -> float:
    n = min(len(reference), len(other))
    reference, other = reference[:n], other[:n]
    return 10 * np.log10(np.sum(reference**2) / max(np.sum((reference - other) ** 2), 1e-20))


@pytest.mark.parametrize(
    ("fmt", "subtype", "container"),
    [("WAV", "PCM_16", "wav"), ("WAV", "FLOAT", "wav"), ("WAV", "PCM_24", "wav"), ("FLAC", None, "flac"), ("OGG", "VORBIS", "ogg")],
)
def test_soundfile_containers_decode_to_16k_mono(fmt, subtype, container):
    x = speechlike(1.5)
    decoded = decode_audio(AudioInput(encode(x, 16000, fmt, subtype)), LIMITS)
    assert decoded.container == container
    assert decoded.samples.dtype == np.float32
    assert abs(decoded.duration_s - 1.5) < 0.01
    assert decoded.source_sample_rate_hz == 16000
    # Lossless formats give the samples back (to the format's precision); vorbis is close.
    assert _snr_db(x, decoded.samples) > (15 if container == "ogg" else 40)


@pytest.mark.parametrize("ext", ["mp3", "m4a", "opus"])
def test_ffmpeg_containers_decode(ext, tmp_path):
    x = speechlike(2.0, 44100)
    decoded = decode_audio(AudioInput(ffmpeg_encode(x, 44100, ext, tmp_path)), LIMITS)
    assert decoded.source_sample_rate_hz in (44100, 48000)
    assert 1.95 < decoded.duration_s < 2.15  # encoders add a few ms of priming
    assert np.max(np.abs(decoded.samples)) > 0.3


def test_stereo_44k_is_mixed_down_and_resampled():
    t = np.arange(44100) / 44100
    left, right = 0.5 * np.sin(2 * np.pi * 300 * t), 0.1 * np.sin(2 * np.pi * 300 * t)
    decoded = decode_audio(AudioInput(encode(np.stack([left, right], 1), 44100, "WAV", "PCM_16")), LIMITS)
    assert decoded.source_channels == 2 and decoded.source_sample_rate_hz == 44100
    assert len(decoded.samples) == pytest.approx(16000, abs=2)
    # The mean of the channels: amplitude (0.5 + 0.1) / 2, not the sum and not one channel.
    assert np.max(np.abs(decoded.samples[1000:-1000])) == pytest.approx(0.3, abs=0.01)


@pytest.mark.parametrize("encoding", [Encoding.PCM_S16LE, Encoding.PCM_F32LE])
def test_raw_pcm(encoding):
    x = speechlike(1.0, 8000)
    data = (x * 32767).astype("<i2").tobytes() if encoding is Encoding.PCM_S16LE else x.astype("<f4").tobytes()
    decoded = decode_audio(AudioInput(data, encoding, 8000), LIMITS)
    assert len(decoded.samples) == 16000
    assert np.max(np.abs(decoded.samples)) == pytest.approx(np.max(np.abs(x)), abs=0.03)


def test_raw_pcm_interleaved_channels():
    left = np.full(1600, 0.5, np.float32)
    right = np.full(1600, -0.5, np.float32)
    data = np.stack([left, right], 1).astype("<f4").tobytes()
    decoded = decode_audio(AudioInput(data, Encoding.PCM_F32LE, 16000, channels=2), LIMITS)
    assert len(decoded.samples) == 1600
    assert np.allclose(decoded.samples, 0.0)


def _funasr_load(path: str) -> np.ndarray:
    from funasr.utils.load_utils import load_audio_text_image_video

    return np.asarray(load_audio_text_image_video(path, fs=16000), dtype=np.float32)


def test_samples_match_funasrs_own_loader_on_wav(tmp_path):
    """The guard against scaling bugs (int16 values fed as floats give wrong text silently)."""
    path = tmp_path / "a.wav"
    sf.write(path, speechlike(2.0), 16000, subtype="PCM_16")
    ours = decode_audio(AudioInput(path.read_bytes()), LIMITS).samples
    theirs = _funasr_load(str(path))
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_samples_match_funasrs_own_loader_on_resampled_stereo(tmp_path):
    path = tmp_path / "b.wav"
    x = speechlike(2.0, 44100)
    sf.write(path, np.stack([x, 0.5 * x], 1), 44100, subtype="PCM_16")
    ours = decode_audio(AudioInput(path.read_bytes()), LIMITS).samples
    theirs = _funasr_load(str(path))
    assert abs(len(ours) - len(theirs)) <= 2
    # Different (both high-quality) resamplers: same signal, same scale, tiny differences.
    assert _snr_db(theirs, ours) > 30
    assert np.max(np.abs(ours)) == pytest.approx(np.max(np.abs(theirs)), rel=0.02)


def test_real_speech_from_espeak_matches_funasr_loader(tmp_path):
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is missing: run `bash scripts/setup.sh` (it installs Debian's espeak-ng)")
    path = tmp_path / "speech.wav"
    subprocess.run(["espeak-ng", "-v", "zh", "-w", str(path), "你好，今天天气很好"], check=True, capture_output=True)
    with wave.open(str(path)) as w:
        assert w.getframerate() != 16000  # exercise the resampler on real speech
    ours = decode_audio(AudioInput(path.read_bytes()), LIMITS).samples
    assert _snr_db(_funasr_load(str(path)), ours) > 30


def test_sniffing():
    assert sniff_container(encode(speechlike(0.1), fmt="WAV")) == "wav"
    assert sniff_container(encode(speechlike(0.1), fmt="FLAC")) == "flac"
    assert sniff_container(b"ID3\x04rest") == "mp3"
    assert sniff_container(b"\x00\x00\x00\x20ftypM4A ") == "mp4"
    assert sniff_container(b"hello world") is None


def _wav_header_claiming(frames: int, rate: int = 16000, channels: int = 1) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\x00\x00" * channels * 800)
    data = bytearray(buf.getvalue())
    data[40:44] = (frames * 2 * channels).to_bytes(4, "little")  # the data chunk claims far more than it holds
    return bytes(data)


BAD_INPUTS = {
    "empty": (AudioInput(b""), "empty"),
    "garbage": (AudioInput(b"this is not audio at all" * 10), "not a recognised audio format"),
    "truncated wav header": (AudioInput(encode(speechlike(0.5))[:30]), "could not decode the wav"),
    "mp3 garbage": (AudioInput(b"ID3\x04\x00\x00\x00\x00\x00\x00" + bytes(range(256)) * 4), "mp3"),
    "too short": (AudioInput(encode(np.zeros(160, np.float32))), "too short"),
    "nan floats": (AudioInput(np.full(1600, np.nan, "<f4").tobytes(), Encoding.PCM_F32LE, 16000), "NaN"),
    "inf floats": (AudioInput(encode(np.array([0.1, np.inf] * 800, np.float32), subtype="FLOAT")), "NaN or infinite"),
    "pcm without rate": (AudioInput(b"\x00\x00" * 1600, Encoding.PCM_S16LE), "sample_rate_hertz"),
    "pcm odd length": (AudioInput(b"\x00" * 3201, Encoding.PCM_S16LE, 16000), "whole number of frames"),
    "pcm 1 Hz": (AudioInput(b"\x00\x00" * 1600, Encoding.PCM_S16LE, 1), "unsupported sample rate 1 Hz"),
    "pcm 384 kHz": (AudioInput(b"\x00\x00" * 1600, Encoding.PCM_S16LE, 384000), "unsupported sample rate"),
    "rate mismatch": (AudioInput(encode(speechlike(0.5)), sample_rate_hz=8000), "does not match"),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_inputs_get_clear_errors(name):
    inp, expected = BAD_INPUTS[name]
    with pytest.raises(InvalidAudio) as err:
        decode_audio(inp, LIMITS)
    assert expected.lower() in str(err.value).lower()
    assert "Traceback" not in str(err.value) and "0x" not in str(err.value)


def test_header_claiming_gigabytes_reads_what_is_there():
    decoded = decode_audio(AudioInput(_wav_header_claiming(2**31 // 2)), LIMITS)
    assert decoded.duration_s == pytest.approx(0.05, abs=0.001)


def test_duration_limit_stops_decoding_early():
    long_silence = encode(np.zeros(16000 * 90, np.float32), fmt="FLAC")  # compresses to almost nothing
    with pytest.raises(LimitExceeded, match="longer than the limit of 60 seconds"):
        decode_audio(AudioInput(long_silence), LIMITS)


def test_float_wav_beyond_full_scale_is_clipped():
    decoded = decode_audio(AudioInput(encode(np.full(1600, 3.0, np.float32), subtype="FLOAT")), LIMITS)
    assert np.max(decoded.samples) == 1.0
