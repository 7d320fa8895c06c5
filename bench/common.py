"""Shared pieces of the benchmark scripts: servers as subprocesses, the machine, statistics."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
# The installed entry point, or the module where the package is not installed (a bare GPU machine).
_SCRIPT = Path(sys.executable).with_name("paraformer-asr")
CLI = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "app.cli"]
DEFAULT_MODEL_CACHE = Path.home() / ".cache" / "paraformer-asr" / "bench-models"


# ---------------------------------------------------------------------------- machine
def machine_info() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gib = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    versions = {}
    for name in ("torch", "funasr", "grpc", "numpy"):
        try:
            module = __import__(name)
            versions[name] = getattr(module, "__version__", "?")
        except ImportError:
            versions[name] = None
    gpu = None
    with contextlib.suppress(Exception):
        import torch

        if torch.cuda.is_available():
            gpu = f"{torch.cuda.get_device_name(0)} ({torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB)"
    commit, dirty = None, None
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "app"], capture_output=True, text=True, check=True).stdout
        dirty = bool(status.strip())
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": cpu,
        "memory_gib": mem_gib,
        "gpu": gpu,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "git_commit": commit,
        "app_has_uncommitted_changes": dirty,
        "loadavg_at_start": os.getloadavg(),
    }


def command_line(module: str | None = None) -> str:
    """How this run was started, as one would type it in the repository root."""
    exe = sys.executable
    if "/.venv/bin/" in exe:
        exe = ".venv/bin/" + exe.rsplit("/.venv/bin/", 1)[1]
    head = [exe, "-m", module] if module else [exe, sys.argv[0]]
    return shlex.join([*head, *sys.argv[1:]])


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants alive now (the server's worker processes are its children)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def cpu_list(text: str | None) -> frozenset[int] | None:
    """'0', '0,1' or '0-3' as a set of core numbers; empty for none."""
    if not text:
        return None
    cpus: set[int] = set()
    for part in text.split(","):
        low, _, high = part.partition("-")
        cpus.update(range(int(low), int(high or low) + 1))
    return frozenset(cpus)


def pin_this_process(cpus: frozenset[int]) -> None:
    """Every thread of this process onto ``cpus`` (sched_setaffinity(0) moves only the calling thread)."""
    for task in os.listdir("/proc/self/task"):
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(task), cpus)


def machine_busy_seconds() -> float:
    """CPU time the whole machine spent busy (all processes, all cores), from /proc/stat."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------- models
@dataclass(frozen=True)
class ModelDirs:
    asr: Path
    vad: Path
    punc: Path


def ensure_models(kind: str, cache: Path | None = None) -> ModelDirs:
    """tiny / large random-weight models, built once into the cache (never into the repo)."""
    root = (cache or DEFAULT_MODEL_CACHE) / kind
    dirs = ModelDirs(root / "asr", root / "vad", root / "punc")
    if not all((d / "config.yaml").exists() for d in (dirs.asr, dirs.vad, dirs.punc)):
        cmd = [*CLI, "build-demo-models", str(root)] + (["--large"] if kind == "large" else [])
        print(f"building {kind} models: {shlex.join(cmd)}", flush=True)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=source_env())
    repair_token_list(dirs.asr / "tokens.json")
    return dirs


def repair_token_list(path: Path) -> int:
    """Make the demo vocabulary's symbols unique (FunASR refuses duplicates at load time).

    build-demo-models --large fills its 8404-symbol vocabulary with consecutive CJK code points
    that can repeat the common characters it starts with. Which symbols a random model prints
    does not change its speed, so the benchmark swaps each repeat for an unused code point.
    """
    import json

    tokens = json.loads(path.read_text(encoding="utf-8"))
    seen: set[str] = set()
    spare = (chr(c) for c in range(0x4E00, 0xA000) if chr(c) not in set(tokens))
    fixed = 0
    for i, t in enumerate(tokens):
        if t in seen:
            tokens[i] = next(spare)
            fixed += 1
        seen.add(tokens[i])
    if fixed:
        path.write_text(json.dumps(tokens, ensure_ascii=False), encoding="utf-8")
        print(f"{path}: replaced {fixed} repeated symbols so that FunASR loads the vocabulary", flush=True)
    return fixed


