"""Streaming sessions: live PCM in, interim and final results out (FunASR's "2pass", over gRPC).

Per step (``STEP_MS`` of new audio) a session feeds the streaming VAD; while an utterance is open
it feeds the online Paraformer once a full decoding chunk has arrived, and reports the growing text
as an interim result. When the VAD ends the utterance, the utterance's audio is decoded again by
the offline model - through the shared batching scheduler, so stream finals and unary requests
share batches - and punctuated: that is the final result.

Memory is bounded per stream: the session keeps the audio of the open utterance (capped by
``max_utterance_ms``) or, between utterances, a short look-back window; the models' caches are
bounded by FunASR's look-back settings.
"""

from __future__ import annotations

import enum
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from app import metrics
from app.core.audio import TARGET_SAMPLE_RATE_HZ, Encoding, PcmStream
from app.core.errors import InvalidConfig, StreamLimit, Unavailable
from app.core.pipeline import RecognitionOptions, RecognitionPipeline
from app.core.text import Word, join_tokens
from app.engine.stream_workers import StreamLost, StreamState, StreamStep

log = logging.getLogger(__name__)

PER_MS = TARGET_SAMPLE_RATE_HZ // 1000
STEP_MS = 200  # VAD step: endpoint decisions come at this granularity
LOOKBACK_MS = 3000  # audio kept between utterances: the VAD dates a start up to ~1 s back
CHUNK_SIZES = {480: (0, 8, 4), 600: (0, 10, 5)}  # FunASR chunk_size per online step length


class Mode(enum.Enum):
    ONLINE = "online"
    OFFLINE = "offline"
    TWO_PASS = "two_pass"


class EventKind(enum.Enum):
    INTERIM = "interim"
    FINAL = "final"
    SPEECH_BEGIN = "speech_begin"
    SPEECH_END = "speech_end"
    END_OF_SINGLE_UTTERANCE = "end_of_single_utterance"


@dataclass(frozen=True)
class StreamEvent:
    kind: EventKind
    time_ms: int = 0  # speech events: when
    text: str = ""
    start_ms: int = 0
    end_ms: int = 0
    utterance_index: int = 0
    stability: float = 0.0
    words: tuple[Word, ...] = ()


@dataclass(frozen=True)
class StreamConfig:
    encoding: Encoding
    sample_rate_hz: int
    channels: int
    options: RecognitionOptions
    interim_results: bool = False
    single_utterance: bool = False
    mode: Mode | None = None  # None: the richest the loaded models allow
    chunk_ms: int = 600
    max_trailing_silence_ms: int | None = None
    max_utterance_ms: int | None = None


@dataclass
class _Utterance:
    begin: int  # absolute sample index
    online_fed: int
    online_text: list[str] = field(default_factory=list)


