"""paraformer.asr.v1.Recognizer: protobuf <-> core types, nothing else."""

from __future__ import annotations

import asyncio
import time

import grpc

from app.core.audio import AudioInput, Encoding
from app.core.errors import InvalidAudio, InvalidConfig, StreamIdle
from app.core.pipeline import RecognitionOptions, Transcript
from app.core.service import RecognitionService
from app.core.streaming import EventKind, Mode, StreamConfig, StreamEvent, open_stream
from app.gen.paraformer.asr.v1 import asr_pb2, asr_pb2_grpc
from app.transport.interceptor import current_facts, current_request_id

_ENCODINGS = {
    asr_pb2.AUDIO_ENCODING_UNSPECIFIED: Encoding.CONTAINER,
    asr_pb2.AUDIO_ENCODING_LINEAR16: Encoding.PCM_S16LE,
    asr_pb2.AUDIO_ENCODING_FLOAT32: Encoding.PCM_F32LE,
}


def deadline_of(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def audio_input(config: asr_pb2.RecognitionConfig, content: bytes) -> AudioInput:
    if config.encoding not in _ENCODINGS:
        raise InvalidConfig(f"unknown audio encoding {config.encoding}")
    if config.sample_rate_hertz < 0:
        raise InvalidConfig(f"sample_rate_hertz must not be negative, not {config.sample_rate_hertz}")
    if config.audio_channel_count < 0:
        raise InvalidConfig(f"audio_channel_count must not be negative, not {config.audio_channel_count}")
    encoding = _ENCODINGS[config.encoding]
    if encoding is Encoding.CONTAINER and config.audio_channel_count:
        raise InvalidConfig("audio_channel_count applies to raw PCM only; files carry their own channel count")
    return AudioInput(content, encoding, config.sample_rate_hertz, config.audio_channel_count)


def recognition_options(config: asr_pb2.RecognitionConfig) -> RecognitionOptions:
    return RecognitionOptions.from_request(
        punctuation=config.enable_automatic_punctuation if config.HasField("enable_automatic_punctuation") else None,
        word_times=config.enable_word_time_offsets,
        hotwords=[(h.phrase, h.boost) for h in config.hotwords],
        engine_options=dict(config.engine_options),
        use_cache=not config.skip_cache,
    )


def to_response(transcript: Transcript, request_id: str) -> asr_pb2.RecognizeResponse:
    results = []
    for sentence in transcript.sentences:
        words = [asr_pb2.WordInfo(word=w.text, start_time_ms=w.start_ms, end_time_ms=w.end_ms) for w in sentence.words]
        results.append(
            asr_pb2.SpeechRecognitionResult(
                alternatives=[asr_pb2.SpeechRecognitionAlternative(transcript=sentence.text, words=words)],
                start_time_ms=sentence.start_ms,
                end_time_ms=sentence.end_ms,
            )
        )
    return asr_pb2.RecognizeResponse(
        results=results,
        transcript=transcript.text,
        audio_duration_ms=round(transcript.audio_duration_s * 1000),
        processing_time_ms=round(transcript.processing_s * 1000),
        request_id=request_id,
        model=transcript.model,
    )


_MODES = {
    asr_pb2.STREAMING_MODE_UNSPECIFIED: None,
    asr_pb2.STREAMING_MODE_ONLINE: Mode.ONLINE,
    asr_pb2.STREAMING_MODE_OFFLINE: Mode.OFFLINE,
    asr_pb2.STREAMING_MODE_TWO_PASS: Mode.TWO_PASS,
}
_EVENTS = {
    EventKind.SPEECH_BEGIN: asr_pb2.SPEECH_EVENT_TYPE_SPEECH_BEGIN,
    EventKind.SPEECH_END: asr_pb2.SPEECH_EVENT_TYPE_SPEECH_END,
    EventKind.END_OF_SINGLE_UTTERANCE: asr_pb2.SPEECH_EVENT_TYPE_END_OF_SINGLE_UTTERANCE,
}


def stream_config(msg: asr_pb2.StreamingRecognitionConfig) -> StreamConfig:
    config = msg.config
    audio = audio_input(config, b"")
    if audio.encoding is Encoding.CONTAINER:
        raise InvalidConfig("streaming audio must be raw PCM: set config.encoding to AUDIO_ENCODING_LINEAR16 or AUDIO_ENCODING_FLOAT32")
    if msg.mode not in _MODES:
        raise InvalidConfig(f"unknown streaming mode {msg.mode}")
    if msg.chunk_duration_ms < 0 or msg.endpointing.max_trailing_silence_ms < 0 or msg.endpointing.max_utterance_ms < 0:
        raise InvalidConfig("chunk_duration_ms and endpointing durations must not be negative")
    return StreamConfig(
        encoding=audio.encoding,
        sample_rate_hz=audio.sample_rate_hz,
        channels=audio.channels,
        options=recognition_options(config),
        interim_results=msg.interim_results,
        single_utterance=msg.single_utterance,
        mode=_MODES[msg.mode],
        chunk_ms=msg.chunk_duration_ms or 600,
        max_trailing_silence_ms=msg.endpointing.max_trailing_silence_ms or None,
        max_utterance_ms=msg.endpointing.max_utterance_ms or None,
    )


def event_to_proto(event: StreamEvent, request_id: str) -> asr_pb2.StreamingRecognizeResponse:
    if event.kind in _EVENTS:
        return asr_pb2.StreamingRecognizeResponse(speech_event_type=_EVENTS[event.kind], speech_event_time_ms=event.time_ms, request_id=request_id)
    words = [asr_pb2.WordInfo(word=w.text, start_time_ms=w.start_ms, end_time_ms=w.end_ms) for w in event.words]
    result = asr_pb2.StreamingRecognitionResult(
        alternatives=[asr_pb2.SpeechRecognitionAlternative(transcript=event.text, words=words)],
        is_final=event.kind is EventKind.FINAL,
        stability=event.stability,
        start_time_ms=event.start_ms,
        end_time_ms=event.end_ms,
        utterance_index=event.utterance_index,
    )
    return asr_pb2.StreamingRecognizeResponse(results=[result], request_id=request_id)


async def next_message(iterator, idle_timeout_s: float):
    """The next client message, None at half-close; StreamIdle when the client goes quiet."""
    try:
        return await asyncio.wait_for(anext(iterator), idle_timeout_s)
    except StopAsyncIteration:
        return None
    except TimeoutError:
        raise StreamIdle(f"no audio received for {idle_timeout_s:g} s (stream_idle_timeout_s); the stream is closed") from None


class RecognizerServicer(asr_pb2_grpc.RecognizerServicer):
    def __init__(self, service: RecognitionService, idle_timeout_s: float = 30.0):
        self._service = service
        self._idle_timeout_s = idle_timeout_s

    async def StreamingRecognize(self, request_iterator, context: grpc.aio.ServicerContext):
        self._service.pipeline()  # UNAVAILABLE before reading anything while loading or draining
        messages = aiter(request_iterator)
        first = await next_message(messages, self._idle_timeout_s)
        if first is None or first.WhichOneof("streaming_request") != "streaming_config":
            raise InvalidConfig("the first message of a stream must carry streaming_config (audio came first, or nothing)")
        pipeline = self._service.pipeline(first.streaming_config.config.model)
        config = stream_config(first.streaming_config)
        facts = current_facts.get()
        facts.model = pipeline.model_name
        rid = current_request_id.get()
        with open_stream(pipeline, config) as session:
            try:
                while not session.finished:
                    message = await next_message(messages, self._idle_timeout_s)
                    if message is None:
                        events = await session.finish()
                    elif message.WhichOneof("streaming_request") != "audio_content":
                        raise InvalidConfig("streaming_config may only be sent in the first message of a stream")
                    else:
                        events = await session.feed(message.audio_content)
                    for event in events:
                        yield event_to_proto(event, rid)
            finally:
                facts.audio_s = session.pcm.seconds_in

    async def ListModels(self, request: asr_pb2.ListModelsRequest, context: grpc.aio.ServicerContext):
        from app.transport.admin_servicer import model_info

        self._service.pipeline()  # UNAVAILABLE while loading or draining
        return asr_pb2.ListModelsResponse(models=[model_info(m) for m in self._service.models()])

    async def Recognize(self, request: asr_pb2.RecognizeRequest, context: grpc.aio.ServicerContext):
        pipeline = self._service.pipeline(request.config.model)
        if not request.audio.content:
            raise InvalidAudio("no audio: audio.content is empty")
        audio = audio_input(request.config, request.audio.content)
        options = recognition_options(request.config)
        facts = current_facts.get()
        facts.model = pipeline.model_name
        transcript = await pipeline.recognize(audio, options, deadline_of(context))
        facts.audio_s = transcript.audio_duration_s
        return to_response(transcript, current_request_id.get())
