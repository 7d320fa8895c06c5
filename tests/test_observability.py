"""Observability, checked for real: metrics, GPU collector, dashboard, alert rules, access logs.

The integration tests start the real server with tiny models, send traffic over gRPC, let a
real Prometheus (from Debian's package, installed by scripts/install-prometheus.sh) scrape it
on loopback, and run every dashboard query through Prometheus' HTTP API. Unit tests at the top
cover the GPU collector with fakes (this machine has no GPU) and the dashboard's structure.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import io
import json
import logging
import math
import os
import re
import socket
import subprocess
import sys
import threading
import time
import types
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import yaml
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from app import logging_setup, metrics
from app.gen import asr_service_pb2, asr_service_pb2_grpc
from app.gen.paraformer.asr.v1 import asr_pb2, asr_pb2_grpc
from tests.helpers import ServerThread, encode, settings_for, utterances

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / ".tools" / "bin"
DASHBOARD = ROOT / "monitoring" / "grafana" / "paraformer-asr.json"
ALERTS = ROOT / "monitoring" / "prometheus" / "alerts.yaml"
ALERT_TESTS = ROOT / "monitoring" / "prometheus" / "alerts_test.yaml"

GPU_PREFIX = "paraformer_asr_gpu_"
METRIC_NAME = re.compile(r"\bparaformer_asr_[a-z0-9_]+\b")
JOB = "paraformer-asr"
POD = "paraformer-asr-test-0"

# Labels the service may put on its series (plus `le` of histograms). Anything else, above all a
# request id or a peer address, would make the number of series grow with traffic.
ALLOWED_LABELS = {"rpc", "code", "model", "role", "reason", "device", "le", "version", "grpcio", "python", "outcome", "generation"}


# ====================================================================== helpers


def tool(name: str) -> Path:
    """A binary from .tools/bin; a missing one fails the test with the command that installs it."""
    path = TOOLS / name
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(f"{path} is missing: run bash scripts/install-prometheus.sh", pytrace=False)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.25):
    """Poll until predicate() is truthy (and return it); fail after timeout seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except Exception as error:  # e.g. connection refused while a server starts
            last_error = error
        else:
            if value:
                return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}" + (f" (last error: {last_error})" if last_error else ""))


def http_get(url: str, timeout: float = 10) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_targets() -> list[tuple[str, str, dict]]:
    """(panel title, refId, target) of every query of every panel, rows included."""
    out = []

    def walk(panels):
        for panel in panels:
            for t in panel.get("targets", []):
                out.append((panel["title"], t.get("refId", "?"), t))
            walk(panel.get("panels", []))

    walk(dashboard()["panels"])
    return out


def concrete(expr: str, rate_interval: str = "1m", time_range: str = "1h") -> str:
    """A dashboard query as Grafana would send it: variables substituted, $__ intervals filled in."""
    expr = re.sub(r"\$\{?(pod|instance|model)\}?", ".*", expr)
    expr = expr.replace("$__rate_interval", rate_interval).replace("${__rate_interval}", rate_interval)
    expr = expr.replace("$__range", time_range).replace("${__range}", time_range)
    expr = expr.replace("$__interval", "15s").replace("${__interval}", "15s")
    assert "$" not in expr, f"unsubstituted variable in {expr}"
    return expr


def alert_rules() -> list[dict]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def referenced_metrics() -> dict[str, set[str]]:
    """Metric (sample) names used by the dashboard and by the alert rules."""
    board = set()
    for _, _, t in dashboard_targets():
        board |= set(METRIC_NAME.findall(t["expr"]))
    for var in dashboard()["templating"]["list"]:
        if var["type"] == "query":
            board |= set(METRIC_NAME.findall(var["definition"]))
    rules = set()
    for rule in alert_rules():
        rules |= set(METRIC_NAME.findall(rule["expr"]))
    return {"dashboard": board, "alerts": rules}


def defined_sample_names() -> set[str]:
    """Every sample name app.metrics can expose (GPU collector included), from the definitions."""
    suffixes = {
        "counter": ("_total", "_created"),
        "gauge": ("",),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "info": ("_info",),
        "summary": ("", "_sum", "_count", "_created"),
    }
    names = set()
    collectors = [v for v in vars(metrics).values() if not isinstance(v, type) and callable(getattr(v, "describe", None))]
    for collector in collectors:
        for family in collector.describe():
            names |= {family.name + s for s in suffixes[family.type]}
    return names


# ====================================================================== fake GPUs (unit tests)


