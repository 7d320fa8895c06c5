"""The FunASR model wrapper: the only module that calls FunASR models.

It loads the ASR, VAD and punctuation models through ``funasr.AutoModel`` exactly as users
would, refuses weights that did not really load, warms each model up, and exposes async
operations that run on each model's own thread (see ``worker.py``) or, for the offline ASR and
punctuation models with ``model_processes``, in each model's own worker process (``model_process.py``):

- ``detect_speech``: VAD segments of a whole recording (in worker processes with ``vad_processes``);
- ``transcribe``: ONE batched ASR call over many segments (from many requests);
- ``punctuate_many``: punctuation marks for many token sequences in one pass (``punctuation.py``);
- ``vad_stream_steps`` / ``online_steps``: the streaming models' steps of many live streams, one
  call for all of them (the VAD's network runs once for all: ``stream_steps.py``), on model
  threads or in worker processes (``stream_workers.py``).

Nothing here knows about gRPC, requests or batching policy.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

# Importing funasr reconfigures the root logger: callers configure logging after importing this module.
from funasr import AutoModel

from app.config import Settings
from app.engine import features
from app.engine.cores import sized_by
from app.engine.heap import freeze_loaded, thaw
from app.engine.loader import ModelLoadError, ModelSource, is_disabled, open_model, resolve_configured_model
from app.engine.model_calls import AsrCall, AsrHypothesis, PunctuationCall
from app.engine.model_process import ModelProcess, sum_gpu_memory
from app.engine.punctuation import TextProgress
from app.engine.stream_steps import OnlineStep, VadStep, accept_precomputed_scores, run_online_steps, run_vad_steps
from app.engine.stream_workers import StreamState, StreamStep, StreamWorkerPool
from app.engine.vad_pool import VadProcessPool, detect_speech
from app.engine.worker import ModelWorker, WorkerPriority

log = logging.getLogger(__name__)

SAMPLE_RATE_HZ = 16000


@dataclass
class LoadReport:
    """Timings and provenance of a load, for logs and metrics."""

    sources: dict[str, ModelSource] = field(default_factory=dict)
    load_seconds: dict[str, float] = field(default_factory=dict)
    warmup_seconds: dict[str, float] = field(default_factory=dict)
    tensors_verified: dict[str, int] = field(default_factory=dict)


def resolve_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ModelLoadError(f"device {requested} was requested but CUDA is not available (torch {torch.__version__})")
        index = int(requested.split(":")[1]) if ":" in requested else 0
        if index >= torch.cuda.device_count():
            raise ModelLoadError(f"device {requested} does not exist: this machine has {torch.cuda.device_count()} CUDA device(s)")
        return f"cuda:{index}"
    return "cpu"


def _log_loaded(role: str, source: ModelSource, report: LoadReport, where: str = "") -> None:
    log.info(
        "loaded %s model from %s%s in %.2f s (%d tensors verified)%s",
        role,
        source.path,
        where,
        report.load_seconds[role],
        report.tensors_verified[role],
        " -- RANDOM WEIGHTS, DEMO ONLY" if source.random_weights else "",
    )


# Above this much weight on CPU, a model's batches are GEMM-bound and use every core given to them:
# on 2 cores the 220M-parameter Paraformer-large architecture (900 MB) in its own process served
# 1.1x the threads layout at 32 clients with both cores' torch threads, 0.6x with one. Below it a
# batch is mostly Python, and a second thread only takes a core from the server: the tiny model
# served 96 requests/s with two threads in its process against 156 with one.
GEMM_BOUND_WEIGHT_BYTES = 100 * 2**20
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


def weight_bytes(model_dir: str | os.PathLike) -> int:
    """Size of the weight files at the top of a model directory (FunASR's model.pt, mostly)."""
    try:
        entries = list(os.scandir(model_dir))
    except OSError:
        return 0
    return sum(e.stat().st_size for e in entries if e.name.endswith(WEIGHT_SUFFIXES) and e.is_file())


def process_torch_threads(role: str, model_dir: str, device: str, cores: int, configured: int) -> int:
    """Torch threads of a model's worker process (model_processes). Processes do not take turns on one
    GIL, so a thread per core in each would oversubscribe the cores: ASR gets half, punctuation a
    quarter, except a large ASR model on CPU, which takes them all."""
    if configured:
        return configured
    if role == "asr" and device == "cpu" and weight_bytes(model_dir) >= GEMM_BOUND_WEIGHT_BYTES:
        return cores
    return max(1, cores // 2) if role == "asr" else max(1, cores // 4)


def models_in_processes(setting: str, device: str, asr_dir: str) -> bool:
    """Whether the offline ASR and punctuation models run in worker processes (model_processes).

    auto: with a GPU, where their Python on the server's threads held its GIL (1.7 busy cores, the
    GPU mostly idle); on CPU, for a large ASR model, which then takes every core in its process: on
    2 cores 1.1-1.3x the threads layout's rate at 1 client and 1.1-1.4x at 32, and every issue-3
    goal in three of four full runs (docs/benchmarks.md, tenth session). A small model (the
    demo's) stays on threads: both layouts served it alike at 32 clients, and a process costs 300 MB.
    """
    if setting != "auto":
        return setting == "on"
    return device.startswith("cuda") or weight_bytes(asr_dir) >= GEMM_BOUND_WEIGHT_BYTES


def every_model_in_a_process(roles: dict[str, str], in_processes: bool, vad_processes: int, stream_processes: int) -> bool:
    """Whether no model runs on a thread of the server: idle_worker_processes "auto" turns on only then,
    because a worker process under SCHED_IDLE starves behind a model thread, niced or not (worker.py)."""
    vad, online = not is_disabled(roles["vad"]), not is_disabled(roles["online"])
    return in_processes and (vad_processes > 0 or not vad) and (stream_processes > 0 or not (vad or online))


class FunasrEngine:
    """ASR (+ optional VAD and punctuation) models, each confined to its own worker thread or process."""

    def __init__(
        self,
        asr: AutoModel | ModelProcess,
        vad: AutoModel | None,
        punc: AutoModel | ModelProcess | None,
        device: str,
        report: LoadReport,
        online: AutoModel | None = None,
        inference_nice: int = 0,
    ):
        self.device = device
        self.report = report
        self._vad, self._online = vad, online
        self._workers: dict[str, ModelWorker] = {}
        # The offline ASR and punctuation models: in a worker process (model_processes) or here, on a thread.
        self._processes: dict[str, ModelProcess] = {}
        self._calls: dict[str, AsrCall | PunctuationCall] = {}
        for role, model in (("asr", asr), ("punc", punc)):
            if isinstance(model, ModelProcess):
                self._processes[role] = model
            elif model is not None:
                self._calls[role] = AsrCall(model) if role == "asr" else PunctuationCall(model, device)
                self._workers[role] = ModelWorker(role, inference_nice)
        if online is not None:
            self._workers["online"] = ModelWorker("online", inference_nice)
        if vad is not None:
            self._workers["vad"] = ModelWorker("vad", inference_nice)
            accept_precomputed_scores(vad.model)
            # The model's own end-of-speech silence (see vad_pool.detect_speech).
            self._vad_default_end_silence_ms = vad.model.vad_opts.max_end_silence_time
        self.vad_pool: VadProcessPool | None = None  # whole-recording VAD in processes, when configured
        self.stream_pool: StreamWorkerPool | None = None  # live streams' VAD and online steps in processes, when configured
        self.asr_calls = 0  # engine calls made, observable by tests and metrics

    # Test-only fault injection (issue: "one bad item must not fail its neighbours"): called with
    # the segments of every ASR call (the texts of every punctuation pass); raising fails that call.
    # A model in a worker process takes only a picklable hook (a module-level function, say).
    @property
    def fault_hook(self) -> Callable[[Sequence[np.ndarray]], None] | None:
        return self._calls["asr"].fault_hook if "asr" in self._calls else None

    @fault_hook.setter
    def fault_hook(self, hook: Callable[[Sequence[np.ndarray]], None] | None) -> None:
        self._set_fault_hook("asr", hook)

    @property
    def punc_fault_hook(self) -> Callable[[Sequence[Sequence[str]]], None] | None:
        return self._calls["punc"].fault_hook if "punc" in self._calls else None

    @punc_fault_hook.setter
    def punc_fault_hook(self, hook: Callable[[Sequence[Sequence[str]]], None] | None) -> None:
        self._set_fault_hook("punc", hook)

    def _set_fault_hook(self, role: str, hook) -> None:
        if role in self._processes:
            self._processes[role].set_fault_hook(hook)
        else:
            self._calls[role].fault_hook = hook

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, settings: Settings) -> FunasrEngine:
        import torch

        device = resolve_device(settings.device)
        cores, found = sized_by()
        log.info("sizing torch threads and worker processes by %s", found)
        threads = settings.torch_threads or cores
        report = LoadReport()
        features.install(settings.fast_features)
        roles = {"asr": settings.asr_model, "vad": settings.vad_model, "punc": settings.punc_model, "online": settings.online_model}
        if is_disabled(roles["asr"]):
            raise ModelLoadError("an ASR model is required (asr_model is empty)")
        allow_random = settings.demo or settings.allow_random_weights
        # The ASR model first: its size decides where the models run (models_in_processes).
        sources = {"asr": resolve_configured_model("asr", roles["asr"], settings, allow_random=allow_random)}
        vad_processes = settings.vad_processes if settings.vad_processes >= 0 else min(4, max(1, cores // 4))
        stream_processes = settings.stream_processes if settings.stream_processes >= 0 else min(4, max(1, cores // 4))
        in_processes = models_in_processes(settings.model_processes, device, str(sources["asr"].path))
        idle = settings.idle_worker_processes == "on" or (
            settings.idle_worker_processes == "auto" and every_model_in_a_process(roles, in_processes, vad_processes, stream_processes)
        )
        priority = WorkerPriority(settings.inference_nice, idle)
        models: dict[str, AutoModel | ModelProcess | None] = {}
        online_dir: str | None = None  # the online model's directory when only stream workers load it
        try:
            for role, spec in roles.items():
                if is_disabled(spec):
                    models[role] = None
                    log.info("%s model disabled", role)
                    continue
                source = sources.get(role) or resolve_configured_model(role, spec, settings, allow_random=allow_random)
                report.sources[role] = source
                if role == "online" and stream_processes:
                    # Only live streams use it, and their steps run in the workers: a copy here would
                    # hold memory (GPU memory, on a GPU) for nothing. The workers load and verify it.
                    models[role], online_dir = None, str(source.path)
                    continue
                if role in ("asr", "punc") and in_processes:
                    # Loads in its own process, alongside the models loaded here; verified there.
                    process_threads = process_torch_threads(role, str(source.path), device, cores, settings.torch_threads)
                    models[role] = ModelProcess(role, str(source.path), device, process_threads, settings.fast_features, priority)
                    continue
                models[role], report.tensors_verified[role], report.load_seconds[role] = open_model(role, str(source.path), device, threads)
                _log_loaded(role, source, report)
            for role, model in models.items():
                if isinstance(model, ModelProcess):
                    report.tensors_verified[role], report.load_seconds[role] = model.wait_loaded()
                    _log_loaded(role, report.sources[role], report, " in its worker process")
        except BaseException:
            for model in models.values():
                if isinstance(model, ModelProcess):
                    model.close()
            raise
        torch.set_num_threads(threads)
        engine = cls(models["asr"], models["vad"], models["punc"], device, report, online=models["online"], inference_nice=settings.inference_nice)
        try:
            if vad_processes and models["vad"] is not None:
                engine.vad_pool = VadProcessPool(str(report.sources["vad"].path), vad_processes, settings.fast_features, priority)
                log.info("whole-recording VAD runs in %d worker processes", vad_processes)
            if stream_processes and (models["vad"] is not None or online_dir is not None):
                vad_dir = str(report.sources["vad"].path) if models["vad"] is not None else None
                engine.stream_pool = StreamWorkerPool(vad_dir, online_dir, device, stream_processes, settings.fast_features, priority)
                log.info("live streams' VAD and online steps run in %d worker processes", stream_processes)
            engine.warm_up()
        except BaseException:
            # Not frozen yet (that comes after the warm-up), so nothing to thaw: thawing here left
            # the models still serving (a failed hot reload's old version) walked by every full collection.
            engine.close(thaw_heap=False)
            raise
        freeze_loaded()
        return engine

    def warm_up(self) -> None:
        """One real call per model, on its own thread, before the server reports SERVING."""
        rng = np.random.default_rng(0)
        t = np.arange(SAMPLE_RATE_HZ) / SAMPLE_RATE_HZ
        audio = (0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(len(t))).astype(np.float32)
        if self._vad is not None:
            start = time.perf_counter()
            self._workers["vad"].call(self._detect_speech, audio, None)
            if self.vad_pool is not None:
                self.vad_pool.warm_up(audio)
            self.report.warmup_seconds["vad"] = time.perf_counter() - start
        if self.stream_pool is not None:
            start = time.perf_counter()
            loaded = self.stream_pool.warm_up(audio)
            self.report.warmup_seconds["stream_workers"] = time.perf_counter() - start
            if self._online is None and "online" in loaded:  # loaded (and verified) only in the workers
                self.report.tensors_verified["online"], self.report.load_seconds["online"] = loaded["online"]
                _log_loaded("online", self.report.sources["online"], self.report, " in the stream workers")
        start = time.perf_counter()
        hyp = self._call_and_wait("asr", [audio], ())
        self.report.warmup_seconds["asr"] = time.perf_counter() - start
        if self.has_punctuation:
            start = time.perf_counter()
            (marks,) = self._call_and_wait("punc", [list(hyp[0].tokens) or ["你", "好"]])
            if isinstance(marks, Exception):  # punctuate_many reports a text's own error instead of raising it
                raise marks
            self.report.warmup_seconds["punc"] = time.perf_counter() - start
        if self._online is not None:
            start = time.perf_counter()
            self._workers["online"].call(run_online_steps, self._online, [OnlineStep({}, audio, True)])
            self.report.warmup_seconds["online"] = time.perf_counter() - start
        self.asr_calls = 0
        log.info("warm-up done: %s", {k: round(v, 3) for k, v in self.report.warmup_seconds.items()})

    def _call_and_wait(self, role: str, *args):
        if role in self._processes:
            return self._processes[role].call(*args)
        return self._workers[role].call(self._calls[role], *args)

    async def _call(self, role: str, *args):
        if role in self._processes:
            return await self._processes[role].run(*args)
        return await self._workers[role].run(self._calls[role], *args)

    # ------------------------------------------------------------------ capabilities
    @property
    def has_vad(self) -> bool:
        return self._vad is not None

    @property
    def has_punctuation(self) -> bool:
        return "punc" in self._calls or "punc" in self._processes

    @property
    def identity(self) -> str:
        """Which weights answer: a new model version gives new cache keys."""
        parts = []
        for role, source in sorted(self.report.sources.items()):
            weights = source.path / "model.pt"
            stamp = weights.stat() if weights.exists() else None
            parts.append(f"{role}={source.path}:{stamp.st_size if stamp else 0}:{int(stamp.st_mtime) if stamp else 0}")
        return ";".join(parts)

    @property
    def has_online(self) -> bool:
        return self._online is not None or (self.stream_pool is not None and self.stream_pool.has_online)

    @property
    def random_weights(self) -> bool:
        return any(s.random_weights for s in self.report.sources.values())

    # ------------------------------------------------------------------ operations
    async def detect_speech(self, samples: np.ndarray, max_end_silence_ms: int | None = None) -> list[tuple[int, int]]:
        """Speech segments [(start_ms, end_ms)] of 16 kHz mono audio."""
        if self._vad is None:
            raise RuntimeError("no VAD model loaded")
        if self.vad_pool is not None:
            return await self.vad_pool.detect_speech(samples, max_end_silence_ms)
        return await self._workers["vad"].run(self._detect_speech, samples, max_end_silence_ms)

    async def transcribe(self, segments: Sequence[np.ndarray], hotwords: tuple[str, ...] = ()) -> list[AsrHypothesis]:
        """One batched engine call; results in input order."""
        hypotheses = await self._call("asr", list(segments), hotwords)
        self.asr_calls += 1
        return hypotheses

    async def punctuate_many(
        self, texts: Sequence[Sequence[str] | TextProgress], max_rounds: int | None = None
    ) -> list[list[str] | TextProgress | Exception | None]:
        """The marks of many token lists in one pass of the model; per list, its marks, None or its own error.

        A mark is the punctuation ('' for none) after each token; None where the model's units
        could not be aligned with the tokens.

        One pass for all: see punctuation.py. When the pass raises, each list is tried alone,
        so that one text the model cannot take fails only its own request. With ``max_rounds``,
        a text that needs more rounds comes back as a ``TextProgress``, to be passed in again.
        """
        if not self.has_punctuation:
            raise RuntimeError("no punctuation model loaded")
        return await self._call("punc", [t if isinstance(t, TextProgress) else list(t) for t in texts], max_rounds)

    # ------------------------------------------------------------------ streaming
    async def vad_stream_steps(self, steps: Sequence[StreamStep]) -> list[list[tuple[int, int]] | Exception]:
        """Feed the streaming VAD of many streams in one call (the network runs once for all).

        Per step, its stream's events [(begin_ms, end_ms)] (-1 where not yet known), or its error.
        """
        if self._vad is None:
            raise RuntimeError("no VAD model loaded")
        if self.stream_pool is not None:
            return await self.stream_pool.vad_steps(steps)
        return await self._workers["vad"].run(self._vad_stream_steps, list(steps))

    async def online_steps(self, steps: Sequence[StreamStep]) -> list[str | Exception]:
        """Feed the online ASR model of many streams in one call.

        Per step, the text the model decoded from its audio ('' until a chunk fills), or its error.
        """
        if self.stream_pool is not None and self.stream_pool.has_online:
            return await self.stream_pool.online_steps(steps)
        if self._online is None:
            raise RuntimeError("no online model loaded")
        return await self._workers["online"].run(self._online_steps, list(steps))

    def reset_online(self, stream: StreamState) -> None:
        """The stream's next online step starts a new utterance (no model call of the stream may be running)."""
        if self.stream_pool is not None:
            self.stream_pool.reset_online(stream)
        stream.online = {}

    def worker_gpu_memory(self) -> dict[str, tuple[float, float]]:
        """GPU memory held by the worker processes (models, streams), {device: (allocated, reserved)}, as last reported."""
        reports = [process.gpu_memory for process in self._processes.values()]
        if self.stream_pool is not None:
            reports.append(self.stream_pool.gpu_memory())
        return sum_gpu_memory(reports)

    def release_stream(self, stream: StreamState) -> None:
        """The stream ended: free its model state, wherever it is."""
        if self.stream_pool is not None:
            self.stream_pool.release(stream)
        stream.vad, stream.online = {}, {}

    # ------------------------------------------------------------------ worker-thread bodies
    def _vad_stream_steps(self, steps: list[StreamStep]) -> list[list[tuple[int, int]] | Exception]:
        vad_steps = [VadStep(s.stream.vad, s.samples, s.is_final, s.max_end_silence_ms) for s in steps]
        return run_vad_steps(self._vad, self._vad_default_end_silence_ms, vad_steps)

    def _online_steps(self, steps: list[StreamStep]) -> list[str | Exception]:
        return run_online_steps(self._online, [OnlineStep(s.stream.online, s.samples, s.is_final, s.chunk_size) for s in steps])

    def _detect_speech(self, samples: np.ndarray, max_end_silence_ms: int | None) -> list[tuple[int, int]]:
        return detect_speech(self._vad, self._vad_default_end_silence_ms, samples, max_end_silence_ms)

    def close(self, thaw_heap: bool = True, collect: bool = True) -> None:
        """Stop the workers and let go of the models, returning their memory (GPU memory included).

        ``thaw_heap``: this engine's models were frozen (a loaded engine's are, see heap.py).
        ``collect``: collect their reference cycles now; False where the caller drops the engine
        and then freezes the heap (which collects), rather than walk every object twice.
        """
        import torch

        for worker in self._workers.values():
            worker.shutdown()
        for process in self._processes.values():
            process.close()
        if self.vad_pool is not None:
            self.vad_pool.close()
        if self.stream_pool is not None:
            self.stream_pool.close()
        self._calls.clear()
        self._vad = self._online = None
        if thaw_heap:
            thaw()  # until the caller drops this engine and freezes again (service.py, after a reload)
        if collect:
            gc.collect()
            if self.device.startswith("cuda"):
                torch.cuda.empty_cache()
