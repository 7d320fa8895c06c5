"""The recognition pipeline: audio bytes in, a transcript with sentences and timings out.

decode (thread pool) -> VAD segments (VAD worker) -> ASR on every segment through the batching
scheduler, pooled with the segments of all other requests (ASR worker) -> punctuation, pooled with
the transcripts of all other requests (punctuation worker) -> sentences with times. Transport-free:
the gRPC servicers call ``recognize``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from app import metrics
from app.config import Settings
from app.core.admission import Admission, StreamSlots
from app.core.audio import TARGET_SAMPLE_RATE_HZ, AudioInput, AudioLimits, DecodedAudio, FileUpload, decode_audio
from app.core.cache import MemoryStore, RedisStore, ResultCache, cache_key
from app.core.errors import DeadlineExpired, InvalidConfig, Unavailable
from app.core.scheduler import BatchPolicy, BatchScheduler
from app.core.step_batcher import StepBatcher
from app.core.text import Sentence, build_sentences, join_tokens
from app.engine.funasr_engine import FunasrEngine
from app.engine.model_calls import AsrHypothesis
from app.engine.punctuation import TextProgress
from app.engine.stream_workers import StreamStep
from app.engine.worker_process import ModelWorkerLost

log = logging.getLogger(__name__)

MAX_HOTWORDS = 100
MAX_HOTWORD_CHARS = 64
# Engine options a request may set, with their accepted ranges. Everything else is refused,
# because FunASR's generate() takes arbitrary keyword arguments, some of which (device,
# batch_size, output_dir) must never be client-controlled.
ENGINE_OPTIONS = {"max_end_silence_ms": (100, 6000)}
# Rounds of the punctuation model per call: a round marks the next 20 words of every text in the
# call (1-5 ms for the large-sized model on a CPU), and a 2 s utterance needs one. A 5-minute
# transcript needs 75 or more; short texts that arrive meanwhile join its next call.
PUNCTUATION_ROUNDS_PER_CALL = 4


@dataclass(frozen=True)
class RecognitionOptions:
    punctuation: bool = True
    word_times: bool = False
    hotwords: tuple[str, ...] = ()
    max_end_silence_ms: int | None = None
    use_cache: bool = True

    def fingerprint(self) -> str:
        """Everything in the options that changes a result (for the result cache's key)."""
        return f"p={self.punctuation}|w={self.word_times}|h={','.join(self.hotwords)}|s={self.max_end_silence_ms}"

    @staticmethod
    def from_request(
        punctuation: bool | None,
        word_times: bool,
        hotwords: Iterable[tuple[str, float]],
        engine_options: dict[str, str],
        use_cache: bool = True,
    ) -> RecognitionOptions:
        phrases = []
        for phrase, boost in hotwords:
            phrase = phrase.strip()
            if not phrase:
                raise InvalidConfig("a hotword phrase is empty")
            if len(phrase) > MAX_HOTWORD_CHARS:
                raise InvalidConfig(f"hotword {phrase[:20]!r}... is longer than {MAX_HOTWORD_CHARS} characters")
            if not 0 <= boost <= 100:
                raise InvalidConfig(f"hotword {phrase!r} has boost {boost:g}; expected 0 to 100")
            phrases.append(phrase)
        if len(phrases) > MAX_HOTWORDS:
            raise InvalidConfig(f"{len(phrases)} hotwords given; at most {MAX_HOTWORDS} are accepted")
        end_silence = None
        for key, raw in engine_options.items():
            if key not in ENGINE_OPTIONS:
                allowed = ", ".join(sorted(ENGINE_OPTIONS))
                raise InvalidConfig(f"unknown engine option {key!r}; allowed: {allowed}")
            lo, hi = ENGINE_OPTIONS[key]
            try:
                value = int(raw)
            except ValueError:
                raise InvalidConfig(f"engine option {key} must be an integer, not {raw!r}") from None
            if not lo <= value <= hi:
                raise InvalidConfig(f"engine option {key}={value} is out of range {lo}..{hi}")
            end_silence = value
        return RecognitionOptions(
            punctuation=True if punctuation is None else punctuation,
            word_times=word_times,
            hotwords=tuple(sorted(set(phrases))),
            max_end_silence_ms=end_silence,
            use_cache=use_cache,
        )


@dataclass(frozen=True)
class Transcript:
    text: str
    sentences: tuple[Sentence, ...]
    audio_duration_s: float
    processing_s: float
    model: str


class RecognitionPipeline:
    def __init__(self, engine: FunasrEngine, settings: Settings, model_name: str):
        self.engine = engine
        self.model_name = model_name
        self.limits = AudioLimits(max_duration_s=settings.max_audio_seconds)
        self.max_segment_samples = int(settings.max_segment_seconds * TARGET_SAMPLE_RATE_HZ)
        self.admission = Admission(settings.max_queue_items, settings.max_queue_audio_seconds, model_name, settings.max_queue_wait_seconds)
        self.streams = StreamSlots(settings.max_streams)
        self.settings = settings
        self.scheduler: BatchScheduler[AsrHypothesis] = BatchScheduler(
            _retryable(engine.transcribe),
            BatchPolicy(
                max_batch_size=settings.max_batch_size,
                max_batch_audio_s=settings.max_batch_audio_seconds,
                max_wait_s=settings.max_batch_wait_ms / 1000.0,
            ),
            model_name,
            others_in_flight=self._others_in_flight,
        )
        # The steps of live streams, many streams per engine call (see step_batcher.py).
        self.vad_steps: StepBatcher[StreamStep, list[tuple[int, int]]] | None = None
        if engine.has_vad:
            self.vad_steps = StepBatcher(engine.vad_stream_steps, model_name, "vad")
        self.online_steps: StepBatcher[StreamStep, str] | None = None
        if engine.has_online:
            self.online_steps = StepBatcher(engine.online_steps, model_name, "online")
        # The transcripts of concurrent requests, punctuated in one pass of the model, a few rounds
        # per call so that short ones never wait for all of a long one's (step_batcher.py).
        self.punctuation: StepBatcher[list[str], list[str] | None] | None = None
        if engine.has_punctuation:
            self.punctuation = StepBatcher(
                _retryable(functools.partial(engine.punctuate_many, max_rounds=PUNCTUATION_ROUNDS_PER_CALL)),
                model_name,
                "punc",
                max_steps=settings.max_batch_size,
                batch_sizes=metrics.PUNCTUATION_BATCH.labels(model_name),
                is_partial=lambda result: isinstance(result, TextProgress),
            )
        self.cache = _make_cache(settings, model_name)
        self._identity = f"{model_name}|{engine.identity}"
        # Decoding is CPU work that must stay off the event loop but must not queue behind the models.
        self._decoder = ThreadPoolExecutor(max_workers=2, thread_name_prefix="audio-decode")

    @classmethod
    async def load(cls, settings: Settings) -> RecognitionPipeline:
        """Load, verify and warm up the models of settings.model_name (on a thread), then start batching."""
        name = settings.model_name
        engine = await asyncio.to_thread(FunasrEngine.load, settings)
        for role, seconds in engine.report.load_seconds.items():
            metrics.MODEL_LOAD_SECONDS.labels(name, role).set(seconds)
        for role, seconds in engine.report.warmup_seconds.items():
            metrics.MODEL_WARMUP_SECONDS.labels(name, role).set(seconds)
        pipeline = cls(engine, settings, name)
        await pipeline.start()
        metrics.MODEL_READY.labels(name).set(1)
        return pipeline

    def _others_in_flight(self, queued_segments: int) -> bool:
        """More segments may come: more requests are admitted than have segments queued, or streams are open.

        A long file queues all its segments at once, so they outnumber the requests and the batch
        goes without waiting - right, since they are already there. The count is a heuristic:
        when it guesses wrong, a batch waits the window or leaves a little early, nothing worse.
        """
        return self.admission.items > queued_segments or self.streams.open > 0

    @property
    def busy(self) -> bool:
        """Requests or streams still use this pipeline."""
        return bool(self.admission.items or self.streams.open)

    async def start(self) -> None:
        a = self.admission
        metrics.init_model_series(self.model_name, a.max_items, a.max_audio_s, self.streams.max_streams)
        metrics.GPU_COLLECTOR.add_worker_memory(self, self.engine.worker_gpu_memory)
        self.scheduler.start()
        for batcher in (self.vad_steps, self.online_steps, self.punctuation):
            if batcher is not None:
                batcher.start()

    async def close(self, collect: bool = True) -> None:
        """Stop batching and close the engine (``collect``: as FunasrEngine.close's)."""
        metrics.GPU_COLLECTOR.remove_worker_memory(self)
        await self.scheduler.close()
        for batcher in (self.vad_steps, self.online_steps, self.punctuation):
            if batcher is not None:
                await batcher.close()
        if self.cache is not None:
            await self.cache.close()
        self._decoder.shutdown(wait=False, cancel_futures=True)
        self.engine.close(collect=collect)

    async def decode(self, audio: AudioInput) -> DecodedAudio:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._decoder, decode_audio, audio, self.limits)

    async def recognize(self, audio: AudioInput, options: RecognitionOptions, deadline: float | None = None) -> Transcript:
        """Raises the core errors (InvalidAudio, Overloaded, DeadlineExpired, ...) for the transport to map."""
        return await self._recognize(lambda: self.decode(audio), options, deadline)

    async def recognize_upload(
        self, chunks: AsyncIterator[bytes], max_bytes: int, format_hint: str, options: RecognitionOptions, deadline: float | None = None
    ) -> Transcript:
        """A file that arrives in chunks (the legacy StreamRecognize), decoded as it arrives where it can be."""
        loop = asyncio.get_running_loop()

        async def decode() -> DecodedAudio:
            upload = FileUpload(max_bytes, self.limits)
            async for data in chunks:
                await loop.run_in_executor(self._decoder, upload.add, data)
            return await loop.run_in_executor(self._decoder, upload.finish, format_hint)

        return await self._recognize(decode, options, deadline)

    async def _recognize(self, decode: Callable[[], Awaitable[DecodedAudio]], options: RecognitionOptions, deadline: float | None) -> Transcript:
        start = time.perf_counter()
        # Admission first: refusing a request when the queue is full costs microseconds, not a decode.
        with self.admission.admit() as ticket:
            decoded = await decode()
            ticket.add_audio(decoded.duration_s)
            if self.cache is not None and options.use_cache:
                key = cache_key(decoded.samples, f"{self._identity}|{options.fingerprint()}")
                sentences, _ = await self.cache.get_or_compute(key, lambda: self.recognize_samples(decoded.samples, options, deadline))
            else:
                sentences = await self.recognize_samples(decoded.samples, options, deadline)
        elapsed = time.perf_counter() - start
        duration = decoded.duration_s
        metrics.AUDIO_SECONDS.labels(self.model_name).observe(duration)
        metrics.AUDIO_PROCESSED.labels(self.model_name).inc(duration)
        metrics.RTF.labels(self.model_name).observe(elapsed / duration)
        text = join_tokens([s.text for s in sentences])
        return Transcript(text, tuple(sentences), duration, elapsed, self.model_name)

    async def recognize_utterance(self, samples: np.ndarray, offset_ms: int, options: RecognitionOptions) -> list[Sentence]:
        """One utterance a stream's VAD already cut: no VAD pass; times offset to the stream's clock."""
        whole = [(0, int(len(samples) * 1000 / TARGET_SAMPLE_RATE_HZ))]
        return await self.recognize_samples(samples, options, spans=whole, offset_ms=offset_ms)

    async def recognize_samples(
        self,
        samples: np.ndarray,
        options: RecognitionOptions,
        deadline: float | None = None,
        spans: list[tuple[int, int]] | None = None,
        offset_ms: int = 0,
    ) -> list[Sentence]:
        """Speech spans (from the VAD unless given) -> batched ASR -> punctuation -> sentences."""
        _check_deadline(deadline, self.model_name)
        if spans is None and self.engine.has_vad:
            try:
                spans = await _retryable(self.engine.detect_speech)(samples, options.max_end_silence_ms)
            except asyncio.CancelledError:  # the caller left (or its deadline passed) before the ASR model
                metrics.DROPPED_BEFORE_MODEL.labels(self.model_name, "cancelled").inc()
                raise
        elif spans is None:
            spans = [(0, int(len(samples) * 1000 / TARGET_SAMPLE_RATE_HZ))]
        pieces = list(self._cut(samples, spans))
        if not pieces:
            return []
        _check_deadline(deadline, self.model_name)
        hyps = await _all_or_nothing(self.scheduler.submit(chunk, options.hotwords, deadline) for _, _, chunk in pieces)
        segments = [(offset_ms + start_ms, offset_ms + end_ms, hyp) for (start_ms, end_ms, _), hyp in zip(pieces, hyps, strict=True)]
        marks = None
        if options.punctuation and self.punctuation is not None:
            tokens = [t for _, _, hyp in segments for t in hyp.tokens]
            marks = await self.punctuation.submit(tokens) if tokens else []
            if marks is None:
                log.warning("punctuation could not be aligned with %d tokens; returning unpunctuated segments", len(tokens))
        return build_sentences(segments, marks, with_words=options.word_times)

    def _cut(self, samples: np.ndarray, spans: list[tuple[int, int]]):
        """Slice VAD spans out of the audio, cutting over-long ones so no batch item is huge."""
        per_ms = TARGET_SAMPLE_RATE_HZ / 1000
        for start_ms, end_ms in spans:
            first, last = int(start_ms * per_ms), min(int(end_ms * per_ms), len(samples))
            for offset in range(first, last, self.max_segment_samples):
                chunk = samples[offset : min(offset + self.max_segment_samples, last)]
                # Less than one feature frame of audio is nothing the model can decode.
                if len(chunk) >= 400:
                    yield int(offset / per_ms), int((offset + len(chunk)) / per_ms), chunk


def _make_cache(settings: Settings, model_name: str) -> ResultCache | None:
    if settings.cache_redis_url:
        return ResultCache(RedisStore(settings.cache_redis_url, settings.cache_ttl_s, prefix=f"paraformer-asr:{model_name}:"), model_name)
    if settings.cache_max_bytes:
        return ResultCache(MemoryStore(settings.cache_max_bytes, settings.cache_ttl_s, model_name), model_name)
    return None


def _retryable(engine_call: Callable[..., Awaitable[list]]) -> Callable[..., Awaitable[list]]:
    """The engine call, with a model worker process that died or is reloading reported as Unavailable (a retry can work)."""

    async def call(*args) -> list:
        try:
            return await engine_call(*args)
        except ModelWorkerLost as lost:
            raise Unavailable(str(lost)) from None

    return call


def _check_deadline(deadline: float | None, model: str) -> None:
    if deadline is not None and time.monotonic() >= deadline:
        metrics.DROPPED_BEFORE_MODEL.labels(model, "deadline").inc()
        raise DeadlineExpired("the request's deadline passed before recognition could start")


async def _all_or_nothing(awaitables: Iterable[Awaitable]) -> list:
    """Like gather, but the first failure cancels the rest (their segments leave the queue)."""
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        raise