class FakeCuda:
    """Just enough of torch.cuda for the collector; get_device_properties refuses an uninitialised CUDA."""

    def __init__(self, initialized: bool = True, devices: int = 2, fail: bool = False, in_use: int | None = None):
        self.initialized = initialized
        self.devices = devices
        self.fail = fail
        self.in_use = devices if in_use is None else in_use  # devices this process holds memory on

    def is_initialized(self) -> bool:
        return self.initialized

    def is_available(self) -> bool:
        return True

    def device_count(self) -> int:
        return self.devices

    def get_device_properties(self, index: int):
        if not self.initialized:
            raise AssertionError("the collector would have initialised CUDA")
        return types.SimpleNamespace(total_memory=80_000_000_000 + index, uuid=f"0000000{index}-aaaa-bbbb-cccc-dddddddddddd")

    def memory_allocated(self, index: int) -> int:
        if self.fail:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return 1_000_000 * (index + 1)

    def memory_reserved(self, index: int) -> int:
        return 2_000_000 * (index + 1) if index < self.in_use else 0

    def mem_get_info(self, index: int) -> tuple[int, int]:
        if index >= self.in_use:
            raise AssertionError(f"the collector would have created a CUDA context on cuda:{index}")
        return 30_000_000_000, 80_000_000_000 + index  # (free, total): a context and other processes use the rest


def fake_pynvml(utilization: dict[str, int]) -> types.ModuleType:
    """pynvml with devices enumerated in the opposite order to CUDA's (as NVML's PCI order can be)."""
    module = types.ModuleType("pynvml")
    uuids = list(reversed(utilization))
    module.nvmlInit = lambda: None
    module.nvmlDeviceGetCount = lambda: len(uuids)
    module.nvmlDeviceGetHandleByIndex = lambda i: uuids[i]
    # Old bindings return bytes, new ones str: give one of each.
    module.nvmlDeviceGetUUID = lambda handle: f"GPU-{handle}".encode() if uuids.index(handle) % 2 else f"GPU-{handle}"
    module.nvmlDeviceGetUtilizationRates = lambda handle: types.SimpleNamespace(gpu=utilization[handle], memory=0)
    return module


def samples_of(families) -> dict[tuple[str, str], float]:
    return {(s.name, s.labels["device"]): s.value for f in families for s in f.samples}


# ====================================================================== unit tests: GPU collector


def test_gpu_collector_yields_nothing_on_this_cpu_machine_and_leaves_cuda_alone():
    import torch

    if torch.cuda.is_initialized():  # a GPU machine where another test put CUDA to work
        assert all(f.name.startswith(GPU_PREFIX) for f in metrics.GPU_COLLECTOR.collect())
        return
    families = list(metrics.GPU_COLLECTOR.collect())  # must not raise
    assert families == []
    assert not torch.cuda.is_initialized(), "the collector initialised CUDA"
    exposition = generate_latest(REGISTRY).decode()
    assert GPU_PREFIX not in exposition


def test_gpu_collector_is_registered_once():
    metrics.register_gpu_collector()  # a second registration is a no-op, not an error
    metrics.register_gpu_collector()
    registered = [c for c in list(REGISTRY._collector_to_names) if isinstance(c, metrics.GpuCollector)]
    assert registered == [metrics.GPU_COLLECTOR]


def test_gpu_collector_without_torch_or_before_cuda_is_initialised(monkeypatch):
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    assert list(metrics.GpuCollector().collect()) == []
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=FakeCuda(initialized=False)))
    assert list(metrics.GpuCollector().collect()) == []


def test_gpu_collector_reports_memory_and_maps_nvml_utilization_by_uuid(monkeypatch):
    cuda = FakeCuda(devices=2)
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
    monkeypatch.setitem(
        sys.modules,
        "pynvml",
        fake_pynvml({"00000000-aaaa-bbbb-cccc-dddddddddddd": 37, "00000001-aaaa-bbbb-cccc-dddddddddddd": 90}),
    )
    families = list(metrics.GpuCollector().collect())
    assert sorted(f.name for f in families) == sorted(
        [
            "paraformer_asr_gpu_memory_allocated_bytes",
            "paraformer_asr_gpu_memory_reserved_bytes",
            "paraformer_asr_gpu_memory_used_bytes",
            "paraformer_asr_gpu_memory_total_bytes",
            "paraformer_asr_gpu_utilization_ratio",
        ]
    )
    assert all(f.type == "gauge" for f in families)
    values = samples_of(families)
    assert values[("paraformer_asr_gpu_memory_allocated_bytes", "cuda:1")] == 2_000_000
    assert values[("paraformer_asr_gpu_memory_reserved_bytes", "cuda:0")] == 2_000_000
    assert values[("paraformer_asr_gpu_memory_total_bytes", "cuda:1")] == 80_000_000_001
    assert values[("paraformer_asr_gpu_memory_used_bytes", "cuda:1")] == 50_000_000_001
    assert values[("paraformer_asr_gpu_utilization_ratio", "cuda:0")] == pytest.approx(0.37)
    assert values[("paraformer_asr_gpu_utilization_ratio", "cuda:1")] == pytest.approx(0.90)