def source_env() -> dict[str, str]:
    """Servers run the same source tree as this script (also from a git worktree)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def model_dirs(path: Path) -> ModelDirs:
    return ModelDirs(path / "asr", path / "vad", path / "punc")


# ---------------------------------------------------------------------------- servers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """`paraformer-asr serve` in a subprocess, with a metrics port for batch statistics."""

    name: str
    models: ModelDirs
    flags: dict[str, object]
    port: int = 0
    metrics_port: int = 0
    process: subprocess.Popen | None = None
    log_path: Path | None = None
    startup_s: float = 0.0
    exit_code: int | None = None
    argv: list[str] = field(default_factory=list)
    device: str = "cpu"
    cpus: frozenset[int] | None = None  # pinned to these cores with its worker processes (they inherit it)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        argv = [
            *CLI, "serve",
            "--asr-model", str(self.models.asr), "--vad-model", str(self.models.vad), "--punc-model", str(self.models.punc),
            "--allow-random-weights", "--host", "127.0.0.1", "--port", str(self.port),
            "--metrics-port", str(self.metrics_port), "--device", self.device, "--log-level", "WARNING", "--log-format", "text",
        ]  # fmt: skip
        for flag, value in self.flags.items():
            name = flag.replace("_", "-")
            if str(value).lower() in ("true", "false"):  # a switch: --name / --no-name
                argv.append(f"--{name}" if str(value).lower() == "true" else f"--no-{name}")
            else:
                argv += [f"--{name}", str(value)]
        return argv

    def display_command(self) -> str:
        """The command with stable placeholders instead of the ports picked at run time."""
        argv = ["paraformer-asr", *self.command()[len(CLI) :]]
        for i, arg in enumerate(argv):
            if argv[i - 1] == "--port":
                argv[i] = "PORT"
            elif argv[i - 1] == "--metrics-port":
                argv[i] = "MPORT"
            elif arg.startswith(str(Path.home())):
                argv[i] = "~" + arg[len(str(Path.home())) :]
        return shlex.join(argv)

    def start(self) -> Server:
        self.port, self.metrics_port = free_port(), free_port()
        self.argv = self.command()
        fd, log = tempfile.mkstemp(prefix=f"bench-{self.name}-", suffix=".log")
        self.log_path = Path(log)
        # Pinned before exec: the server sizes its thread and worker pools by the cores it may use.
        pin = (lambda: os.sched_setaffinity(0, self.cpus)) if self.cpus else None
        self.process = subprocess.Popen(self.argv, stdout=fd, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=source_env(), preexec_fn=pin)
        os.close(fd)
        return self

    def wait_ready(self, timeout: float = 600.0) -> Server:
        start = time.perf_counter()
        deadline = start + timeout
        while time.perf_counter() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server {self.name} exited with {self.process.returncode}: {self.log_tail()}")
            rc = subprocess.run([*CLI, "health", "--target", self.target], capture_output=True).returncode
            if rc == 0:
                self.startup_s = time.perf_counter() - start
                return self
            time.sleep(0.5)
        raise TimeoutError(f"server {self.name} not ready after {timeout:.0f} s: {self.log_tail()}")

    def stop(self, timeout: float = 60.0) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            self.exit_code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.exit_code = self.process.wait()
        return self.exit_code

    def cpu_seconds(self, main_only: bool = False) -> float:
        """User + system CPU time so far of the server process and its live worker processes (VAD,
        models, streams); with ``main_only`` of the server process alone, the one whose GIL serves gRPC."""
        if self.process is None:
            return 0.0
        total = 0
        for pid in [self.process.pid] if main_only else process_tree(self.process.pid):
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except (OSError, AttributeError):
            return ""

    def scrape(self) -> dict[str, float]:
        """Sums of the batch-size and batch-duration histograms, for per-point differences."""
        from prometheus_client.parser import text_string_to_metric_families

        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()
        except OSError:
            return {}
        wanted = {
            "asr_batch_size_sum": "batch_segments", "asr_batch_size_count": "batches",
            "asr_batch_duration_seconds_sum": "engine_busy_s", "asr_rejected_total": "rejected",
        }  # fmt: skip
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                for suffix, key in wanted.items():
                    if sample.name.endswith(suffix):
                        out[key] = out.get(key, 0.0) + sample.value
                if sample.name.endswith("asr_rejected_total"):  # by reason: queue_full, queue_wait, queue_audio
                    reason = f"rejected_{sample.labels.get('reason')}"
                    out[reason] = out.get(reason, 0.0) + sample.value
                # Server-side time of refused RPCs (interceptor in to out): excludes the client and the network.
                if sample.labels.get("code") == "RESOURCE_EXHAUSTED" and sample.name.endswith("request_duration_seconds_bucket"):
                    if sample.labels.get("le") == "0.01":
                        out["rejected_within_10ms_server"] = out.get("rejected_within_10ms_server", 0.0) + sample.value
                elif sample.labels.get("code") == "RESOURCE_EXHAUSTED" and sample.name.endswith("request_duration_seconds_count"):
                    out["rejected_server"] = out.get("rejected_server", 0.0) + sample.value
                elif sample.labels.get("code") == "RESOURCE_EXHAUSTED" and sample.name.endswith("request_duration_seconds_sum"):
                    out["rejected_server_seconds"] = out.get("rejected_server_seconds", 0.0) + sample.value
                # The server's garbage-collector pauses by generation: count, total, and how many under 50 ms.
                if "gc_pause_seconds" in sample.name:
                    gen = sample.labels.get("generation")
                    if sample.name.endswith("_count"):
                        out[f"gc{gen}_count"] = sample.value
                    elif sample.name.endswith("_sum"):
                        out[f"gc{gen}_seconds"] = sample.value
                    elif sample.labels.get("le") == "0.05":
                        out[f"gc{gen}_within_50ms"] = sample.value
        return out


# ---------------------------------------------------------------------------- results
def write_json(path: Path, obj) -> None:
    """Write a result file readably but compactly: one line per list of numbers or strings.

    ``indent`` alone puts every number of an overload timeline (thousands of
    [sent_s, latency_ms, code] rows) on a line of its own: 800 KB per run.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(_json_lines(obj, 0) + "\n", encoding="utf-8")
    tmp.replace(path)


