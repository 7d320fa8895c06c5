"""The recognition service's lifecycle: loading -> serving -> draining.

Transport-free. The servicers ask it for the pipeline; while models load or once draining
starts, it answers Unavailable, which the transport turns into UNAVAILABLE.
"""

from __future__ import annotations

import enum

from app.core.errors import Unavailable
from app.core.pipeline import RecognitionPipeline


class Phase(enum.Enum):
    LOADING = "loading"
    SERVING = "serving"
    DRAINING = "draining"
    FAILED = "failed"


class RecognitionService:
    def __init__(self) -> None:
        self.phase = Phase.LOADING
        self._pipeline: RecognitionPipeline | None = None

    def ready(self, pipeline: RecognitionPipeline) -> None:
        self._pipeline = pipeline
        self.phase = Phase.SERVING

    def drain(self) -> None:
        self.phase = Phase.DRAINING

    def fail(self) -> None:
        self.phase = Phase.FAILED

    @property
    def pipeline_or_none(self) -> RecognitionPipeline | None:
        return self._pipeline

    def pipeline(self) -> RecognitionPipeline:
        if self.phase is Phase.SERVING and self._pipeline is not None:
            return self._pipeline
        if self.phase is Phase.DRAINING:
            raise Unavailable("server is shutting down; retry on another replica")
        if self.phase is Phase.FAILED:
            raise Unavailable("server failed to load its models; see the server log")
        raise Unavailable("models are still loading; retry shortly")