def test_gpu_collector_adds_what_worker_processes_report(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=FakeCuda(devices=2)))
    collector = metrics.GpuCollector()
    owner = object()
    collector.add_worker_memory(owner, lambda: {"cuda:1": (500.0, 700.0)})
    collector.add_worker_memory(object(), lambda: {"cuda:1": (5.0, 7.0), "cuda:0": (1.0, 1.0)})
    values = samples_of(collector.collect())
    assert values[("paraformer_asr_gpu_memory_allocated_bytes", "cuda:1")] == 2_000_000 + 505
    assert values[("paraformer_asr_gpu_memory_reserved_bytes", "cuda:1")] == 4_000_000 + 707
    assert values[("paraformer_asr_gpu_memory_allocated_bytes", "cuda:0")] == 1_000_001
    collector.remove_worker_memory(owner)
    assert samples_of(collector.collect())[("paraformer_asr_gpu_memory_allocated_bytes", "cuda:1")] == 2_000_005


def test_gpu_collector_reports_the_workers_memory_when_this_process_has_no_cuda(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=FakeCuda(initialized=False)))
    collector = metrics.GpuCollector()
    collector.add_worker_memory(object(), lambda: {"cuda:0": (3.0, 8.0)})
    collector.add_worker_memory(object(), lambda: {})  # a worker that has reported nothing yet
    values = samples_of(collector.collect())  # and CUDA is still not initialised here (FakeCuda would raise)
    assert values == {("paraformer_asr_gpu_memory_allocated_bytes", "cuda:0"): 3.0, ("paraformer_asr_gpu_memory_reserved_bytes", "cuda:0"): 8.0}