def _json_lines(obj, depth: int) -> str:
    def flat(value) -> bool:
        return not isinstance(value, dict | list) or (isinstance(value, list) and all(not isinstance(v, dict | list) for v in value))

    if isinstance(obj, dict) and obj:
        pad = " " * (depth + 1)
        items = [f"{pad}{json.dumps(str(k), ensure_ascii=False)}: {_json_lines(v, depth + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * depth + "}"
    if isinstance(obj, list) and obj and not flat(obj):
        pad = " " * (depth + 1)
        return "[\n" + ",\n".join(pad + _json_lines(v, depth + 1) for v in obj) + "\n" + " " * depth + "]"
    return json.dumps(obj, ensure_ascii=False)


# ---------------------------------------------------------------------------- statistics
def percentiles_ms(latencies_s: list[float]) -> dict[str, float | None]:
    if not latencies_s:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "mean_ms": None, "max_ms": None}
    a = np.asarray(latencies_s) * 1000.0
    return {
        "p50_ms": round(float(np.percentile(a, 50)), 2),
        "p95_ms": round(float(np.percentile(a, 95)), 2),
        "p99_ms": round(float(np.percentile(a, 99)), 2),
        "mean_ms": round(float(a.mean()), 2),
        "max_ms": round(float(a.max()), 2),
    }


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 3)


def fmt(value, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(headers: list[str], rows: list[list]) -> str:
    cells = [[str(h) for h in headers]] + [[fmt(v) if not isinstance(v, str) else v for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|")
    return "\n".join(lines)


def run_async(coro):
    return asyncio.run(coro)
