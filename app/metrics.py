"""Every Prometheus metric of the service, defined once.

Naming follows Prometheus conventions (base units, ``_seconds``, ``_total``). Labels stay
bounded: model names, RPC names, status codes, model roles, GC generations. Never request ids or peers.
"""

from __future__ import annotations

import gc
import time

from prometheus_client import Counter, Gauge, Histogram, Info

PREFIX = "paraformer_asr"

# Latency of ASR requests spans tens of milliseconds (a short utterance on a GPU) to minutes
# (an hour-long file on a CPU).
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
AUDIO_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
RTF_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5)
BATCH_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 128)
STREAM_STEP_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
QUEUE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

BUILD_INFO = Info(f"{PREFIX}_build", "Version of the server and of the libraries it runs on")

MODEL_LOAD_SECONDS = Gauge(f"{PREFIX}_model_load_seconds", "Time taken to load (and verify) each model at start-up", ["model", "role"])
MODEL_WARMUP_SECONDS = Gauge(f"{PREFIX}_model_warmup_seconds", "Time of each model's warm-up call", ["model", "role"])
MODEL_READY = Gauge(f"{PREFIX}_model_ready", "1 when the model pipeline is loaded, warmed up and serving", ["model"])

REQUESTS = Counter(f"{PREFIX}_requests_total", "Finished RPCs by method and status code", ["rpc", "code"])
REQUEST_LATENCY = Histogram(f"{PREFIX}_request_duration_seconds", "RPC latency by method and status code", ["rpc", "code"], buckets=LATENCY_BUCKETS)
IN_FLIGHT = Gauge(f"{PREFIX}_requests_in_flight", "RPCs being served now", ["rpc"])
REJECTED = Counter(f"{PREFIX}_rejected_total", "Requests refused by admission control (overload)", ["model", "reason"])

AUDIO_SECONDS = Histogram(f"{PREFIX}_audio_duration_seconds", "Duration of audio per recognized request", ["model"], buckets=AUDIO_BUCKETS)
AUDIO_PROCESSED = Counter(f"{PREFIX}_audio_processed_seconds_total", "Audio recognized, in seconds", ["model"])
RTF = Histogram(f"{PREFIX}_real_time_factor", "Processing time divided by audio duration, per request", ["model"], buckets=RTF_BUCKETS)

STREAMS_OPEN = Gauge(f"{PREFIX}_streams_open", "Streaming recognitions open now", ["model"])

STREAMS_CAPACITY = Gauge(f"{PREFIX}_streams_capacity", "Most streams the server accepts at once (max_streams)", ["model"])

