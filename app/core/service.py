"""The recognition service: its named model pipelines and its lifecycle (loading -> serving -> draining).

Transport-free. Servicers ask it for a pipeline by name; while models load or once draining
starts it answers Unavailable, which the transport turns into UNAVAILABLE. Pipelines can be
replaced while serving: requests already running finish on the version they started with.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from app import metrics
from app.core.errors import InvalidConfig, Unavailable
from app.core.pipeline import RecognitionPipeline
from app.engine.heap import freeze_loaded

log = logging.getLogger(__name__)


class Phase(enum.Enum):
    LOADING = "loading"
    SERVING = "serving"
    DRAINING = "draining"
    FAILED = "failed"


@dataclass(frozen=True)
class ServedModel:
    name: str
    pipeline: RecognitionPipeline
    is_default: bool
    loaded_at: float  # time.time()


class RecognitionService:
    def __init__(self) -> None:
        self.phase = Phase.LOADING
        self._pipelines: dict[str, RecognitionPipeline] = {}
        self._loaded_at: dict[str, float] = {}
        self.default = ""
        self._reload_lock = asyncio.Lock()
        # Called with (name, serving) when a model starts or stops serving (the health service listens).
        self.on_model_state: Callable[[str, bool], Awaitable[None]] | None = None

    # ------------------------------------------------------------------ lifecycle
    def ready(self, pipelines: dict[str, RecognitionPipeline], default: str) -> None:
        self._pipelines = dict(pipelines)
        self._loaded_at = {name: time.time() for name in pipelines}
        self.default = default
        self.phase = Phase.SERVING

    def drain(self) -> None:
        self.phase = Phase.DRAINING

    def fail(self) -> None:
        self.phase = Phase.FAILED

    @property
    def pipelines(self) -> list[RecognitionPipeline]:
        return list(self._pipelines.values())

    def models(self) -> list[ServedModel]:
        names = sorted(self._pipelines, key=lambda n: (n != self.default, n))
        return [ServedModel(n, self._pipelines[n], n == self.default, self._loaded_at[n]) for n in names]

    def pipeline(self, name: str = "") -> RecognitionPipeline:
        if self.phase is not Phase.SERVING:
            if self.phase is Phase.DRAINING:
                raise Unavailable("server is shutting down; retry on another replica")
            if self.phase is Phase.FAILED:
                raise Unavailable("server failed to load its models; see the server log")
            raise Unavailable("models are still loading; retry shortly")
        pipeline = self._pipelines.get(name or self.default)
        if pipeline is None:
            raise InvalidConfig(f"unknown model {name!r}; this server serves: {', '.join(sorted(self._pipelines))}")
        return pipeline

    # ------------------------------------------------------------------ hot reload
    async def replace(self, name: str, load: Callable[[], Awaitable[RecognitionPipeline]], make_default: bool, drain_timeout_s: float) -> RecognitionPipeline:
        """Load a new version next to the old, switch atomically, drain and free the old one.

        A failed load raises and leaves the old version serving.
        """
        async with self._reload_lock:  # one reload at a time: two would race for memory
            fresh = await load()
            old = self._pipelines.get(name)
            # The switch: one dict assignment on the event loop, so each request sees old or new.
            self._pipelines[name] = fresh
            self._loaded_at[name] = time.time()
            if make_default or not self.default:
                self.default = name
            log.info("model %s: new version serving%s", name, "; draining the old one" if old else "")
            if self.on_model_state is not None:
                await self.on_model_state(name, True)
        if old is not None:
            asyncio.get_running_loop().create_task(self._retire(old, drain_timeout_s))
        return fresh

    async def _retire(self, old: RecognitionPipeline, drain_timeout_s: float) -> None:
        deadline = time.monotonic() + drain_timeout_s
        while old.busy and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if old.busy:
            log.warning("old version of %s still busy after %.0f s; closing it anyway", old.model_name, drain_timeout_s)
        await old.close(collect=False)  # freeze_loaded below collects: one walk of the heap, not two
        if old.model_name not in self._pipelines:
            metrics.MODEL_READY.labels(old.model_name).set(0)
        log.info("old version of model %s closed and freed", old.model_name)
        del old
        freeze_loaded()  # the models that serve now, without the old version's leftovers (heap.py)
