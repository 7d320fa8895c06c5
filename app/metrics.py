"""Every Prometheus metric of the service, defined once.

Naming follows Prometheus conventions (base units, ``_seconds``, ``_total``). Labels stay
bounded: model names, RPC names, status codes, model roles. Never request ids or peers.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, Info

PREFIX = "paraformer_asr"

# Latency of ASR requests spans tens of milliseconds (a short utterance on a GPU) to minutes
# (an hour-long file on a CPU).
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
AUDIO_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
RTF_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5)
BATCH_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 128)
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

QUEUE_ITEMS = Gauge(f"{PREFIX}_queue_requests", "Requests admitted and not yet answered", ["model"])
QUEUE_AUDIO = Gauge(f"{PREFIX}_queue_audio_seconds", "Audio of requests admitted and not yet answered", ["model"])
QUEUE_WAIT = Histogram(f"{PREFIX}_batch_queue_wait_seconds", "Time a segment waited for its batch to start", ["model"], buckets=QUEUE_BUCKETS)
BATCH_SIZE = Histogram(f"{PREFIX}_batch_size", "Segments per engine call", ["model"], buckets=BATCH_BUCKETS)
BATCH_SECONDS = Histogram(f"{PREFIX}_batch_duration_seconds", "Duration of one batched engine call", ["model"], buckets=LATENCY_BUCKETS)
DROPPED_BEFORE_MODEL = Counter(
    f"{PREFIX}_dropped_before_model_total",
    "Segments dropped before reaching the model because the caller was gone or its deadline passed",
    ["model", "reason"],
)
ENGINE_FAILURES = Counter(f"{PREFIX}_engine_failures_total", "Engine calls that raised", ["model"])


def init_model_series(model: str) -> None:
    """Create the labelled series of a model at zero, so dashboards and alerts see them before traffic."""
    for gauge in (QUEUE_ITEMS, QUEUE_AUDIO, STREAMS_OPEN):
        gauge.labels(model).set(0)
    for counter in (AUDIO_PROCESSED, ENGINE_FAILURES):
        counter.labels(model)
    REJECTED.labels(model, "queue_full")
    REJECTED.labels(model, "queue_audio")