QUEUE_ITEMS = Gauge(f"{PREFIX}_queue_requests", "Requests admitted and not yet answered", ["model"])
QUEUE_CAPACITY_ITEMS = Gauge(f"{PREFIX}_queue_capacity_requests", "Admission limit on requests (max_queue_items)", ["model"])
QUEUE_CAPACITY_AUDIO = Gauge(f"{PREFIX}_queue_capacity_audio_seconds", "Admission limit on queued audio (max_queue_audio_seconds)", ["model"])
QUEUE_AUDIO = Gauge(f"{PREFIX}_queue_audio_seconds", "Audio of requests admitted and not yet answered", ["model"])
QUEUE_WAIT = Histogram(f"{PREFIX}_batch_queue_wait_seconds", "Time a segment waited for its batch to start", ["model"], buckets=QUEUE_BUCKETS)
BATCH_SIZE = Histogram(f"{PREFIX}_batch_size", "Segments per engine call", ["model"], buckets=BATCH_BUCKETS)
STREAM_STEP_BATCH = Histogram(
    f"{PREFIX}_stream_step_batch_size",
    "Live streams whose step of the streaming model (role: vad or online) ran in one engine call",
    ["model", "role"],
    buckets=STREAM_STEP_BUCKETS,
)
PUNCTUATION_BATCH = Histogram(
    f"{PREFIX}_punctuation_batch_size",
    "Requests (or streamed utterances) whose transcripts the punctuation model marked in one pass",
    ["model"],
    buckets=BATCH_BUCKETS,
)
BATCH_SECONDS = Histogram(f"{PREFIX}_batch_duration_seconds", "Duration of one batched engine call", ["model"], buckets=LATENCY_BUCKETS)
DROPPED_BEFORE_MODEL = Counter(
    f"{PREFIX}_dropped_before_model_total",
    "Segments dropped before reaching the model because the caller was gone or its deadline passed",
    ["model", "reason"],
)
CACHE_REQUESTS = Counter(f"{PREFIX}_cache_requests_total", "Result-cache lookups by outcome: hit, shared (single-flight) or miss", ["model", "outcome"])
CACHE_EVICTIONS = Counter(f"{PREFIX}_cache_evictions_total", "Results evicted from the in-memory cache to stay in budget", ["model"])
CACHE_BYTES = Gauge(f"{PREFIX}_cache_bytes", "Bytes held by the in-memory result cache", ["model"])
ENGINE_FAILURES = Counter(f"{PREFIX}_engine_failures_total", "Engine calls that raised", ["model"])
GC_PAUSE = Histogram(
    f"{PREFIX}_gc_pause_seconds",
    "Time the cyclic garbage collector held the server process (every thread, the event loop too), by generation",
    ["generation"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
)


def time_garbage_collections() -> None:
    """Observe every collection of the cyclic garbage collector in GC_PAUSE (once per process).

    A full collection stops every thread while it walks all tracked objects: 200 ms for a loaded
    model before the engine froze the models out of it (app/engine/heap.py). What is left (the
    objects calls leave behind) is what this shows; a pause here is a stall of every RPC. The timer
    costs about 1.6 us per collection (a few thousand young collections a second under a flood).
    """
    if _time_collection not in gc.callbacks:
        gc.callbacks.append(_time_collection)


_GC_PAUSE_BY_GENERATION = {g: GC_PAUSE.labels(str(g)) for g in (0, 1, 2)}
_gc_started_at = [0.0]  # collections never overlap: one start time will do


def _time_collection(phase: str, info: dict) -> None:
    if phase == "start":
        _gc_started_at[0] = time.perf_counter()
    else:
        generation = info["generation"]
        child = _GC_PAUSE_BY_GENERATION.get(generation) or GC_PAUSE.labels(str(generation))  # another CPython's generations
        child.observe(time.perf_counter() - _gc_started_at[0])


def init_model_series(model: str, max_items: int, max_audio_s: float, max_streams: int) -> None:
    """Create the labelled series of a model at zero, so dashboards and alerts see them before traffic."""
    QUEUE_CAPACITY_ITEMS.labels(model).set(max_items)
    QUEUE_CAPACITY_AUDIO.labels(model).set(max_audio_s)
    STREAMS_CAPACITY.labels(model).set(max_streams)
    for gauge in (QUEUE_ITEMS, QUEUE_AUDIO, STREAMS_OPEN):
        gauge.labels(model).set(0)
    for counter in (AUDIO_PROCESSED, ENGINE_FAILURES):
        counter.labels(model)
    REJECTED.labels(model, "queue_full")
    REJECTED.labels(model, "queue_audio")
    REJECTED.labels(model, "queue_wait")


# ================================================================ GPU (read at scrape time)
# Not instruments that code updates, but a collector that reads torch.cuda and NVML when
# Prometheus scrapes. It reports only the GPUs that this process (or its workers) has put to work:
#
#   paraformer_asr_gpu_memory_allocated_bytes{device}  memory held by live tensors (torch.cuda),
#                                                      the server's and its model and stream workers'
#   paraformer_asr_gpu_memory_reserved_bytes{device}   memory held by torch's caching allocator (same)
#   paraformer_asr_gpu_memory_used_bytes{device}       memory in use on the whole device, by every
#                                                      process, CUDA contexts included (cudaMemGetInfo)
#   paraformer_asr_gpu_memory_total_bytes{device}      the device's memory size
#   paraformer_asr_gpu_utilization_ratio{device}       busy fraction over NVML's last sample
#                                                      period (0..1); only with nvidia-ml-py
#
# ``device`` is torch's name for it (``cuda:0``), so a handful of values at most. On a CPU
# machine, before the model is on a GPU, or when torch or NVML fail, the series are absent and
# the scrape goes on. The collector never imports torch (a process that has not imported it
# cannot have a GPU in use) and never initialises CUDA: reading the properties of an
# uninitialised device would create a CUDA context (hundreds of MiB) just to be observed, and so
# would asking a device this process has no memory on for its free memory: ``used`` is read only
# for devices that the server process itself holds memory on (with CUDA, it loads the VAD there).
# nvidia-ml-py (import name ``pynvml``) is optional and not a dependency: install it in the
# image to get utilisation.

import contextlib as _contextlib  # noqa: E402  (kept with the section that uses them)
import logging as _logging  # noqa: E402
import sys as _sys  # noqa: E402
import threading as _threading  # noqa: E402
from collections.abc import Callable as _Callable  # noqa: E402
from collections.abc import Iterator as _Iterator  # noqa: E402

from prometheus_client import REGISTRY as _REGISTRY  # noqa: E402
from prometheus_client.metrics_core import GaugeMetricFamily as _GaugeMetricFamily  # noqa: E402
from prometheus_client.registry import Collector as _Collector  # noqa: E402

_gpu_log = _logging.getLogger(__name__ + ".gpu")


def _uuid_key(uuid: object) -> str:
    """NVML says ``GPU-1a2b...`` (bytes in old bindings); torch says ``1a2b...``."""
    text = uuid.decode() if isinstance(uuid, bytes) else str(uuid)
    text = text.strip().lower()
    return text[4:] if text.startswith("gpu-") else text


class GpuCollector(_Collector):
    """GPU memory (torch.cuda) and utilisation (NVML) of the devices this process uses."""

    def __init__(self) -> None:
        self._lock = _threading.Lock()
        self._nvml = None  # the pynvml module once nvmlInit succeeded
        self._nvml_tried = False
        self._nvml_handles: dict[str, object] = {}  # uuid -> handle
        self._warned: set[str] = set()
        # Worker processes' memory on the GPUs (live streams' workers hold their own online model):
        # owner -> callable returning {device: (allocated, reserved)} as last reported by its workers.
        self._worker_memory: dict[object, _Callable[[], dict[str, tuple[float, float]]]] = {}

    def add_worker_memory(self, owner: object, read: _Callable[[], dict[str, tuple[float, float]]]) -> None:
        """Count the GPU memory that ``owner``'s worker processes report in the memory gauges."""
        with self._lock:
            self._worker_memory[owner] = read

    def remove_worker_memory(self, owner: object) -> None:
        with self._lock:
            self._worker_memory.pop(owner, None)

    def _families(self) -> tuple[_GaugeMetricFamily, ...]:
        return (
            _GaugeMetricFamily(f"{PREFIX}_gpu_memory_allocated_bytes", "GPU memory held by live tensors", labels=["device"]),
            _GaugeMetricFamily(f"{PREFIX}_gpu_memory_reserved_bytes", "GPU memory held by torch's caching allocator", labels=["device"]),
            _GaugeMetricFamily(
                f"{PREFIX}_gpu_memory_used_bytes",
                "GPU memory in use on the whole device by every process, CUDA contexts included (total - free)",
                labels=["device"],
            ),
            _GaugeMetricFamily(f"{PREFIX}_gpu_memory_total_bytes", "Total memory of the GPU", labels=["device"]),
            _GaugeMetricFamily(f"{PREFIX}_gpu_utilization_ratio", "Fraction of time the GPU was busy over NVML's last sample period (0..1)", labels=["device"]),
        )

    def describe(self) -> _Iterator[_GaugeMetricFamily]:
        # Names only: lets the registry refuse a second registration without calling collect().
        return iter(self._families())

    def collect(self) -> _Iterator[_GaugeMetricFamily]:
        try:
            families = self._read()
        except Exception as error:  # a scrape must never fail because of a GPU query
            self._warn_once("collect", "GPU metrics unavailable: %s", error)
            return
        for family in families:
            if family.samples:
                yield family

    def _torch_cuda(self):
        """torch.cuda when this process has already initialised CUDA, else None."""
        torch = _sys.modules.get("torch")
        cuda = getattr(torch, "cuda", None) if torch is not None else None
        if cuda is None:
            return None
        # is_initialized() first: it has no side effects, and an initialised CUDA is available.
        if not cuda.is_initialized() or not cuda.is_available():
            return None
        return cuda

    def _read(self) -> tuple[_GaugeMetricFamily, ...]:
        allocated, reserved, used, total, utilization = families = self._families()
        with self._lock:
            readers = list(self._worker_memory.values())
        in_workers: dict[str, list[float]] = {}
        for read in readers:
            for device, (worker_allocated, worker_reserved) in read().items():
                totals = in_workers.setdefault(device, [0.0, 0.0])
                totals[0] += worker_allocated
                totals[1] += worker_reserved
        cuda = self._torch_cuda()
        if cuda is None:
            # No CUDA here (no VAD model, the models in worker processes): the workers' own reports.
            for device, (workers_allocated, workers_reserved) in sorted(in_workers.items()):
                allocated.add_metric([device], workers_allocated)
                reserved.add_metric([device], workers_reserved)
            return families
        for index in range(cuda.device_count()):
            device = f"cuda:{index}"
            props = cuda.get_device_properties(index)
            workers_allocated, workers_reserved = in_workers.get(device, (0.0, 0.0))
            reserved_here = float(cuda.memory_reserved(index))
            allocated.add_metric([device], float(cuda.memory_allocated(index)) + workers_allocated)
            reserved.add_metric([device], reserved_here + workers_reserved)
            total.add_metric([device], float(props.total_memory))
            # The reserved and the used memory differ by the CUDA contexts (one per process that
            # uses the device: the server, each model and stream worker) and other tenants.
            # Only where this process holds memory (so has a context): elsewhere the query would create one.
            if reserved_here:
                free, size = cuda.mem_get_info(index)
                used.add_metric([device], float(size - free))
            ratio = self._utilization(getattr(props, "uuid", None))
            if ratio is not None:
                utilization.add_metric([device], ratio)
        return families

    def _utilization(self, uuid: object) -> float | None:
        if uuid is None:
            return None
        nvml = self._nvml_module()
        if nvml is None:
            return None
        handle = self._nvml_handles.get(_uuid_key(uuid))
        if handle is None:
            return None
        try:
            return nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0
        except Exception as error:  # e.g. NVML_ERROR_NOT_SUPPORTED on some MIG slices
            self._warn_once("nvml-util", "NVML utilisation unavailable: %s", error)
            return None

    def _nvml_module(self):
        """pynvml, initialised once (with a uuid -> handle map); None when absent or failing."""
        with self._lock:
            if self._nvml_tried:
                return self._nvml
            self._nvml_tried = True
            try:
                import pynvml  # nvidia-ml-py; optional
            except ImportError:
                return None
            try:
                pynvml.nvmlInit()
                for i in range(pynvml.nvmlDeviceGetCount()):
                    handle = pynvml.nvmlDeviceGetHandleByIndex(i)
                    self._nvml_handles[_uuid_key(pynvml.nvmlDeviceGetUUID(handle))] = handle
            except Exception as error:
                self._warn_once("nvml-init", "NVML unavailable, no GPU utilisation metric: %s", error)
                self._nvml_handles.clear()
                return None
            self._nvml = pynvml
            return pynvml

    def _warn_once(self, key: str, message: str, error: Exception) -> None:
        if key not in self._warned:
            self._warned.add(key)
            _gpu_log.warning(message, error)


GPU_COLLECTOR = GpuCollector()


def register_gpu_collector(registry=_REGISTRY) -> None:
    """Register the GPU collector (once per registry; a repeat is a no-op)."""
    with _contextlib.suppress(ValueError):  # already registered (e.g. this module was reloaded)
        registry.register(GPU_COLLECTOR)


register_gpu_collector()