class StreamingSession:
    """One live stream. Not thread-safe; one coroutine drives it (the RPC handler)."""

    def __init__(self, pipeline: RecognitionPipeline, config: StreamConfig, max_utterance_ms: int, max_stream_s: float):
        engine = pipeline.engine
        self.pipeline = pipeline
        self.engine = engine
        self.config = config
        self.mode = resolve_mode(config.mode, engine.has_online, engine.has_vad)
        if config.chunk_ms not in CHUNK_SIZES:
            raise InvalidConfig(f"chunk_duration_ms must be one of {sorted(CHUNK_SIZES)}, not {config.chunk_ms}")
        if config.max_trailing_silence_ms is not None and not 100 <= config.max_trailing_silence_ms <= 6000:
            raise InvalidConfig(f"max_trailing_silence_ms must be 100 to 6000, not {config.max_trailing_silence_ms}")
        self.chunk_size = CHUNK_SIZES[config.chunk_ms]
        self.chunk_samples = config.chunk_ms * PER_MS
        requested = config.max_utterance_ms or max_utterance_ms
        if requested < 1000:
            raise InvalidConfig(f"max_utterance_ms must be at least 1000, not {requested}")
        self.max_utterance = min(requested, max_utterance_ms) * PER_MS
        self.max_stream_s = max_stream_s
        self.pcm = PcmStream(config.encoding, config.sample_rate_hz, config.channels)
        self.stream = StreamState()
        self._buffer = np.zeros(0, np.float32)
        self._buffer_start = 0  # absolute index of _buffer[0]
        self._vad_fed = 0  # absolute index up to which the VAD has seen audio
        self._utterance: _Utterance | None = None if engine.has_vad else _Utterance(0, 0)
        self.utterance_index = 0
        self.finished = False
        metrics.STREAMS_OPEN.labels(pipeline.model_name).inc()
        self._closed = False

    # ------------------------------------------------------------------ API
    @property
    def total_samples(self) -> int:
        return self._buffer_start + len(self._buffer)

    async def feed(self, data: bytes) -> list[StreamEvent]:
        if self.finished:
            return []
        samples = self.pcm.decode(data)
        if self.pcm.seconds_in > self.max_stream_s:
            raise StreamLimit(f"the stream is longer than the limit of {self.max_stream_s:g} seconds of audio (max_stream_seconds)")
        self._buffer = np.concatenate([self._buffer, samples]) if len(self._buffer) else samples
        events: list[StreamEvent] = []
        if self.total_samples - self._vad_fed >= STEP_MS * PER_MS:
            await self._step(events, is_final=False)
        return events

    async def finish(self) -> list[StreamEvent]:
        """The client half-closed: finalize the open utterance."""
        events: list[StreamEvent] = []
        if self.finished:
            return events
        tail = self.pcm.flush()  # a trailing partial frame is dropped: the utterance still gets its final
        if len(tail):
            self._buffer = np.concatenate([self._buffer, tail])
        await self._step(events, is_final=True)
        if self._utterance is not None and not self.finished:
            await self._finalize(events, self.total_samples)
        self.finished = True
        return events

    def close(self) -> None:
        """Free everything at once (normal end, error or cancel)."""
        if self._closed:
            return
        self._closed = True
        self.engine.release_stream(self.stream)
        self._buffer = np.zeros(0, np.float32)
        metrics.STREAMS_OPEN.labels(self.pipeline.model_name).dec()

    # ------------------------------------------------------------------ internals
    def _slice(self, start: int, end: int) -> np.ndarray:
        return self._buffer[max(0, start - self._buffer_start) : max(0, end - self._buffer_start)]

    def _trim(self) -> None:
        keep_from = self._utterance.begin if self._utterance else self.total_samples - LOOKBACK_MS * PER_MS
        drop = keep_from - self._buffer_start
        if drop > 0:
            self._buffer = self._buffer[drop:].copy()
            self._buffer_start += drop

    async def _step(self, events: list[StreamEvent], is_final: bool) -> None:
        end = self.total_samples
        if self.engine.has_vad:
            new = self._slice(self._vad_fed, end)
            step = StreamStep(self.stream, new, is_final, max_end_silence_ms=self.config.max_trailing_silence_ms)
            spans = await self._model_step(self.pipeline.vad_steps, step)
            self._vad_fed = end
            for begin_ms, end_ms in spans:
                if begin_ms >= 0 and self._utterance is None:
                    begin = max(begin_ms * PER_MS, self._buffer_start)
                    self._utterance = _Utterance(begin, begin)
                    events.append(StreamEvent(EventKind.SPEECH_BEGIN, time_ms=begin_ms, utterance_index=self.utterance_index))
                if end_ms >= 0 and self._utterance is not None:
                    await self._finalize(events, min(end_ms * PER_MS, end), speech_end_ms=end_ms)
                    if self.finished:
                        return
        if self._utterance is not None:
            if end - self._utterance.begin >= self.max_utterance:
                # Too long without an endpoint: finalize what we have, go on with a new utterance.
                await self._finalize(events, end)
                if not self.finished:
                    self._utterance = _Utterance(end, end)
            elif self.mode is not Mode.OFFLINE and end - self._utterance.online_fed >= self.chunk_samples:
                await self._feed_online(events, self._utterance, end, is_final=False)
        self._trim()

    @staticmethod
    async def _model_step(batcher, step: StreamStep):
        try:
            return await batcher.submit(step)
        except StreamLost as lost:  # a worker process died with this stream's state: retrying the stream can work
            raise Unavailable(str(lost)) from None

    async def _feed_online(self, events: list[StreamEvent], utt: _Utterance, until: int, is_final: bool) -> None:
        audio = self._slice(utt.online_fed, until)
        if not len(audio) and not is_final:
            return
        text = await self._model_step(self.pipeline.online_steps, StreamStep(self.stream, audio, is_final, chunk_size=self.chunk_size))
        utt.online_fed = until
        if text:
            utt.online_text.append(text)
            if self.config.interim_results and not is_final:
                events.append(
                    StreamEvent(
                        EventKind.INTERIM,
                        text=join_tokens(utt.online_text),
                        start_ms=utt.begin // PER_MS,
                        end_ms=until // PER_MS,
                        utterance_index=self.utterance_index,
                        stability=0.5,
                    )
                )

    async def _finalize(self, events: list[StreamEvent], end: int, speech_end_ms: int | None = None) -> None:
        utt = self._utterance
        self._utterance = None
        if speech_end_ms is not None:
            events.append(StreamEvent(EventKind.SPEECH_END, time_ms=speech_end_ms, utterance_index=self.utterance_index))
        if self.mode is Mode.ONLINE:
            await self._feed_online(events, utt, end, is_final=True)
        elif self.mode is Mode.TWO_PASS:
            # The offline model writes this final: flushing the online model would only delay it.
            # A fresh cache starts the next utterance (no worker call of this stream is running now).
            self.engine.reset_online(self.stream)
        options = self.config.options
        audio = self._slice(utt.begin, end)
        begin_ms, end_ms = utt.begin // PER_MS, end // PER_MS
        if self.mode is Mode.ONLINE:
            text = await self._punctuate_online(join_tokens(utt.online_text), options)
            words: tuple[Word, ...] = ()
        else:
            sentences = await self.pipeline.recognize_utterance(audio, begin_ms, options)
            text = join_tokens([s.text for s in sentences])
            words = tuple(w for s in sentences for w in s.words)
        # Always one final per utterance (even an empty one), so clients can pair it with SPEECH_BEGIN.
        events.append(
            StreamEvent(
                EventKind.FINAL,
                text=text,
                start_ms=begin_ms,
                end_ms=end_ms,
                utterance_index=self.utterance_index,
                stability=1.0,
                words=words,
            )
        )
        self.utterance_index += 1
        if self.config.single_utterance:
            events.append(StreamEvent(EventKind.END_OF_SINGLE_UTTERANCE, time_ms=end_ms, utterance_index=self.utterance_index - 1))
            self.finished = True

    async def _punctuate_online(self, text: str, options: RecognitionOptions) -> str:
        if not text or not options.punctuation or self.pipeline.punctuation is None:
            return text
        tokens = re.findall(r"[A-Za-z0-9']+|\S", text)
        # Shares passes with the other streams' interims and the unary requests' transcripts.
        marks = await self.pipeline.punctuation.submit(tokens)
        if marks is None:
            return text
        return join_tokens([t + m for t, m in zip(tokens, marks, strict=True)])


@contextmanager
def open_stream(pipeline: RecognitionPipeline, config: StreamConfig) -> Iterator[StreamingSession]:
    """A session within the server's stream limit, freed at once however the stream ends."""
    settings = pipeline.settings
    pipeline.streams.acquire()
    try:
        session = StreamingSession(pipeline, config, max_utterance_ms=int(settings.max_utterance_seconds * 1000), max_stream_s=settings.max_stream_seconds)
        try:
            yield session
        finally:
            session.close()
    finally:
        pipeline.streams.release()


def resolve_mode(requested: Mode | None, has_online: bool, has_vad: bool) -> Mode:
    if requested is None:
        return Mode.TWO_PASS if has_online else Mode.OFFLINE
    if requested in (Mode.ONLINE, Mode.TWO_PASS) and not has_online:
        raise InvalidConfig(f"streaming mode {requested.name} needs the online model, which this server has not loaded; use OFFLINE")
    return requested