def test_gpu_collector_without_nvml_reports_memory_only(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=FakeCuda(devices=1)))
    monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` raises ImportError
    families = list(metrics.GpuCollector().collect())
    assert {f.name for f in families} == {
        "paraformer_asr_gpu_memory_allocated_bytes",
        "paraformer_asr_gpu_memory_reserved_bytes",
        "paraformer_asr_gpu_memory_used_bytes",
        "paraformer_asr_gpu_memory_total_bytes",
    }


def test_gpu_collector_reads_device_wide_memory_only_where_the_server_holds_some(monkeypatch):
    """Asking an unused device for its free memory would create a CUDA context there."""
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=FakeCuda(devices=3, in_use=1)))
    monkeypatch.setitem(sys.modules, "pynvml", None)
    collector = metrics.GpuCollector()
    values = samples_of(collector.collect())
    assert values[("paraformer_asr_gpu_memory_used_bytes", "cuda:0")] == 50_000_000_000
    assert ("paraformer_asr_gpu_memory_used_bytes", "cuda:2") not in values
    assert values[("paraformer_asr_gpu_memory_reserved_bytes", "cuda:2")] == 0
    # Nor on a device that only a worker process uses: this process has no context there.
    collector.add_worker_memory(object(), lambda: {"cuda:2": (1.0, 5.0)})
    values = samples_of(collector.collect())
    assert values[("paraformer_asr_gpu_memory_reserved_bytes", "cuda:2")] == 5.0
    assert ("paraformer_asr_gpu_memory_used_bytes", "cuda:2") not in values


def test_gpu_collector_swallows_cuda_and_nvml_errors(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=FakeCuda(fail=True)))
    broken = types.ModuleType("pynvml")

    def nvml_init():
        raise OSError("NVML Shared Library Not Found")

    broken.nvmlInit = nvml_init
    monkeypatch.setitem(sys.modules, "pynvml", broken)
    collector = metrics.GpuCollector()
    with caplog.at_level(logging.WARNING, logger="app.metrics.gpu"):
        assert list(collector.collect()) == []
        assert list(collector.collect()) == []
    assert [r.getMessage() for r in caplog.records].count("GPU metrics unavailable: CUDA error: an illegal memory access was encountered") == 1
    # NVML failing alone still leaves the memory series.
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=FakeCuda()))
    names = {f.name for f in metrics.GpuCollector().collect()}
    assert "paraformer_asr_gpu_memory_total_bytes" in names and "paraformer_asr_gpu_utilization_ratio" not in names


# ====================================================================== unit tests: dashboard and rules


def test_dashboard_is_importable_grafana_json():
    board = dashboard()
    assert board["schemaVersion"] >= 39
    assert board["uid"] and board["title"] and board.get("id") is None
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for name in ("pod", "instance", "model"):
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert variables[name]["includeAll"] and variables[name]["allValue"] == ".*"
    ids, cells = set(), set()
    for panel in board["panels"]:
        assert panel["id"] not in ids, f"duplicate panel id {panel['id']}"
        ids.add(panel["id"])
        assert panel.get("title"), panel
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"panel {panel['title']!r} overlaps another"
                cells.add((x, y))
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert panel["targets"], panel["title"]
            for t in panel["targets"]:
                assert t["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
                assert 'pod=~"$pod"' in t["expr"] and 'instance=~"$instance"' in t["expr"], f"{panel['title']}: not filtered by pod/instance"
    titles = " / ".join(p["title"] for p in board["panels"]).lower()
    for topic in ("requests", "errors", "latency", "real-time factor", "audio", "in-flight", "queue", "streams", "rejections", "batch size", "gpu memory",
                  "gpu utilization", "load", "ready", "by pod"):  # fmt: skip
        assert topic in titles, f"no panel about {topic}"


def test_dashboard_and_alerts_use_only_defined_metrics():
    defined = defined_sample_names()
    for where, names in referenced_metrics().items():
        assert names, where
        assert names <= defined, f"{where} uses metrics that app/metrics.py does not define: {sorted(names - defined)}"


def test_alert_rules_have_severity_summary_description_and_for():
    rules = alert_rules()
    assert {r["alert"] for r in rules} >= {
        "ParaformerAsrHighErrorRate",
        "ParaformerAsrHighLatencyP99",
        "ParaformerAsrOverloadRejections",
        "ParaformerAsrQueueSaturated",
        "ParaformerAsrModelNotReady",
        "ParaformerAsrGpuMemoryNearLimit",
    }
    tested = {t["alertname"] for case in yaml.safe_load(ALERT_TESTS.read_text())["tests"] for t in case["alert_rule_test"]}
    for rule in rules:
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
        assert re.fullmatch(r"\d+m", rule["for"]) and int(rule["for"][:-1]) >= 5, f"{rule['alert']}: a short `for:` flaps"
        assert rule["alert"] in tested, f"{rule['alert']} has no promtool unit test"


# ====================================================================== promtool (integration)


@pytest.mark.integration
def test_promtool_checks_and_unit_tests_the_alert_rules():
    promtool = tool("promtool")
    check = subprocess.run([promtool, "check", "rules", ALERTS], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in check.stdout
    unit = subprocess.run([promtool, "test", "rules", ALERT_TESTS.name], cwd=ALERT_TESTS.parent, capture_output=True, text=True, timeout=120)
    assert unit.returncode == 0, unit.stdout + unit.stderr
    assert "SUCCESS" in unit.stdout


@pytest.mark.integration
def test_every_dashboard_query_parses_with_promtool(tmp_path):
    """Offline: each query, as Grafana sends it, compiles as a recording rule."""
    rules = [{"record": f"dashboard_query_{i}", "expr": concrete(t["expr"])} for i, (_, _, t) in enumerate(dashboard_targets())]
    path = tmp_path / "dashboard_rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    check = subprocess.run([tool("promtool"), "check", "rules", path], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.integration
def test_gpu_exposition_passes_promtool_check_metrics(monkeypatch):
    """No GPU here: a fake one shows that the GPU series are well named and typed."""
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=FakeCuda(devices=2)))
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml({"00000000-aaaa-bbbb-cccc-dddddddddddd": 5, "00000001-aaaa-bbbb-cccc-dddddddddddd": 50}))
    registry = CollectorRegistry()
    registry.register(metrics.GpuCollector())
    text = generate_latest(registry)
    assert text.count(b"paraformer_asr_gpu_") >= 12
    check = subprocess.run([tool("promtool"), "check", "metrics"], input=text, capture_output=True, timeout=60)
    assert check.returncode == 0 and not check.stdout.strip() and not check.stderr.strip(), (check.stdout + check.stderr).decode()


# ====================================================================== the real thing: server + traffic + Prometheus

SPEECH = utterances(("silence", 0.2), ("speech", 1.5), ("silence", 0.2))
CONCURRENT = 12
QUEUE_LIMIT = 6  # below CONCURRENT: a burst gets some requests refused for overload


def v1_request(content: bytes) -> asr_pb2.RecognizeRequest:
    return asr_pb2.RecognizeRequest(audio=asr_pb2.RecognitionAudio(content=content))


@dataclass
class Observed:
    server: ServerThread
    metrics_url: str
    prometheus_url: str
    scrape: str
    request_ids: list[str]

    def query(self, expr: str) -> dict:
        url = f"{self.prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            body = http_get(url)
        except urllib.error.HTTPError as error:  # 400: the query does not parse
            return json.loads(error.read())
        return json.loads(body)


class Prometheus:
    """A real Prometheus on loopback, configured in a temp dir, stopped at the end."""

    def __init__(self, binary: Path, workdir: Path, target: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ALERTS)],
            "scrape_configs": [
                {
                    "job_name": JOB,
                    # What a Kubernetes ServiceMonitor adds: namespace and pod labels.
                    "static_configs": [{"targets": [target], "labels": {"pod": POD, "namespace": "test"}}],
                }
            ],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = workdir / "prometheus.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    binary,
                    f"--config.file={workdir / 'prometheus.yml'}",
                    f"--storage.tsdb.path={workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=workdir,
            )

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def wait_ready(self, timeout: float = 30) -> None:
        def ready():
            if self.proc.poll() is not None:
                pytest.fail(f"prometheus exited with {self.proc.returncode}:\n{self.log_tail()}")
            return http_get(f"{self.url}/-/ready", timeout=2)

        wait_for(ready, timeout, "prometheus to be ready")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def drive_traffic(target: str, wave: int, request_ids: list[str]) -> None:
    """Good, bad, concurrent (batches and overload), legacy and deadline-exceeded calls."""
    with grpc.insecure_channel(target) as channel:
        v1 = asr_pb2_grpc.RecognizerStub(channel)
        legacy = asr_service_pb2_grpc.ASRServiceStub(channel)
        for i in range(2):
            rid = f"obs-wave{wave}-good-{i}"
            request_ids.append(rid)
            assert v1.Recognize(v1_request(encode(SPEECH)), metadata=[("x-request-id", rid)], timeout=60).transcript
        with pytest.raises(grpc.RpcError) as bad:
            v1.Recognize(v1_request(b"\x01\x02garbage" * 50), timeout=60)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        # A burst: the admitted requests share batches, the rest are refused for overload.
        barrier = threading.Barrier(CONCURRENT)

        def one(i: int) -> grpc.StatusCode:
            audio = encode(utterances(("silence", 0.1), ("speech", 0.6 + 0.1 * i), ("silence", 0.1), seed=i))
            barrier.wait(10)
            try:
                v1.Recognize(v1_request(audio), timeout=60)
            except grpc.RpcError as error:
                return error.code()
            return grpc.StatusCode.OK

        with concurrent.futures.ThreadPoolExecutor(CONCURRENT) as pool:
            codes = list(pool.map(one, range(CONCURRENT)))
        assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
        assert codes.count(grpc.StatusCode.OK) >= 2 and grpc.StatusCode.RESOURCE_EXHAUSTED in codes, codes

        # Two live streams side by side: their streaming-model steps go through the step batchers.
        pcm = (SPEECH * 32767).astype("<i2").tobytes()

        def stream(_: int) -> list:
            def requests():
                config = asr_pb2.RecognitionConfig(encoding=asr_pb2.AUDIO_ENCODING_LINEAR16, sample_rate_hertz=16000)
                yield asr_pb2.StreamingRecognizeRequest(streaming_config=asr_pb2.StreamingRecognitionConfig(config=config, interim_results=True))
                for i in range(0, len(pcm), 3200):
                    time.sleep(0.005)
                    yield asr_pb2.StreamingRecognizeRequest(audio_content=pcm[i : i + 3200])

            return list(v1.StreamingRecognize(requests(), timeout=60))

        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            streams = list(pool.map(stream, range(2)))
        assert all(any(r.results and r.results[0].is_final for r in responses) for responses in streams)

        reply = legacy.Recognize(asr_service_pb2.AudioRequest(audio_data=encode(SPEECH), format="wav"), timeout=60)
        assert reply.success
        reply = legacy.Recognize(asr_service_pb2.AudioRequest(audio_data=b"not audio" * 20, format="mp3"), timeout=60)
        assert not reply.success
        data = encode(SPEECH)
        chunks = (asr_service_pb2.AudioChunk(data=data[i : i + 4096], is_final=i + 4096 >= len(data)) for i in range(0, len(data), 4096))
        assert legacy.StreamRecognize(chunks, timeout=60).success

        # A deadline that passes while the request waits behind a long one (for the VAD thread or
        # the batching window): it is dropped before the model.
        companion = v1.Recognize.future(v1_request(encode(utterances(("speech", 180.0), seed=5))), timeout=300)
        time.sleep(0.05)
        with pytest.raises(grpc.RpcError) as late:
            v1.Recognize(v1_request(encode(SPEECH)), timeout=0.15)
        assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        companion.result()


def scraped_total(metrics_url: str) -> float:
    text = http_get(metrics_url).decode()
    return sum(s.value for f in text_string_to_metric_families(text) if f.name == "paraformer_asr_requests" for s in f.samples if s.name.endswith("_total"))


@pytest.fixture(scope="module")
def observed(tiny_models, tmp_path_factory):
    promtool, prometheus_bin = tool("promtool"), tool("prometheus")
    assert promtool
    metrics_port = free_port()
    server = ServerThread(
        settings_for(
            tiny_models,
            metrics_port=metrics_port,
            max_batch_wait_ms=300,  # long enough for batches to form and for a short deadline to pass
            max_queue_items=QUEUE_LIMIT,
        )
    ).start()
    prometheus = None
    try:
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        prometheus = Prometheus(prometheus_bin, tmp_path_factory.mktemp("prometheus"), f"127.0.0.1:{metrics_port}")
        prometheus.wait_ready()

        def target_up():
            targets = json.loads(http_get(f"{prometheus.url}/api/v1/targets"))["data"]["activeTargets"]
            return targets and all(t["health"] == "up" for t in targets)

        wait_for(target_up, 30, f"prometheus to scrape the server:\n{prometheus.log_tail()}")
        observed = Observed(server, metrics_url, prometheus.url, "", [])

        def prometheus_caught_up():
            want = scraped_total(metrics_url)
            result = observed.query(f'sum(paraformer_asr_requests_total{{job="{JOB}"}})')["data"]["result"]
            return result and float(result[0]["value"][1]) == want

        # Two waves, scraped in between: every series exists before the second one, so rates are > 0.
        for wave in (1, 2):
            drive_traffic(server.target, wave, observed.request_ids)
            wait_for(prometheus_caught_up, 30, f"prometheus to scrape wave {wave}")
        time.sleep(2.5)  # a few more scrapes, and the alert rules evaluated on them
        observed.scrape = http_get(metrics_url).decode()
        yield observed
    finally:
        if prometheus is not None:
            prometheus.stop()
        server.stop()


@pytest.mark.integration
def test_traffic_formed_batches_and_dropped_a_late_segment(observed):
    stats = observed.server.pipeline.scheduler.stats
    assert stats.largest_batch > 1, "concurrent requests should have shared an engine call"
    # Where it was dropped (waiting for the VAD thread, or in the batch queue) depends on timing;
    # that it never reached the ASR model and was counted does not.
    dropped = sum(metrics.DROPPED_BEFORE_MODEL.labels("tiny", reason)._value.get() for reason in ("deadline", "cancelled"))
    assert dropped >= 1, "the request whose deadline passed before the model should have been counted as dropped"


@pytest.mark.integration
def test_garbage_collector_pauses_are_on_the_scrape(observed):
    """Loading ends in one full collection (then the models are frozen out of the collector): it was timed."""
    counts = {g: float(n) for g, n in re.findall(r'paraformer_asr_gc_pause_seconds_count\{generation="(\d)"\} (\S+)', observed.scrape)}
    assert set(counts) == {"0", "1", "2"}
    assert counts["2"] >= 1
    assert counts["0"] > counts["1"] > 0  # young collections are the many, as traffic allocates


@pytest.mark.integration
def test_scrape_passes_promtool_check_metrics(observed):
    check = subprocess.run([tool("promtool"), "check", "metrics"], input=observed.scrape, capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert not check.stdout.strip() and not check.stderr.strip(), f"promtool check metrics complains:\n{check.stdout}{check.stderr}"


@pytest.mark.integration
def test_every_metric_of_the_dashboard_and_alerts_is_scraped(observed):
    scraped = {s.name for f in text_string_to_metric_families(observed.scrape) for s in f.samples}
    gpu_here = any(name.startswith(GPU_PREFIX) for name in scraped)
    for where, names in referenced_metrics().items():
        missing = names - scraped
        expected_missing = set() if gpu_here else {n for n in names if n.startswith(GPU_PREFIX)}
        assert missing == expected_missing, f"{where} references metrics the server does not expose: {sorted(missing - expected_missing)}"


def _finite_values(result: dict) -> list[float]:
    data = result["data"]
    if data["resultType"] == "vector":
        values = [float(r["value"][1]) for r in data["result"]]
    elif data["resultType"] == "scalar":
        values = [float(data["result"][1])]
    else:
        values = [float(v[1]) for r in data["result"] for v in r.get("values", [])]
    return [v for v in values if math.isfinite(v)]


@pytest.mark.integration
def test_every_dashboard_query_returns_data_from_live_prometheus(observed):
    gpu_here = any(line.startswith(GPU_PREFIX) for line in observed.scrape.splitlines())
    problems = []
    empty_gpu = 0
    for title, ref, target in dashboard_targets():
        expr = concrete(target["expr"])
        result = observed.query(expr)
        if result.get("status") != "success":
            problems.append(f"{title} [{ref}]: {result.get('errorType')}: {result.get('error')}\n    {expr}")
            continue
        is_gpu = GPU_PREFIX in expr
        values = _finite_values(result)
        if is_gpu and not gpu_here:
            if result["data"]["result"]:
                problems.append(f"{title} [{ref}]: GPU query returned data on a CPU machine\n    {expr}")
            empty_gpu += 1
        elif not values:
            problems.append(f"{title} [{ref}]: no data (result: {result['data']['result']})\n    {expr}")
    assert not problems, "dashboard queries that fail or return nothing:\n" + "\n".join(problems)
    assert gpu_here or empty_gpu == sum(GPU_PREFIX in t["expr"] for _, _, t in dashboard_targets())


@pytest.mark.integration
def test_dashboard_shows_the_traffic_that_was_sent(observed):
    def value(expr: str) -> float:
        values = _finite_values(observed.query(concrete(expr)))
        assert values, expr
        return sum(values)

    sel = f'job="{JOB}"'
    assert value(f"sum(rate(paraformer_asr_requests_total{{{sel}}}[1m]))") > 0
    assert value(f'sum(rate(paraformer_asr_requests_total{{{sel}, code="INVALID_ARGUMENT"}}[1m]))') > 0
    assert value(f'sum(rate(paraformer_asr_requests_total{{{sel}, rpc="ASRService.StreamRecognize"}}[1m]))') > 0
    assert value(f'sum(rate(paraformer_asr_rejected_total{{{sel}, reason="queue_full"}}[1m]))') > 0
    assert value(f"sum(increase(paraformer_asr_dropped_before_model_total{{{sel}}}[1m]))") > 0
    assert value(f"sum(rate(paraformer_asr_audio_processed_seconds_total{{{sel}}}[1m]))") > 0
    assert value(f'min(paraformer_asr_model_ready{{{sel}, pod="{POD}"}})') == 1


@pytest.mark.integration
def test_dashboard_variables_list_values(observed):
    for var in dashboard()["templating"]["list"]:
        if var["type"] != "query":
            continue
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", var["definition"])
        assert match, var["definition"]
        selector, label = match.groups()
        result = observed.query(f"count by ({label}) ({concrete(selector)})")
        values = [r["metric"].get(label) for r in result["data"]["result"]]
        assert any(values), f"variable {var['name']} lists nothing: {result}"
    assert observed.query(f'paraformer_asr_build_info{{pod="{POD}"}}')["data"]["result"]


@pytest.mark.integration
def test_alert_rules_evaluate_cleanly_on_live_data(observed):
    def evaluated():
        groups = json.loads(http_get(f"{observed.prometheus_url}/api/v1/rules"))["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        return rules if rules and all(r["health"] != "unknown" for r in rules) else None

    rules = wait_for(evaluated, 20, "prometheus to evaluate the alert rules")
    assert len(rules) == len(alert_rules())
    bad = [f"{r['name']}: {r['health']} {r.get('lastError', '')}" for r in rules if r["health"] != "ok" or r.get("lastError")]
    assert not bad, bad
    firing = [r["name"] for r in rules if r["state"] == "firing"]
    assert not firing, f"alerts fire on a healthy test server: {firing}"


@pytest.mark.integration
def test_label_cardinality_is_bounded(observed):
    request_id_like = re.compile(r"[0-9a-f]{16,}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|obs-.*", re.I)
    peer_like = re.compile(r"(ipv4|ipv6|unix):.*|\d{1,3}(\.\d{1,3}){3}(:\d+)?|\[?[0-9a-f:]*:[0-9a-f:]*\]?:\d+", re.I)
    values: dict[tuple[str, str], set[str]] = {}
    for family in text_string_to_metric_families(observed.scrape):
        if not family.name.startswith("paraformer_asr_"):
            continue
        for sample in family.samples:
            assert set(sample.labels) <= ALLOWED_LABELS, f"{sample.name} has unexpected labels {set(sample.labels) - ALLOWED_LABELS}"
            for label, value in sample.labels.items():
                if label == "le":
                    continue
                assert not request_id_like.fullmatch(value), f"{sample.name}{{{label}={value!r}}} looks like a request id"
                assert not peer_like.fullmatch(value), f"{sample.name}{{{label}={value!r}}} looks like a peer address"
                values.setdefault((family.name, label), set()).add(value)
    for (name, label), seen in values.items():
        assert len(seen) <= 20, f"{name}{{{label}}} has {len(seen)} values: {sorted(seen)[:10]}..."
    codes = {v for (name, label), seen in values.items() if label == "code" for v in seen}
    assert codes <= {c.name for c in grpc.StatusCode}, codes
    for rid in observed.request_ids:
        assert rid not in observed.scrape
    # And in Prometheus: the service's series stay few (a few hundred for a whole pod). Other
    # tests of this session put other model names into the same process-wide registry: count
    # this server's model and the series without a model label.
    result = observed.query(f'count({{__name__=~"paraformer_asr_.*", job="{JOB}", model=~"tiny|"}})')
    assert 0 < float(result["data"]["result"][0]["value"][1]) < 1000


# ====================================================================== structured logs


@contextlib.contextmanager
def captured_logs(fmt: str):
    """logging_setup.configure(fmt) writing into a buffer; the previous logging set-up restored after."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    noisy = {name: logging.getLogger(name).level for name in ("modelscope", "jieba", "urllib3", "numba")}
    buffer = io.StringIO()
    real_stderr = sys.stderr
    sys.stderr = buffer  # configure() hands sys.stderr to its handler
    try:
        logging_setup.configure("INFO", fmt)
    finally:
        sys.stderr = real_stderr
    try:
        yield buffer
    finally:
        for handler in root.handlers[:]:
            root.removeHandler(handler)
        for handler in saved_handlers:
            root.addHandler(handler)
        root.setLevel(saved_level)
        for name, level in noisy.items():
            logging.getLogger(name).setLevel(level)


@pytest.mark.integration
def test_one_json_access_log_line_per_request(observed):
    target = observed.server.target
    data = encode(SPEECH)
    with captured_logs("json") as buffer, grpc.insecure_channel(target) as channel:
        v1 = asr_pb2_grpc.RecognizerStub(channel)
        legacy = asr_service_pb2_grpc.ASRServiceStub(channel)
        v1.Recognize(v1_request(data), metadata=[("x-request-id", "log-v1-ok")], timeout=60)
        with pytest.raises(grpc.RpcError):
            v1.Recognize(v1_request(b"junk" * 40), metadata=[("x-request-id", "log-v1-bad")], timeout=60)
        legacy.Recognize(asr_service_pb2.AudioRequest(audio_data=data, format="wav"), metadata=[("x-request-id", "log-legacy-ok")], timeout=60)
        legacy.Recognize(asr_service_pb2.AudioRequest(audio_data=b"nope" * 40), metadata=[("x-request-id", "log-legacy-bad")], timeout=60)
        chunks = [asr_service_pb2.AudioChunk(data=data[i : i + 2000]) for i in range(0, len(data), 2000)]
        assert len(chunks) > 20
        legacy.StreamRecognize(iter(chunks), metadata=[("x-request-id", "log-stream")], timeout=60)
        _, call = v1.Recognize.with_call(v1_request(data), timeout=60)
        generated = dict(call.trailing_metadata())["x-request-id"]
    lines = [line for line in buffer.getvalue().splitlines() if line.strip()]
    entries = []
    for line in lines:
        try:
            entries.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not a JSON log line: {line!r}")
    access = [e for e in entries if e.get("logger") == "app.access"]
    by_id = {}
    for entry in access:
        by_id.setdefault(entry["request_id"], []).append(entry)
    expected = {
        "log-v1-ok": ("Recognizer.Recognize", "OK"),
        "log-v1-bad": ("Recognizer.Recognize", "INVALID_ARGUMENT"),
        "log-legacy-ok": ("ASRService.Recognize", "OK"),
        "log-legacy-bad": ("ASRService.Recognize", "INVALID_ARGUMENT"),
        "log-stream": ("ASRService.StreamRecognize", "OK"),
        generated: ("Recognizer.Recognize", "OK"),
    }
    for rid, (rpc, code) in expected.items():
        assert len(by_id.get(rid, [])) == 1, f"{rid}: expected one access line, got {by_id.get(rid)}"
        entry = by_id[rid][0]
        assert entry["level"] == "INFO" and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["ts"]), entry
        assert entry["rpc"] == rpc and entry["code"] == code, entry
        assert isinstance(entry["latency_ms"], int | float) and entry["latency_ms"] > 0, entry
        if code == "OK":
            assert entry["audio_s"] == pytest.approx(len(SPEECH) / 16000, abs=0.01), entry
            assert entry["model"] == "tiny", entry
        assert entry["msg"] == f"{rpc} {code}"
    assert len(generated) == 32
    # One line per request, nothing per chunk: the streamed upload of >20 chunks logged once in all.
    assert sum(1 for e in entries if e.get("request_id") == "log-stream") == 1
    assert len(access) == len(expected), [(e["request_id"], e["rpc"]) for e in access]


@pytest.mark.integration
def test_text_access_log_line_carries_the_request_id(observed):
    with captured_logs("text") as buffer, grpc.insecure_channel(observed.server.target) as channel:
        asr_pb2_grpc.RecognizerStub(channel).Recognize(v1_request(encode(SPEECH)), metadata=[("x-request-id", "log-text-1")], timeout=60)
    lines = [line for line in buffer.getvalue().splitlines() if "[log-text-1]" in line]
    assert len(lines) == 1, buffer.getvalue()
    assert "app.access" in lines[0] and "Recognizer.Recognize OK" in lines[0] and "latency_ms=" in lines[0] and "audio_s=" in lines[0]
