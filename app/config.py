"""The one typed settings object, filled from CLI flags and ``ASR_*`` environment variables.

Precedence: command-line flag > environment variable > default. Every field declares its
help text here, so that ``--help``, the environment and ``docs/configuration.md`` cannot drift.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

DEFAULT_ASR_MODEL = "iic/speech_paraformer-large-vad-punc_asr_nat-zh-cn-16k-common-vocab8404-pytorch"
DEFAULT_VAD_MODEL = "iic/speech_fsmn_vad_zh-cn-16k-common-pytorch"
DEFAULT_PUNC_MODEL = "iic/punc_ct-transformer_zh-cn-common-vocab272727-pytorch"
DEFAULT_ONLINE_MODEL = "iic/speech_paraformer-large_asr_nat-zh-cn-16k-common-vocab8404-online"

MIB = 1024 * 1024


class ConfigError(ValueError):
    """A setting has a value the server cannot run with."""


def _opt(help: str, *, group: str, choices: tuple[str, ...] | None = None, **kw: Any) -> Any:
    return field(metadata={"help": help, "group": group, "choices": choices}, **kw)


@dataclass
class Settings:
    """Everything the server can be told. See docs/configuration.md (generated from this class)."""

    # --- models ---
    asr_model: str = _opt(
        "ASR model: a local directory (absolute or relative path) or a ModelScope hub id.",
        group="models",
        default=DEFAULT_ASR_MODEL,
    )
    vad_model: str = _opt(
        "Voice activity detection model (directory or hub id); 'none' feeds whole files to the ASR model.",
        group="models",
        default=DEFAULT_VAD_MODEL,
    )
    punc_model: str = _opt(
        "Punctuation model (directory or hub id); 'none' returns unpunctuated text.",
        group="models",
        default=DEFAULT_PUNC_MODEL,
    )
    online_model: str = _opt(
        "Streaming (online) Paraformer for interim results of StreamingRecognize (directory or hub id); 'none' disables.",
        group="models",
        default=DEFAULT_ONLINE_MODEL,
    )
    models_config: str = _opt(
        "YAML file naming several model pipelines (see docs/models.md); overrides asr_model etc. when set.",
        group="models",
        default="",
    )
    model_revision: str = _opt("Hub revision (tag or branch) of models given as hub ids.", group="models", default="master")
    model_cache_dir: str = _opt(
        "Where hub models are downloaded to and looked up in (the ModelScope cache).",
        group="models",
        default=str(Path.home() / ".cache" / "modelscope"),
    )
    offline: bool = _opt("Never download: a hub id must already be in the model cache.", group="models", default=False)
    download_timeout_s: float = _opt("Give up a model download that has not finished in this many seconds.", group="models", default=1800.0)
    demo: bool = _opt(
        "DEMO MODE: serve tiny RANDOM-WEIGHT models built on the spot (nonsense text, no download, no GPU).",
        group="models",
        default=False,
    )
    allow_random_weights: bool = _opt(
        "Serve model directories marked as random-weight demo models (for tests and benchmarks).",
        group="models",
        default=False,
    )
    model_name: str = _opt(
        "Name of the model pipeline in responses and metrics (default: derived from asr_model).",
        group="models",
        default="",
    )
    demo_dir: str = _opt(
        "Where demo models are built (reused when already there).",
        group="models",
        default=str(Path.home() / ".cache" / "paraformer-asr" / "demo-models"),
    )
    device: str = _opt("Inference device: auto (CUDA when available), cpu, cuda or cuda:N.", group="models", default="auto")
    torch_threads: int = _opt(
        "CPU threads for torch inside the worker (0: one per available core). Available cores: the CPU affinity, at most a "
        "cgroup CPU limit rounded down (a pod's resources.limits.cpu), at least 1; the startup log says what it found.",
        group="models",
        default=0,
    )
    vad_processes: int = _opt(
        "Run whole-recording VAD in this many worker processes, each with its own copy of the VAD model; "
        "0 runs it on a thread of the server process, -1 picks one process per 4 available cores (1 to 4). "
        "The VAD's frame-by-frame logic is Python that holds the GIL and otherwise caps a fast (GPU) server "
        "(docs/benchmarks.md). Each process costs about 350 MB of private memory (500 MB resident). Live streams use stream_processes.",
        group="models",
        default=-1,
    )
    stream_processes: int = _opt(
        "Run live streams' streaming VAD and online-model steps in this many worker processes, each with its own copy "
        "of those two models and the state of the streams assigned to it; 0 runs them on threads of the server process, "
        "-1 picks one process per 4 available cores (1 to 4). On the server's threads these steps hold its GIL and cap "
        "the number of real-time streams (docs/benchmarks-streaming.md). A worker that dies ends its streams with an error.",
        group="models",
        default=-1,
    )
    model_processes: str = _opt(
        "Run the offline ASR model and the punctuation model each in a worker process of its own (on) or on threads "
        "of the server process (off); auto: on when the device is a GPU, or on CPU when the ASR model has 100 MB or "
        "more of weights (Paraformer-large: 880 MB; 1.1-1.4x the threads' rate on 2 cores). On a thread, the model's Python shares the "
        "server's GIL with the event loop, which capped an H200 server at 1.7 busy cores and 49 requests/s; on a "
        "2-core CPU the processes compete with the event loop for the cores instead, which slowed refusals under a "
        "flood until they ran under SCHED_IDLE (idle_worker_processes; docs/benchmarks.md). A worker that dies fails "
        "the batch it was running (its segments are retried alone) and is restarted. With torch_threads 0, the ASR "
        "process takes half the available cores (on CPU, all of them for an ASR model of 100 MB or more) and "
        "punctuation a quarter (docs/operations.md).",
        group="models",
        default="auto",
        choices=("auto", "on", "off"),
    )
    gil_switch_interval_ms: float = _opt(
        "How long a thread of the server process may keep Python's GIL while another waits for it "
        "(sys.setswitchinterval; Python's default is 5). The model threads run long stretches of Python; the event "
        "loop that answers health checks and refuses a flood waits up to this long each time it needs the GIL back. "
        "On 2 cores at 1,100 calls/s, 0.5 took the refusals answered within 10 ms from 97.9-98.6 % to 99.2-99.4 % "
        "(p99 12-16 to 8.5-9 ms) for about 5 % of throughput (docs/benchmarks.md).",
        group="models",
        default=0.5,
    )
    inference_nice: int = _opt(
        "Run the model threads (and the worker processes, with idle_worker_processes false) this much lower in CPU "
        "priority (Linux nice, 0-19) than the event loop that takes calls in, so that when the CPU is short, health "
        "checks and refusals of a full queue stay fast (docs/operations.md). An idle CPU runs them at full speed. "
        "0: the same priority. Measured on CPU only.",
        group="models",
        default=10,
    )
    idle_worker_processes: str = _opt(
        "Run the model worker processes (model_processes, vad_processes, stream_processes) under Linux's SCHED_IDLE "
        "policy (on), or at inference_nice like the model threads (off): idle, they get only the CPU time nothing "
        "else wants, and give up a core the moment the event loop wants one. With the models in processes on 2 "
        "cores at 1,230 calls/s, refusals within 10 ms went from 23-72 % at nice 10 to 87-97 %. But they also starve "
        "behind model threads of the server process, niced or not (a tiny-model server with ASR on a thread and VAD "
        "in an idle process served 96 instead of 145 requests/s); auto: on when no model runs on a thread of the "
        "server (model_processes on, vad_processes and stream_processes not 0) (docs/benchmarks.md).",
        group="models",
        default="auto",
        choices=("auto", "on", "off"),
    )
    fast_features: bool = _opt(
        "Compute fbank features with the built-in vectorised Kaldi fbank (about 9x faster than FunASR's fallback; "
        "log-mel values equal to 1e-3); false uses FunASR's own. Applies to the whole process.",
        group="models",
        default=True,
    )

    # --- server ---
    host: str = _opt("Address the gRPC server listens on.", group="server", default="0.0.0.0")
    port: int = _opt("gRPC port (0 picks a free one, logged at start).", group="server", default=50051)
    max_receive_message_bytes: int = _opt(
        "Largest request message accepted (a 5-minute 16 kHz 16-bit wav is 9.6 MB).",
        group="server",
        default=64 * MIB,
    )
    max_send_message_bytes: int = _opt("Largest response message sent.", group="server", default=16 * MIB)
    max_audio_seconds: float = _opt("Longest audio accepted in one request, after decoding.", group="server", default=3600.0)
    shutdown_grace_s: float = _opt(
        "On SIGTERM: how long in-flight requests may take to finish before the server exits.",
        group="server",
        default=30.0,
    )

    health_port: int = _opt(
        "Extra plaintext port serving only the gRPC health service (0: off); for probes when the main port uses TLS.",
        group="server",
        default=0,
    )
    max_concurrent_rpcs: int = _opt(
        "Most RPCs (calls and streams) in progress at once; more are refused with RESOURCE_EXHAUSTED (0: no limit).",
        group="server",
        default=1000,
    )
    max_connection_age_s: float = _opt(
        "Close client connections after this long (0: never) so clients reconnect and spread over new replicas.",
        group="server",
        default=0.0,
    )
    max_connection_age_grace_s: float = _opt("After max_connection_age_s, how long calls on the old connection may still finish.", group="server", default=30.0)
    keepalive_min_ping_interval_s: float = _opt(
        "Reject client keepalive pings more frequent than this (abusive pings close the connection).", group="server", default=10.0
    )
    stream_grace_s: float = _opt(
        "On SIGTERM: how long open streams may go on before they are ended (within shutdown_grace_s).",
        group="server",
        default=10.0,
    )
    metrics_port: int = _opt("Port of the Prometheus /metrics HTTP endpoint (0 turns it off).", group="server", default=9400)

    # --- security ---
    tls_cert_file: str = _opt(
        "PEM server certificate (chain); TLS is on when this and tls_key_file are set. Re-read when the file changes.",
        group="security",
        default="",
    )
    tls_key_file: str = _opt("PEM private key of the server certificate.", group="security", default="")
    tls_client_ca_file: str = _opt(
        "PEM CA bundle for mutual TLS: clients must present a certificate it signed (refused at the handshake otherwise).",
        group="security",
        default="",
    )
    auth_tokens_file: str = _opt(
        "File of accepted bearer tokens, one per line (re-read when it changes); token auth is on when set.",
        group="security",
        default="",
    )
    auth_tokens: str = _opt(
        "Accepted bearer tokens, comma-separated (prefer auth_tokens_file: environments leak). Never logged.",
        group="security",
        default="",
    )
    admin_tokens_file: str = _opt(
        "File of admin bearer tokens (one per line) for the Admin service (ReloadModel); the Admin API is off without admin tokens.",
        group="security",
        default="",
    )
    admin_tokens: str = _opt("Admin bearer tokens, comma-separated (prefer admin_tokens_file). Never logged.", group="security", default="")
    auth_health_open: bool = _opt("With token auth on, leave the health service open (for probes).", group="security", default=True)
    auth_reflection_open: bool = _opt("With token auth on, leave server reflection open.", group="security", default=False)

    # --- streaming ---
    max_streams: int = _opt(
        "Most StreamingRecognize (and legacy StreamRecognize) streams open at once; more get RESOURCE_EXHAUSTED.",
        group="streaming",
        default=100,
    )
    stream_idle_timeout_s: float = _opt("A stream that sends no audio for this long ends with DEADLINE_EXCEEDED.", group="streaming", default=30.0)
    max_stream_seconds: float = _opt("Most audio in one stream; beyond it the stream ends with OUT_OF_RANGE.", group="streaming", default=4 * 3600.0)
    max_utterance_seconds: float = _opt(
        "An utterance with no endpoint for this long is finalized and a new one begins (bounds per-stream memory).",
        group="streaming",
        default=60.0,
    )
    legacy_max_upload_bytes: int = _opt(
        "Largest file accepted by the legacy ASRService/StreamRecognize (summed over its chunks).",
        group="streaming",
        default=64 * MIB,
    )

    # --- batching ---
    max_batch_size: int = _opt(
        "Most speech segments decoded in one engine call, and most transcripts punctuated in one pass (1 turns batching off).",
        group="batching",
        default=16,
    )
    max_batch_audio_seconds: float = _opt("Most audio (seconds, summed over a batch) in one engine call.", group="batching", default=300.0)
    max_batch_wait_ms: float = _opt("How long a batch waits for company once its first segment arrives.", group="batching", default=5.0)
    max_queue_items: int = _opt(
        "Most requests admitted but not yet answered; beyond it new ones get RESOURCE_EXHAUSTED.",
        group="batching",
        default=256,
    )
    max_queue_audio_seconds: float = _opt(
        "Most audio (seconds) admitted but not yet answered; beyond it new ones get RESOURCE_EXHAUSTED.",
        group="batching",
        default=4 * 3600.0,
    )
    max_queue_wait_seconds: float = _opt(
        "Refuse new requests (RESOURCE_EXHAUSTED) when the requests already admitted would take longer than this "
        "to answer, estimated from the recent time between answers given while others waited (Little's law). As the "
        "server slows down under a flood of calls, its queue shortens, so accepted requests keep their latency. "
        "Accepted requests wait about this long plus their own batch: set it to about half the latency "
        "clients can afford, and above the time one request of your longest kind takes. 0: no limit.",
        group="batching",
        default=0.0,
    )
    max_segment_seconds: float = _opt(
        "VAD segments longer than this are cut before decoding (bounds padding and memory).",
        group="batching",
        default=30.0,
    )

    # --- result cache ---
    cache_max_bytes: int = _opt(
        "In-memory result cache budget in bytes (0: no cache). Identical audio + settings skip the model.",
        group="cache",
        default=0,
    )
    cache_ttl_s: float = _opt("How long a cached result stays valid.", group="cache", default=3600.0)
    cache_redis_url: str = _opt(
        "Share the result cache between replicas in Redis (e.g. redis://redis:6379/0) instead of in memory.",
        group="cache",
        default="",
    )

    # --- logging ---
    log_level: str = _opt("Log level.", group="logging", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    log_format: str = _opt(
        "Log format: json, text, or auto (text on a terminal, json otherwise).",
        group="logging",
        default="auto",
        choices=("auto", "json", "text"),
    )

    # ---------------------------------------------------------------- derived
    @staticmethod
    def env_name(name: str) -> str:
        return "ASR_" + name.upper()

    @staticmethod
    def flag_name(name: str) -> str:
        return "--" + name.replace("_", "-")

    def validate(self) -> Settings:
        for f in fields(self):
            allowed = f.metadata["choices"]
            if allowed and getattr(self, f.name) not in allowed:
                raise ConfigError(f"{f.name} must be one of {', '.join(allowed)}, not {getattr(self, f.name)!r}")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, not {self.device!r}")
        positive = (
            "max_receive_message_bytes",
            "max_send_message_bytes",
            "max_audio_seconds",
            "max_batch_size",
            "max_batch_audio_seconds",
            "max_queue_items",
            "max_queue_audio_seconds",
            "max_segment_seconds",
            "download_timeout_s",
            "max_streams",
            "stream_idle_timeout_s",
            "max_stream_seconds",
            "max_utterance_seconds",
            "legacy_max_upload_bytes",
            "cache_ttl_s",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, not {getattr(self, name)}")
        for name in (
            "port",
            "metrics_port",
            "health_port",
            "max_batch_wait_ms",
            "max_queue_wait_seconds",
            "shutdown_grace_s",
            "stream_grace_s",
            "torch_threads",
            "max_concurrent_rpcs",
            "max_connection_age_s",
            "max_connection_age_grace_s",
            "keepalive_min_ping_interval_s",
            "cache_max_bytes",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative, not {getattr(self, name)}")
        if not 0.1 <= self.gil_switch_interval_ms <= 100:
            raise ConfigError(f"gil_switch_interval_ms must be 0.1 to 100 (Python's default is 5), not {self.gil_switch_interval_ms:g}")
        if not 0 <= self.inference_nice <= 19:
            raise ConfigError(f"inference_nice must be 0 (the server's priority) to 19, not {self.inference_nice}")
        for name in ("vad_processes", "stream_processes"):
            if getattr(self, name) < -1:
                raise ConfigError(f"{name} must be -1 (auto), 0 (in the server process) or a number of processes, not {getattr(self, name)}")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ConfigError("TLS needs both tls_cert_file and tls_key_file")
        if self.tls_client_ca_file and not self.tls_cert_file:
            raise ConfigError("mutual TLS (tls_client_ca_file) needs TLS: set tls_cert_file and tls_key_file")
        for name in ("port", "metrics_port", "health_port"):
            if getattr(self, name) > 65535:
                raise ConfigError(f"{name} must be below 65536, not {getattr(self, name)}")
        return self

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert_file)

    def public_dict(self) -> dict[str, Any]:
        """For the start-up log line: every setting, secrets masked."""
        values = dataclasses.asdict(self)
        for secret in ("auth_tokens", "admin_tokens"):
            if values[secret]:
                values[secret] = "<set>"
        values["cache_redis_url"] = re.sub(r"//[^@/]*@", "//<credentials>@", values["cache_redis_url"])
        return values


def _parse_value(kind: type, raw: str, name: str) -> Any:
    if kind is bool:
        low = raw.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(f"{name}: expected true/false, got {raw!r}")
    try:
        return kind(raw)
    except ValueError:
        raise ConfigError(f"{name}: expected {kind.__name__}, got {raw!r}") from None


def _field_type(f: dataclasses.Field) -> type:
    return {"str": str, "int": int, "float": float, "bool": bool}[str(f.type)]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per setting; defaults are left as None so we can tell 'not given' from 'given'."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in fields(Settings):
        group_name = f.metadata["group"]
        group = groups.setdefault(group_name, parser.add_argument_group(group_name))
        kind = _field_type(f)
        # argparse formats help with %: a literal one (a percentage) must be doubled.
        help_text = f"{f.metadata['help']} [env {Settings.env_name(f.name)}; default: {f.default}]".replace("%", "%%")
        if kind is bool:
            group.add_argument(Settings.flag_name(f.name), dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            group.add_argument(
                Settings.flag_name(f.name),
                dest=f.name,
                type=kind,
                default=None,
                choices=f.metadata["choices"],
                metavar=f.name.upper(),
                help=help_text,
            )


def load_settings(args: argparse.Namespace | None = None, environ: dict[str, str] | None = None) -> Settings:
    environ = dict(os.environ) if environ is None else environ
    values: dict[str, Any] = {}
    for f in fields(Settings):
        env = Settings.env_name(f.name)
        flag_value = getattr(args, f.name, None) if args is not None else None
        if flag_value is not None:
            values[f.name] = flag_value
        elif env in environ:
            values[f.name] = _parse_value(_field_type(f), environ[env], env)
    return Settings(**values).validate()


def reference_markdown() -> str:
    """docs/configuration.md: generated, so the reference cannot drift from the code."""
    lines = [
        "# Configuration reference",
        "",
        "Generated from `app/config.py` by `paraformer-asr config-reference`; do not edit by hand.",
        "Every setting can be given as a flag of `paraformer-asr serve` or as an environment variable;",
        "a flag wins over the variable. Booleans take `--flag` / `--no-flag`, or true/false in the environment.",
        "",
    ]
    current = None
    for f in fields(Settings):
        if f.metadata["group"] != current:
            if current is not None:
                lines.append("")
            current = f.metadata["group"]
            lines += [f"## {current}", "", "| flag | environment | default | meaning |", "| --- | --- | --- | --- |"]
        default = str(f.default).replace(str(Path.home()), "~") or "(empty)"
        lines.append(f"| `{Settings.flag_name(f.name)}` | `{Settings.env_name(f.name)}` | `{default}` | {f.metadata['help']} |")
    return "\n".join(lines) + "\n"


# Settings a model pipeline in models_config may set for itself.
PER_MODEL_SETTINGS = (
    "asr_model",
    "vad_model",
    "punc_model",
    "online_model",
    "model_revision",
    "device",
    "torch_threads",
    "vad_processes",
    "stream_processes",
    "model_processes",
    "allow_random_weights",
    "max_batch_size",
    "max_batch_audio_seconds",
    "max_batch_wait_ms",
    "max_queue_items",
    "max_queue_audio_seconds",
    "max_queue_wait_seconds",
    "max_segment_seconds",
    "cache_max_bytes",
    "cache_ttl_s",
)


def model_settings(settings: Settings) -> tuple[str, dict[str, Settings]]:
    """(default name, settings per named pipeline): from models_config, or the one pipeline of the flags."""
    if not settings.models_config:
        name = settings.model_name or ("demo-random-weights" if settings.demo else settings.asr_model.rstrip("/").rsplit("/", 1)[-1])
        return name, {name: dataclasses.replace(settings, model_name=name)}
    import yaml

    try:
        doc = yaml.safe_load(Path(settings.models_config).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read models_config {settings.models_config}: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("models"), dict) or not doc["models"]:
        raise ConfigError(f"models_config {settings.models_config} needs a 'models:' mapping of name -> settings")
    pipelines = {}
    for name, overrides in doc["models"].items():
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", str(name)):
            raise ConfigError(f"model name {name!r} in models_config: use letters, digits, '.', '_' or '-' (at most 64)")
        overrides = overrides or {}
        unknown = sorted(set(overrides) - set(PER_MODEL_SETTINGS))
        if unknown:
            raise ConfigError(f"model {name} in models_config sets {', '.join(unknown)}; allowed: {', '.join(PER_MODEL_SETTINGS)}")
        kinds = {f.name: _field_type(f) for f in fields(Settings)}
        values = {k: v if isinstance(v, kinds[k]) else _parse_value(kinds[k], str(v), f"{name}.{k}") for k, v in overrides.items()}
        pipelines[str(name)] = dataclasses.replace(settings, model_name=str(name), **values).validate()
    default = str(doc.get("default") or next(iter(pipelines)))
    if default not in pipelines:
        raise ConfigError(f"models_config default {default!r} is not one of {', '.join(pipelines)}")
    return default, pipelines
