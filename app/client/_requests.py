"""Request building shared by the sync and asyncio clients (the only place that fills protobufs)."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from app.client.audio import AudioEncoding, PcmFormat
from app.client.types import StreamingMode
from app.gen.paraformer.asr.v1 import asr_pb2

Hotwords = Sequence[str | tuple[str, float]]

# A stream that fails before the server's first answer (refused at the door: draining, full)
# is retried with the chunks sent so far; beyond this much audio it is not.
MAX_REPLAY_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class Recognition:
    """Recognition settings common to files and streams (``RecognitionConfig`` less the audio layout)."""

    punctuation: bool | None = None
    word_times: bool = False
    hotwords: Hotwords = ()
    model: str = ""
    engine_options: Mapping[str, str] = field(default_factory=dict)
    skip_cache: bool = False

    def config(self, encoding: AudioEncoding, sample_rate_hz: int = 0, channels: int = 0) -> asr_pb2.RecognitionConfig:
        hotwords = [asr_pb2.Hotword(phrase=h, boost=0) if isinstance(h, str) else asr_pb2.Hotword(phrase=h[0], boost=h[1]) for h in self.hotwords]
        config = asr_pb2.RecognitionConfig(
            encoding=encoding.value,
            sample_rate_hertz=sample_rate_hz,
            audio_channel_count=channels if encoding is not AudioEncoding.CONTAINER and channels > 1 else 0,
            enable_word_time_offsets=self.word_times,
            hotwords=hotwords,
            engine_options={str(k): str(v) for k, v in self.engine_options.items()},
            model=self.model,
            skip_cache=self.skip_cache,
        )
        if self.punctuation is not None:
            config.enable_automatic_punctuation = self.punctuation
        return config


@dataclass(frozen=True)
class Streaming:
    """Stream settings (``StreamingRecognitionConfig`` less the recognition settings)."""

    interim_results: bool = True
    single_utterance: bool = False
    mode: StreamingMode = StreamingMode.AUTO
    chunk_duration_ms: int = 0
    max_trailing_silence_ms: int = 0
    max_utterance_ms: int = 0

    def config(self, recognition: Recognition, pcm: PcmFormat) -> asr_pb2.StreamingRecognizeRequest:
        return asr_pb2.StreamingRecognizeRequest(
            streaming_config=asr_pb2.StreamingRecognitionConfig(
                config=recognition.config(pcm.encoding, pcm.sample_rate_hz, pcm.channels),
                interim_results=self.interim_results,
                single_utterance=self.single_utterance,
                mode=self.mode.value,
                chunk_duration_ms=self.chunk_duration_ms,
                endpointing=asr_pb2.EndpointingConfig(max_trailing_silence_ms=self.max_trailing_silence_ms, max_utterance_ms=self.max_utterance_ms),
            )
        )


def recognize_request(content: bytes, encoding: AudioEncoding, sample_rate_hz: int, channels: int, recognition: Recognition) -> asr_pb2.RecognizeRequest:
    return asr_pb2.RecognizeRequest(config=recognition.config(encoding, sample_rate_hz, channels), audio=asr_pb2.RecognitionAudio(content=content))


class ReplayLog:
    """The chunks pulled from the source while a stream may still be retried, shared by its attempts.

    Each attempt first re-sends what earlier attempts pulled, then pulls new chunks. Recording
    stops at the server's first answer (a stream is not retried after that) or past
    MAX_REPLAY_BYTES; the answered attempt still replays what was recorded before it reads on,
    and the record is dropped once it has caught up. Only the newest attempt may read: an older
    one whose call is over may still be inside its generator, and must neither send a replayed
    chunk twice to the live call nor take a new chunk from it.
    """

    def __init__(self, max_bytes: int = MAX_REPLAY_BYTES):
        self.max_bytes = max_bytes
        self.chunks: list[bytes] = []
        self.bytes = 0
        self.pulled = 0
        self.recording = True
        self.replayable = True
        self.exhausted = False
        self.source_error: BaseException | None = None
        self.newest_attempt = 0

    def stop(self) -> None:
        self.recording = False

    def record(self, chunk: bytes) -> None:
        self.pulled += 1
        if not self.recording:
            return
        self.chunks.append(chunk)
        self.bytes += len(chunk)
        if self.bytes > self.max_bytes:
            # Too much to keep: the stream can no longer be retried. The reading attempt is caught
            # up (it just pulled this chunk), so the record can go at once.
            self.replayable = False
            self.stop()
            self.chunks.clear()

    def replayed(self, position: int) -> bytes:
        chunk = self.chunks[position]
        if not self.recording and position == len(self.chunks) - 1:
            self.chunks = [b""] * len(self.chunks)  # caught up: keep positions, free the audio
        return chunk


class SyncFeed:
    """A thread-safe ReplayLog over a synchronous iterable (gRPC reads requests on its own thread)."""

    def __init__(self, source: Iterable[bytes], max_bytes: int = MAX_REPLAY_BYTES):
        self.log = ReplayLog(max_bytes)
        self._it = iter(source)
        self._lock = threading.Lock()

    def stop_recording(self) -> None:
        with self._lock:
            self.log.stop()

    def attempt(self) -> Iterator[bytes]:
        with self._lock:
            self.log.newest_attempt += 1
            me = self.log.newest_attempt
        position = 0
        while True:
            with self._lock:
                if me != self.log.newest_attempt:
                    return  # a newer attempt owns the source now
                if position < len(self.log.chunks):
                    chunk = self.log.replayed(position)
                elif position < self.log.pulled:
                    return  # not recorded (past the replay budget): this attempt cannot continue
                elif self.log.exhausted:
                    return
                else:
                    try:
                        chunk = next(self._it)
                    except StopIteration:
                        self.log.exhausted = True
                        return
                    except BaseException as e:
                        self.log.source_error = e
                        raise
                    self.log.record(bytes(chunk))
            position += 1
            if chunk:
                yield bytes(chunk)

    def requests(self, first: asr_pb2.StreamingRecognizeRequest) -> Iterator[asr_pb2.StreamingRecognizeRequest]:
        yield first
        for chunk in self.attempt():
            yield asr_pb2.StreamingRecognizeRequest(audio_content=chunk)
