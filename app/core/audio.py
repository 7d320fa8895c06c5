"""Audio decoding and validation: any common container or raw PCM in, 16 kHz mono float32 out.

Decoder choice, deliberately:
- soundfile (libsndfile) for wav, flac and ogg: exact, fast, and what FunASR itself reads files with;
- PyAV (FFmpeg's libraries, in-process, no subprocess or temp file) for everything else
  (mp3, m4a/aac, opus in webm, ...).
Both decode block by block, mixing down and resampling (soxr) as they go, so memory stays at
the size of the 16 kHz result and a decompression bomb stops at the duration limit instead of
filling RAM.
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass
from enum import Enum

import numpy as np
import soxr

from app.core.errors import InvalidAudio, LimitExceeded

TARGET_SAMPLE_RATE_HZ = 16000
MIN_SAMPLE_RATE_HZ = 8000
MAX_SAMPLE_RATE_HZ = 192000
MAX_CHANNELS = 32
MIN_DURATION_S = 0.025
_BLOCK_FRAMES = 65536


class Encoding(Enum):
    """How the bytes are laid out."""

    CONTAINER = "container"  # a file: wav, flac, ogg, mp3, m4a, ...; detected from the bytes
    PCM_S16LE = "pcm_s16le"
    PCM_F32LE = "pcm_f32le"


@dataclass(frozen=True)
class AudioInput:
    """Audio as a client sent it."""

    data: bytes
    encoding: Encoding = Encoding.CONTAINER
    sample_rate_hz: int = 0  # required for raw PCM; for containers 0 or the header's rate
    channels: int = 0  # raw PCM only; 0 means 1
    format_hint: str = ""  # e.g. "mp3" from the legacy API; informational, the bytes decide


@dataclass(frozen=True)
class AudioLimits:
    max_duration_s: float = 3600.0
    min_duration_s: float = MIN_DURATION_S


@dataclass(frozen=True)
class DecodedAudio:
    """16 kHz mono float32 samples in [-1, 1], plus what the source was."""

    samples: np.ndarray
    source_sample_rate_hz: int
    source_channels: int
    container: str

    @property
    def duration_s(self) -> float:
        return len(self.samples) / TARGET_SAMPLE_RATE_HZ


def sniff_container(data: bytes) -> str | None:
    """Name the container from its magic bytes, or None when nothing matches."""
    head = data[:64]
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] in (b"RF64", b"BW64"):
        return "wav"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"OggS":
        return "ogg"
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return "aiff"
    if head[:3] == b"ID3" or (len(head) > 1 and head[0] == 0xFF and (head[1] & 0xE0) == 0xE0 and (head[1] & 0x06) != 0):
        # MPEG audio frame sync (11 set bits) with a valid layer; ADTS AAC has layer bits 00.
        return "mp3"
    if len(head) > 1 and head[0] == 0xFF and (head[1] & 0xF6) == 0xF0:
        return "aac"
    if head[4:8] == b"ftyp":
        return "mp4"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "webm"
    if head[:4] == b"#!AM":
        return "amr"
    return None


class _Collector:
    """Mix down, resample and accumulate blocks, enforcing the duration limit as it goes."""

    def __init__(self, sample_rate_hz: int, channels: int, limits: AudioLimits):
        _check_layout(sample_rate_hz, channels)
        self.sample_rate_hz = sample_rate_hz
        self.channels = channels
        self.limits = limits
        self.frames_in = 0
        self.max_frames_in = math.ceil(limits.max_duration_s * sample_rate_hz)
        self.parts: list[np.ndarray] = []
        self.resampler = (
            None if sample_rate_hz == TARGET_SAMPLE_RATE_HZ else soxr.ResampleStream(sample_rate_hz, TARGET_SAMPLE_RATE_HZ, 1, dtype="float32", quality="VHQ")
        )

    def add(self, block: np.ndarray) -> None:
        """block: (frames, channels) or (frames,), any float or int dtype already scaled to [-1, 1]."""
        if block.ndim == 2:
            block = block.mean(axis=1, dtype=np.float32) if block.shape[1] > 1 else block[:, 0]
        block = np.asarray(block, dtype=np.float32)
        if not np.isfinite(block).all():
            raise InvalidAudio("the audio contains NaN or infinite sample values")
        self.frames_in += len(block)
        if self.frames_in > self.max_frames_in:
            raise LimitExceeded(f"audio is longer than the limit of {self.limits.max_duration_s:g} seconds (server setting max_audio_seconds)")
        if self.resampler is not None:
            block = self.resampler.resample_chunk(block)
        if len(block):
            self.parts.append(block)

    def finish(self, container: str) -> DecodedAudio:
        if self.resampler is not None:
            tail = self.resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
            if len(tail):
                self.parts.append(tail)
        samples = np.concatenate(self.parts) if self.parts else np.zeros(0, dtype=np.float32)
        # Float sources may exceed full scale slightly; the models were trained on [-1, 1].
        np.clip(samples, -1.0, 1.0, out=samples)
        duration = self.frames_in / self.sample_rate_hz
        if duration < self.limits.min_duration_s:
            raise InvalidAudio(f"audio is too short: {duration * 1000:.1f} ms decoded, at least {self.limits.min_duration_s * 1000:.0f} ms needed")
        return DecodedAudio(samples, self.sample_rate_hz, self.channels, container)


def _check_layout(sample_rate_hz: int, channels: int) -> None:
    if not MIN_SAMPLE_RATE_HZ <= sample_rate_hz <= MAX_SAMPLE_RATE_HZ:
        raise InvalidAudio(f"unsupported sample rate {sample_rate_hz} Hz: expected {MIN_SAMPLE_RATE_HZ} to {MAX_SAMPLE_RATE_HZ} Hz")
    if not 1 <= channels <= MAX_CHANNELS:
        raise InvalidAudio(f"unsupported channel count {channels}: expected 1 to {MAX_CHANNELS}")


def _decode_pcm(inp: AudioInput, limits: AudioLimits) -> DecodedAudio:
    channels = inp.channels or 1
    if inp.sample_rate_hz <= 0:
        raise InvalidAudio("raw PCM needs sample_rate_hertz in the recognition config")
    width = 2 if inp.encoding is Encoding.PCM_S16LE else 4
    frame_bytes = width * channels
    if len(inp.data) % frame_bytes:
        raise InvalidAudio(
            f"raw PCM length {len(inp.data)} bytes is not a whole number of frames ({frame_bytes} bytes each: {width}-byte samples x {channels} channel(s))"
        )
    collector = _Collector(inp.sample_rate_hz, channels, limits)
    dtype = np.dtype("<i2") if width == 2 else np.dtype("<f4")
    pcm = np.frombuffer(inp.data, dtype=dtype).reshape(-1, channels)
    step = _BLOCK_FRAMES
    for start in range(0, len(pcm), step):
        block = pcm[start : start + step]
        collector.add(block.astype(np.float32) / 32768.0 if width == 2 else block)
    return collector.finish(inp.encoding.value)


def _decode_soundfile(data: bytes, container: str, limits: AudioLimits) -> DecodedAudio:
    import soundfile as sf

    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            collector = _Collector(f.samplerate, f.channels, limits)
            # A header may claim gigabytes; we read what is really there, block by block,
            # and stop at the duration limit.
            # Integer PCM is read as integers and scaled here: libsndfile's own float conversion
            # scales FLAC by 1/32767 but WAV by 1/32768, and the same audio must give the same samples.
            integer = f.subtype.startswith("PCM_") and f.subtype != "PCM_U8"
            while True:
                block = f.read(_BLOCK_FRAMES, dtype="int32" if integer else "float32", always_2d=True)
                if not len(block):
                    break
                collector.add(block.astype(np.float32) / 2147483648.0 if integer else block)
    except sf.LibsndfileError as e:
        raise InvalidAudio(f"could not decode the {container} audio: {_clean_reason(str(e))}") from None
    return collector.finish(container)


def _decode_av(data: bytes, container: str | None, limits: AudioLimits) -> DecodedAudio:
    import av

    name = container or "audio"
    collector: _Collector | None = None
    try:
        with av.open(io.BytesIO(data), mode="r", options={"probesize": "5000000"}) as box:
            streams = box.streams.audio
            if not streams:
                raise InvalidAudio(f"the {name} data holds no audio stream")
            stream = streams[0]
            for frame in box.decode(stream):
                if collector is None:
                    collector = _Collector(frame.sample_rate, len(frame.layout.channels), limits)
                block = _frame_to_float(frame)
                collector.add(block)
            name = container or box.format.name.split(",")[0]
    except (av.error.FFmpegError, ValueError, IndexError, EOFError) as e:
        if container is None:
            raise InvalidAudio(
                "not a recognised audio format (expected wav, flac, ogg, mp3, m4a/aac, webm, ...); for raw PCM set the encoding and sample_rate_hertz"
            ) from None
        raise InvalidAudio(f"could not decode the {name} data: {_clean_reason(str(e))}") from None
    if collector is None:
        raise InvalidAudio(f"the {name} data holds no decodable audio frames")
    return collector.finish(name)


def _frame_to_float(frame) -> np.ndarray:
    """PyAV frame -> (samples, channels) float32 in [-1, 1], whatever the sample format."""
    arr = frame.to_ndarray()
    fmt = frame.format
    channels = len(frame.layout.channels)
    arr = arr.T if fmt.is_planar else arr.reshape(-1, channels)
    kind = fmt.name.rstrip("p")
    if kind in ("flt", "dbl"):
        return arr.astype(np.float32, copy=False)
    scale = {"u8": 128.0, "s16": 32768.0, "s32": 2147483648.0, "s64": 9.223372036854775808e18}[kind]
    out = arr.astype(np.float32)
    if kind == "u8":
        out -= 128.0
    return out / scale


def _clean_reason(text: str) -> str:
    """Library messages carry errno numbers and reprs of our buffer object: keep only the reason."""
    text = re.sub(r"^\[Errno -?\d+\]\s*", "", text)
    text = re.sub(r":\s*'<none>'$", "", text)
    if "<_io." in text:
        text = text.rsplit(">:", 1)[-1] if ">:" in text else ""
    return text.strip().rstrip(":.") or "corrupt or truncated data"


def decode_audio(inp: AudioInput, limits: AudioLimits) -> DecodedAudio:
    """Decode and validate. Raises InvalidAudio or LimitExceeded with a message for the client."""
    if not inp.data:
        raise InvalidAudio("no audio: the audio content is empty")
    if inp.encoding is not Encoding.CONTAINER:
        return _decode_pcm(inp, limits)
    container = sniff_container(inp.data)
    if container in ("wav", "flac", "ogg", "aiff"):
        try:
            decoded = _decode_soundfile(inp.data, container, limits)
        except InvalidAudio:
            if container != "ogg":
                raise
            # Ogg holding something libsndfile lacks a decoder for: let FFmpeg try.
            decoded = _decode_av(inp.data, container, limits)
    else:
        decoded = _decode_av(inp.data, container, limits)
    if inp.sample_rate_hz and inp.sample_rate_hz != decoded.source_sample_rate_hz:
        raise InvalidAudio(f"sample_rate_hertz {inp.sample_rate_hz} does not match the file's {decoded.source_sample_rate_hz} Hz; leave it 0 for files")
    return decoded


class PcmStream:
    """Incremental raw-PCM decoding for streams: bytes of any chunking in, 16 kHz mono float32 out.

    Keeps only a partial frame between calls (and the resampler's small state), so memory does not
    grow with the stream.
    """

    def __init__(self, encoding: Encoding, sample_rate_hz: int, channels: int = 1, quality: str = "HQ"):
        if encoding is Encoding.CONTAINER:
            raise InvalidAudio("streaming audio must be raw PCM: set the encoding (LINEAR16 or FLOAT32) and sample_rate_hertz")
        if sample_rate_hz <= 0:
            raise InvalidAudio("raw PCM needs sample_rate_hertz in the recognition config")
        channels = channels or 1
        _check_layout(sample_rate_hz, channels)
        self.channels = channels
        self.sample_rate_hz = sample_rate_hz
        self._width = 2 if encoding is Encoding.PCM_S16LE else 4
        self._dtype = np.dtype("<i2") if self._width == 2 else np.dtype("<f4")
        self._frame_bytes = self._width * channels
        self._carry = b""
        self.frames_in = 0
        self._resampler = (
            None if sample_rate_hz == TARGET_SAMPLE_RATE_HZ else soxr.ResampleStream(sample_rate_hz, TARGET_SAMPLE_RATE_HZ, 1, dtype="float32", quality="HQ")
        )

    @property
    def seconds_in(self) -> float:
        return self.frames_in / self.sample_rate_hz

    def decode(self, data: bytes, last: bool = False) -> np.ndarray:
        data = self._carry + data
        usable = len(data) - len(data) % self._frame_bytes
        self._carry = data[usable:]
        pcm = np.frombuffer(data[:usable], dtype=self._dtype).reshape(-1, self.channels)
        self.frames_in += len(pcm)
        block = pcm.astype(np.float32)
        if self._width == 2:
            block /= 32768.0
        block = block.mean(axis=1) if self.channels > 1 else block[:, 0]
        if not np.isfinite(block).all():
            raise InvalidAudio("the audio contains NaN or infinite sample values")
        if self._resampler is not None:
            block = self._resampler.resample_chunk(block, last=last)
        return np.clip(block, -1.0, 1.0)

    def flush(self) -> np.ndarray:
        """The resampler's last samples; a trailing partial frame (a truncated upload) is dropped."""
        self._carry = b""
        return self.decode(b"", last=True)


class FileUpload:
    """A file arriving in chunks (the legacy StreamRecognize): decoded as it arrives where possible.

    PCM and float WAV is decoded incrementally, so what the server holds is the 16 kHz result, not
    the upload; other containers are buffered (within ``max_bytes``) and decoded at the end.
    """

    def __init__(self, max_bytes: int, limits: AudioLimits):
        self.max_bytes = max_bytes
        self.limits = limits
        self.bytes_in = 0
        self._head = b""  # bytes before the WAV data chunk (or the whole file when not streamable)
        self._pcm: PcmStream | None = None
        self._parts: list[np.ndarray] = []
        self._streamable: bool | None = None  # None: not decided yet
        self._data_left = 0

    def add(self, data: bytes) -> None:
        self.bytes_in += len(data)
        if self.bytes_in > self.max_bytes:
            raise LimitExceeded(f"upload is larger than the limit of {self.max_bytes} bytes (server setting legacy_max_upload_bytes)")
        if self._pcm is not None:
            self._feed_pcm(data)
            return
        self._head += data
        if self._streamable is None or self._streamable:
            self._try_start_wav()

    def _try_start_wav(self) -> None:
        head = self._head
        if len(head) < 12:
            return
        if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            self._streamable = False
            return
        pos, fmt = 12, None
        while pos + 8 <= len(head):
            chunk_id, size = head[pos : pos + 4], int.from_bytes(head[pos + 4 : pos + 8], "little")
            if chunk_id == b"fmt ":
                if pos + 8 + 16 > len(head):
                    return  # wait for the rest of the fmt chunk
                tag, channels, rate = (int.from_bytes(head[pos + 8 + a : pos + 8 + b], "little") for a, b in ((0, 2), (2, 4), (4, 8)))
                bits = int.from_bytes(head[pos + 22 : pos + 24], "little")
                fmt = (tag, channels, rate, bits)
            elif chunk_id == b"data":
                if fmt is None:
                    break
                encoding = {(1, 16): Encoding.PCM_S16LE, (3, 32): Encoding.PCM_F32LE}.get((fmt[0], fmt[3]))
                if encoding is None:
                    break  # 8/24/32-bit int, extensible headers, ...: buffer and decode at the end
                self._pcm = PcmStream(encoding, fmt[2], fmt[1], quality="VHQ")
                self._data_left = size if 0 < size < 0xFFFFFFFF else -1
                self._streamable = True
                rest, self._head = head[pos + 8 :], b""
                self._feed_pcm(rest)
                return
            pos += 8 + size + (size & 1)
        else:
            return  # header incomplete: wait for more bytes
        self._streamable = False

    def _feed_pcm(self, data: bytes) -> None:
        if self._data_left >= 0:
            data, self._data_left = data[: self._data_left], max(0, self._data_left - len(data))
        samples = self._pcm.decode(data)
        if self._pcm.seconds_in > self.limits.max_duration_s:
            raise LimitExceeded(f"audio is longer than the limit of {self.limits.max_duration_s:g} seconds (server setting max_audio_seconds)")
        if len(samples):
            self._parts.append(samples)

    @property
    def incremental(self) -> bool:
        return self._pcm is not None

    def finish(self, format_hint: str = "") -> DecodedAudio:
        if self._pcm is None:
            return decode_audio(AudioInput(self._head, format_hint=format_hint), self.limits)
        tail = self._pcm.flush()
        samples = np.concatenate([*self._parts, tail]) if self._parts or len(tail) else np.zeros(0, np.float32)
        duration = self._pcm.seconds_in
        if duration < self.limits.min_duration_s:
            raise InvalidAudio(f"audio is too short: {duration * 1000:.1f} ms decoded, at least {self.limits.min_duration_s * 1000:.0f} ms needed")
        return DecodedAudio(samples, self._pcm.sample_rate_hz, self._pcm.channels, "wav")
