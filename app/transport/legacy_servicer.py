"""The recipe's ASRService, wire-compatible: errors go in-band (success=false, error_msg).

Its clients check ``success`` rather than status codes, so every failure becomes a TextResponse;
the status recorded in metrics and logs is still the one the v1 API would have used.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import grpc

from app.core.audio import AudioInput
from app.core.pipeline import RecognitionOptions, RecognitionPipeline, Transcript
from app.core.service import RecognitionService
from app.gen import asr_service_pb2, asr_service_pb2_grpc
from app.transport.errors import status_for
from app.transport.interceptor import current_facts, current_request_id
from app.transport.v1_servicer import deadline_of, next_message

log = logging.getLogger(__name__)


class LegacyAsrServicer(asr_service_pb2_grpc.ASRServiceServicer):
    def __init__(self, service: RecognitionService, max_upload_bytes: int, idle_timeout_s: float = 30.0):
        self._service = service
        self._max_upload_bytes = max_upload_bytes
        self._idle_timeout_s = idle_timeout_s

    async def Recognize(self, request: asr_service_pb2.AudioRequest, context: grpc.aio.ServicerContext):
        audio = AudioInput(request.audio_data, format_hint=request.format.strip().lower())
        return await self._respond(lambda pipeline: pipeline.recognize(audio, RecognitionOptions(), deadline_of(context)))

    async def StreamRecognize(self, request_iterator, context: grpc.aio.ServicerContext):
        async def chunks():
            # An uploader that goes quiet must not hold its admission slot until its deadline.
            messages = aiter(request_iterator)
            while (chunk := await next_message(messages, self._idle_timeout_s)) is not None:
                yield chunk.data
                if chunk.is_final:
                    break

        return await self._respond(lambda pipeline: pipeline.recognize_upload(chunks(), self._max_upload_bytes, "", RecognitionOptions(), deadline_of(context)))

    async def _respond(self, recognize: Callable[[RecognitionPipeline], Awaitable[Transcript]]) -> asr_service_pb2.TextResponse:
        facts = current_facts.get()
        try:
            pipeline = self._service.pipeline()
            facts.model = pipeline.model_name
            transcript = await recognize(pipeline)
        except Exception as error:
            return self._failure(error)
        facts.audio_s = transcript.audio_duration_s
        return asr_service_pb2.TextResponse(text=transcript.text, success=True)

    @staticmethod
    def _failure(error: Exception) -> asr_service_pb2.TextResponse:
        rid = current_request_id.get()
        code, message = status_for(error, rid)
        if code is grpc.StatusCode.INTERNAL:
            log.error("unhandled error in legacy ASRService", exc_info=error)
        current_facts.get().code = code
        return asr_service_pb2.TextResponse(success=False, error_msg=message)
