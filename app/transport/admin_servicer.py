"""paraformer.asr.v1.Admin: hot reload of model pipelines (behind admin tokens, see security.py)."""

from __future__ import annotations

import dataclasses
import logging

import grpc

from app.config import ConfigError, Settings
from app.core.errors import InvalidConfig
from app.core.pipeline import RecognitionPipeline
from app.core.service import RecognitionService, ServedModel
from app.gen.paraformer.asr.v1 import asr_pb2, asr_pb2_grpc

log = logging.getLogger(__name__)


def model_info(model: ServedModel, ready: bool = True) -> asr_pb2.ModelInfo:
    engine = model.pipeline.engine
    return asr_pb2.ModelInfo(
        name=model.name,
        is_default=model.is_default,
        ready=ready,
        device=engine.device,
        sources={role: source.spec for role, source in engine.report.sources.items()},
        version=engine.identity,
        streaming=engine.has_online,
        random_weights=engine.random_weights,
        loaded_at_unix_ms=int(model.loaded_at * 1000),
    )


class AdminServicer(asr_pb2_grpc.AdminServicer):
    def __init__(self, service: RecognitionService, settings: dict[str, Settings], default: str, drain_timeout_s: float):
        self._service = service
        # The settings each pipeline was built from; a new name starts from the default pipeline's.
        self._settings = dict(settings)
        self._default = default
        self._drain_timeout_s = drain_timeout_s

    async def ReloadModel(self, request: asr_pb2.ReloadModelRequest, context: grpc.aio.ServicerContext):
        self._service.pipeline()  # UNAVAILABLE while loading or draining
        if not request.name:
            raise InvalidConfig("ReloadModel needs the name of the pipeline to load or replace")
        base = self._settings.get(request.name) or self._settings[self._default]
        changes = {
            role: value
            for role, value in (
                ("asr_model", request.asr_model),
                ("vad_model", request.vad_model),
                ("punc_model", request.punc_model),
                ("online_model", request.online_model),
            )
            if value
        }
        try:
            settings = dataclasses.replace(base, model_name=request.name, **changes).validate()
        except ConfigError as e:
            raise InvalidConfig(str(e)) from None
        from app.engine.loader import ModelLoadError

        log.info("reloading model %s (%s)", request.name, ", ".join(f"{k}={v}" for k, v in changes.items()) or "same sources")
        try:
            await self._service.replace(request.name, lambda: RecognitionPipeline.load(settings), request.make_default, self._drain_timeout_s)
        except ModelLoadError as e:
            log.error("reload of model %s failed; the old version keeps serving: %s", request.name, e)
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"reload failed, the old version keeps serving: {e}")
        self._settings[request.name] = settings
        served = next(m for m in self._service.models() if m.name == request.name)
        return model_info(served)
