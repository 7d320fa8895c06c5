"""Typed results: what a Recognize call or a stream returns, as frozen dataclasses.

Times are integer milliseconds from the start of the audio (or of the stream), as in the proto.
The protobuf a result came from stays reachable (``Transcript.response``) for the rare field
these types leave out.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from app.gen.paraformer.asr.v1 import asr_pb2


@dataclass(frozen=True)
class Word:
    """One word (for Chinese: one character) with its time in the audio."""

    text: str
    start_ms: int
    end_ms: int


@dataclass(frozen=True)
class Sentence:
    """One sentence (or, without punctuation, one speech segment) of a transcript."""

    text: str
    start_ms: int
    end_ms: int
    words: tuple[Word, ...] = ()
    confidence: float = 0.0


@dataclass(frozen=True)
class Transcript:
    """The result of ``transcribe``."""

    text: str
    sentences: tuple[Sentence, ...]
    audio_duration_ms: int
    processing_time_ms: int
    request_id: str
    model: str
    response: asr_pb2.RecognizeResponse | None = field(default=None, repr=False, compare=False)

    @property
    def words(self) -> tuple[Word, ...]:
        """Every word of every sentence, in order (empty unless word times were asked for)."""
        return tuple(w for s in self.sentences for w in s.words)

    def to_dict(self) -> dict[str, Any]:
        """The proto3 JSON form of the response (camelCase keys, as grpcurl prints it), ints as numbers."""
        from google.protobuf.json_format import MessageToDict

        if self.response is None:
            raise ValueError("this Transcript was not built from a response")
        return MessageToDict(self.response, always_print_fields_with_no_presence=True, unquote_int64_if_possible=True)


def _words(words: Sequence[asr_pb2.WordInfo]) -> tuple[Word, ...]:
    return tuple(Word(w.word, w.start_time_ms, w.end_time_ms) for w in words)


def transcript_from_proto(response: asr_pb2.RecognizeResponse) -> Transcript:
    sentences = []
    for result in response.results:
        best = result.alternatives[0] if result.alternatives else asr_pb2.SpeechRecognitionAlternative()
        sentences.append(Sentence(best.transcript, result.start_time_ms, result.end_time_ms, _words(best.words), best.confidence))
    return Transcript(
        text=response.transcript,
        sentences=tuple(sentences),
        audio_duration_ms=response.audio_duration_ms,
        processing_time_ms=response.processing_time_ms,
        request_id=response.request_id,
        model=response.model,
        response=response,
    )


class StreamingMode(enum.Enum):
    """Which models a stream runs (``StreamingMode`` in the proto)."""

    AUTO = asr_pb2.STREAMING_MODE_UNSPECIFIED  # the server's choice: TWO_PASS when it can
    ONLINE = asr_pb2.STREAMING_MODE_ONLINE
    OFFLINE = asr_pb2.STREAMING_MODE_OFFLINE
    TWO_PASS = asr_pb2.STREAMING_MODE_TWO_PASS


@dataclass(frozen=True)
class StreamResult:
    """An interim (``is_final`` False: it may still change) or final result for one utterance."""

    text: str
    is_final: bool
    utterance_index: int
    start_ms: int
    end_ms: int
    stability: float
    words: tuple[Word, ...] = ()
    request_id: str = ""


class SpeechEventType(enum.Enum):
    SPEECH_BEGIN = asr_pb2.SPEECH_EVENT_TYPE_SPEECH_BEGIN
    SPEECH_END = asr_pb2.SPEECH_EVENT_TYPE_SPEECH_END
    END_OF_SINGLE_UTTERANCE = asr_pb2.SPEECH_EVENT_TYPE_END_OF_SINGLE_UTTERANCE


@dataclass(frozen=True)
class SpeechEvent:
    """The VAD saw speech begin or end (only yielded by ``stream(..., events=True)``)."""

    type: SpeechEventType
    time_ms: int
    request_id: str = ""


StreamItem = StreamResult | SpeechEvent


def stream_items(response: asr_pb2.StreamingRecognizeResponse, events: bool) -> list[StreamItem]:
    items: list[StreamItem] = []
    if response.speech_event_type != asr_pb2.SPEECH_EVENT_TYPE_UNSPECIFIED:
        if events:
            try:
                kind = SpeechEventType(response.speech_event_type)
            except ValueError:  # an event type newer than this client: skip it
                return items
            items.append(SpeechEvent(kind, response.speech_event_time_ms, response.request_id))
        return items
    for result in response.results:
        best = result.alternatives[0] if result.alternatives else asr_pb2.SpeechRecognitionAlternative()
        items.append(
            StreamResult(
                text=best.transcript,
                is_final=result.is_final,
                utterance_index=result.utterance_index,
                start_ms=result.start_time_ms,
                end_ms=result.end_time_ms,
                stability=result.stability,
                words=_words(best.words),
                request_id=response.request_id,
            )
        )
    return items


@dataclass(frozen=True)
class ModelInfo:
    """A model pipeline the server holds (``ListModels``); ``RecognitionConfig.model`` names one."""

    name: str
    is_default: bool
    ready: bool
    device: str
    sources: dict[str, str]
    version: str
    streaming: bool
    random_weights: bool
    loaded_at_unix_ms: int


def model_from_proto(info: asr_pb2.ModelInfo) -> ModelInfo:
    return ModelInfo(
        name=info.name,
        is_default=info.is_default,
        ready=info.ready,
        device=info.device,
        sources=dict(info.sources),
        version=info.version,
        streaming=info.streaming,
        random_weights=info.random_weights,
        loaded_at_unix_ms=info.loaded_at_unix_ms,
    )
