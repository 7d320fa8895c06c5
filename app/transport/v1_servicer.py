"""paraformer.asr.v1.Recognizer: protobuf <-> core types, nothing else."""

from __future__ import annotations

import time

import grpc

from app.core.audio import AudioInput, Encoding
from app.core.errors import InvalidAudio, InvalidConfig
from app.core.pipeline import RecognitionOptions, Transcript
from app.core.service import RecognitionService
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


class RecognizerServicer(asr_pb2_grpc.RecognizerServicer):
    def __init__(self, service: RecognitionService):
        self._service = service

    async def Recognize(self, request: asr_pb2.RecognizeRequest, context: grpc.aio.ServicerContext):
        pipeline = self._service.pipeline()
        if request.config.model and request.config.model != pipeline.model_name:
            raise InvalidConfig(f"unknown model {request.config.model!r}; this server serves: {pipeline.model_name}")
        if not request.audio.content:
            raise InvalidAudio("no audio: audio.content is empty")
        audio = audio_input(request.config, request.audio.content)
        options = recognition_options(request.config)
        facts = current_facts.get()
        facts.model = pipeline.model_name
        transcript = await pipeline.recognize(audio, options, deadline_of(context))
        facts.audio_s = transcript.audio_duration_s
        return to_response(transcript, current_request_id.get())
