"""Audio on the client side: what to send for a path, bytes or samples; chunks; real-time pacing.

``transcribe`` sends files as they are (the server decodes every common container). ``stream``
needs raw PCM, so a file given to it is decoded here, with the server's own decoder
(``app.core.audio``: soundfile for wav/flac/ogg, PyAV for mp3/m4a/webm/...), to 16 kHz mono
16-bit PCM, and played in chunks, at real-time pace by default, the way a microphone would.
"""

from __future__ import annotations

import enum
import os
import time
from collections.abc import AsyncIterable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.client import errors
from app.client.errors import AsrError
from app.gen.paraformer.asr.v1 import asr_pb2

StrPath = str | os.PathLike


class AudioEncoding(enum.Enum):
    """How audio bytes are laid out (``AudioEncoding`` in the proto)."""

    CONTAINER = asr_pb2.AUDIO_ENCODING_UNSPECIFIED  # a file: wav, flac, ogg, mp3, m4a, webm, ...
    LINEAR16 = asr_pb2.AUDIO_ENCODING_LINEAR16  # raw signed 16-bit little-endian PCM
    FLOAT32 = asr_pb2.AUDIO_ENCODING_FLOAT32  # raw 32-bit float little-endian PCM in [-1, 1]


@dataclass(frozen=True)
class PcmFormat:
    """The layout of raw PCM."""

    encoding: AudioEncoding
    sample_rate_hz: int
    channels: int = 1

    def __post_init__(self) -> None:
        if self.encoding is AudioEncoding.CONTAINER:
            raise ValueError("raw PCM needs encoding LINEAR16 or FLOAT32")
        if self.sample_rate_hz <= 0:
            raise ValueError("raw PCM needs sample_rate_hz")
        if self.channels < 1:
            raise ValueError("channels must be at least 1")

    @property
    def frame_bytes(self) -> int:
        return (2 if self.encoding is AudioEncoding.LINEAR16 else 4) * self.channels

    @property
    def bytes_per_second(self) -> int:
        return self.frame_bytes * self.sample_rate_hz

    def chunk_bytes(self, chunk_ms: int) -> int:
        return max(1, self.sample_rate_hz * chunk_ms // 1000) * self.frame_bytes


STREAM_FORMAT = PcmFormat(AudioEncoding.LINEAR16, 16000, 1)
MAX_FILE_SECONDS = 24 * 3600.0  # the longest file `stream` decodes (a day of audio: 2.8 GB of PCM)


def is_path(source: Any) -> bool:
    return isinstance(source, str | os.PathLike)


def read_file(path: StrPath) -> bytes:
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as e:
        raise AsrError(None, f"cannot read {os.fspath(path)}: {e.strerror}", errors.INVALID) from None


def samples_to_bytes(samples: np.ndarray) -> tuple[bytes, int]:
    """float samples, shape (n,) or (n, channels) -> FLOAT32 little-endian bytes and the channel count."""
    array = np.asarray(samples)
    if array.ndim not in (1, 2):
        raise ValueError("samples must be 1-D (mono) or 2-D (frames, channels)")
    channels = 1 if array.ndim == 1 else array.shape[1]
    if array.dtype.kind in "iu":
        if array.dtype != np.int16:
            raise ValueError("integer samples must be int16 (or pass float samples in [-1, 1])")
        array = array.astype(np.float32) / 32768.0
    return np.ascontiguousarray(array, dtype="<f4").tobytes(), channels


def decode_to_pcm16(data: bytes, name: str = "audio") -> bytes:
    """Any container the server reads -> 16 kHz mono 16-bit PCM (for streaming a file)."""
    from app.core.audio import AudioInput, AudioLimits, decode_audio
    from app.core.errors import RecognitionError

    try:
        decoded = decode_audio(AudioInput(data), AudioLimits(max_duration_s=MAX_FILE_SECONDS))
    except RecognitionError as e:
        raise AsrError(None, f"cannot decode {name}: {e}", errors.INVALID) from None
    return (np.clip(decoded.samples, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


def chunks_of(data: bytes | memoryview, size: int) -> Iterator[bytes]:
    view = memoryview(data)
    for start in range(0, len(view), size):
        yield bytes(view[start : start + size])


class Pacer:
    """Releases audio no faster than real time (times ``speed``): chunk k at the moment it would
    have finished recording, measured from the first chunk, so sleeps do not accumulate drift."""

    def __init__(self, bytes_per_second: float, speed: float = 1.0):
        if speed <= 0:
            raise ValueError("speed must be positive")
        self._rate = bytes_per_second * speed
        self._start: float | None = None
        self._sent = 0

    def wait_s(self, nbytes: int) -> float:
        now = time.monotonic()
        if self._start is None:
            self._start = now
        self._sent += nbytes
        return max(0.0, self._start + self._sent / self._rate - now)


def paced(chunks: Iterable[bytes], bytes_per_second: float, speed: float = 1.0) -> Iterator[bytes]:
    pacer = Pacer(bytes_per_second, speed)
    for chunk in chunks:
        delay = pacer.wait_s(len(chunk))
        if delay:
            time.sleep(delay)
        yield chunk


@dataclass
class StreamSource:
    """What ``stream`` sends: the PCM layout, the chunks, and whether to pace them."""

    pcm: PcmFormat
    chunks: Iterable[bytes] | AsyncIterable[bytes]
    realtime: bool
    blocking: bool = False  # a caller's iterable may block (a microphone): the asyncio client reads it on a thread


def stream_source(
    source: Any,
    sample_rate_hz: int,
    encoding: AudioEncoding | None,
    channels: int,
    realtime: bool | None,
    chunk_ms: int,
) -> StreamSource:
    """Sort out what ``stream`` was given.

    - a path, or the bytes of a file (``encoding`` None or CONTAINER): decoded here to 16 kHz mono
      LINEAR16, sent in ``chunk_ms`` chunks, at real-time pace unless ``realtime=False``;
    - raw PCM bytes (``encoding`` LINEAR16/FLOAT32 with ``sample_rate_hz``): cut into chunks;
    - an iterable (or async iterable) of raw PCM chunks: sent as they come (the caller sets the pace,
      as a microphone does), or paced when ``realtime=True``.
    """
    if chunk_ms <= 0:
        raise ValueError("chunk_ms must be positive")
    if is_path(source) or (isinstance(source, bytes | bytearray | memoryview) and encoding in (None, AudioEncoding.CONTAINER)):
        name = os.fspath(source) if is_path(source) else "the audio bytes"
        data = read_file(source) if is_path(source) else bytes(source)
        pcm16 = decode_to_pcm16(data, name)
        return StreamSource(STREAM_FORMAT, chunks_of(pcm16, STREAM_FORMAT.chunk_bytes(chunk_ms)), True if realtime is None else realtime)
    if isinstance(source, np.ndarray):
        data, channels = samples_to_bytes(source)
        pcm = PcmFormat(AudioEncoding.FLOAT32, sample_rate_hz, channels)
        return StreamSource(pcm, chunks_of(data, pcm.chunk_bytes(chunk_ms)), bool(realtime))
    pcm = PcmFormat(encoding or AudioEncoding.LINEAR16, sample_rate_hz, channels or 1)
    if isinstance(source, bytes | bytearray | memoryview):
        return StreamSource(pcm, chunks_of(source, pcm.chunk_bytes(chunk_ms)), bool(realtime))
    if isinstance(source, AsyncIterable):
        return StreamSource(pcm, source, bool(realtime))
    if isinstance(source, Iterable):
        return StreamSource(pcm, source, bool(realtime), blocking=not isinstance(source, list | tuple))
    raise TypeError(f"cannot stream a {type(source).__name__}: give a path, bytes, a numpy array, or an iterable of PCM chunks")


def recognize_audio(audio: Any, sample_rate_hz: int, encoding: AudioEncoding | None, channels: int) -> tuple[bytes, AudioEncoding, int, int]:
    """What ``transcribe`` sends: (content, encoding, sample_rate_hz, channels) for a path, bytes or samples."""
    if is_path(audio):
        return read_file(audio), AudioEncoding.CONTAINER, sample_rate_hz, 0
    if isinstance(audio, np.ndarray):
        if sample_rate_hz <= 0:
            raise ValueError("samples need sample_rate_hz")
        data, channels = samples_to_bytes(audio)
        return data, AudioEncoding.FLOAT32, sample_rate_hz, channels
    if isinstance(audio, bytes | bytearray | memoryview):
        encoding = encoding or AudioEncoding.CONTAINER
        if encoding is not AudioEncoding.CONTAINER:
            PcmFormat(encoding, sample_rate_hz, channels or 1)  # validates
        return bytes(audio), encoding, sample_rate_hz, channels if encoding is not AudioEncoding.CONTAINER else 0
    raise TypeError(f"cannot transcribe a {type(audio).__name__}: give a path, bytes, or a numpy array of samples")
