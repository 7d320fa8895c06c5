"""What the rendered manifests must say: GPU, probes, ports, drain, HPA, security, TLS, tokens,
monitoring copies, and k8s/ equal to the chart's defaults.

Tools: bash scripts/install-deploy-tools.sh (helm, kubectl).
"""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
import yaml

from app.config import Settings
from tests.deploy.conftest import CHART, K8S, ROOT, Rendering, run, tool, tool_env
from tests.deploy.render_k8s_base import NAMESPACE as K8S_NAMESPACE
from tests.deploy.render_k8s_base import RELEASE as K8S_RELEASE

pytestmark = pytest.mark.deploy

GPU = "nvidia.com/gpu"
DASHBOARD_SOURCE = ROOT / "monitoring" / "grafana" / "paraformer-asr.json"
DASHBOARD_COPY = CHART / "dashboards" / "paraformer-asr.json"
ALERTS_SOURCE = ROOT / "monitoring" / "prometheus" / "alerts.yaml"
ALERTS_COPY = CHART / "rules" / "alerts.yaml"


def all_renderings(renderings: dict[str, Rendering]) -> list[Rendering]:
    return list(renderings.values())


def pod_spec(r: Rendering) -> dict:
    return r.deployment["spec"]["template"]["spec"]


def container_ports(r: Rendering) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in r.server.get("ports", [])}


def uses_health_port(r: Rendering) -> bool:
    return "ASR_TLS_CERT_FILE" in r.env or "ASR_AUTH_TOKENS_FILE" in r.env


def mounted_secret(r: Rendering, file_path: str) -> str:
    """Name of the Secret whose volume mount holds file_path (fails when none does)."""
    volumes = {v["name"]: v for v in pod_spec(r)["volumes"]}
    for mount in r.server["volumeMounts"]:
        if file_path.startswith(mount["mountPath"].rstrip("/") + "/"):
            secret = volumes[mount["name"]].get("secret")
            assert secret, f"{file_path} is on volume {mount['name']}, which is not a Secret"
            key = file_path[len(mount["mountPath"].rstrip("/")) + 1 :]
            assert key in [i["path"] for i in secret.get("items", [])] or not secret.get("items"), f"{key} not projected"
            return secret["secretName"]
    pytest.fail(f"{r.name}: nothing mounts {file_path}")


# --- settings -------------------------------------------------------------------------------

SERVER_SETTINGS = {Settings.env_name(f.name) for f in dataclasses.fields(Settings)}


def test_chart_sets_only_settings_the_server_knows(renderings):
    """Every ASR_* variable of every container is a setting of app/config.py (no typos, no stale names)."""
    for r in all_renderings(renderings):
        spec = pod_spec(r)
        for container in spec.get("initContainers", []) + spec["containers"]:
            names = {e["name"] for e in container.get("env", []) if e["name"].startswith("ASR_")}
            unknown = names - SERVER_SETTINGS
            assert not unknown, f"{r.name} {container['name']}: the server has no setting {sorted(unknown)}"


def test_server_config_cannot_set_what_the_chart_sets(renderings, tools_tmp):
    """Each variable the chart gives the server from its own values is refused in server.config,
    where a second copy would silently win or lose depending on its place in the list."""
    first_seen: dict[str, Rendering] = {}
    for r in all_renderings(renderings):
        values = yaml.safe_load((CHART / "ci" / f"{r.name}.yaml").read_text()) or {}
        from_config = set(((values.get("server") or {}).get("config")) or {})
        for name in {n for n in r.env if n.startswith("ASR_")} - from_config:  # server.config takes ASR_* only
            first_seen.setdefault(name, r)
    assert {"ASR_MODEL_PROCESSES", "ASR_IDLE_WORKER_PROCESSES", "ASR_VAD_PROCESSES"} <= set(first_seen)
    for name, r in sorted(first_seen.items()):
        args = ["-f", CHART / "ci" / f"{r.name}.yaml", "--set", f"server.config.{name}=1"]
        proc = run([tool("helm"), "template", "asr", CHART, *args], env=tool_env(tools_tmp))
        assert proc.returncode != 0 and f"server.config.{name} is set by the chart" in proc.stderr, f"{name} ({r.name}): {proc.stderr}"


def test_every_model_setting_is_passed_to_server_and_init_container(renderings):
    model_settings = {name for name in SERVER_SETTINGS if name.endswith("_MODEL") and name != "ASR_MODEL_NAME"}
    assert {"ASR_ASR_MODEL", "ASR_VAD_MODEL", "ASR_PUNC_MODEL"} <= model_settings
    r = renderings["default"]
    (init,) = pod_spec(r)["initContainers"]
    init_names = {e["name"] for e in init["env"]}
    assert model_settings <= set(r.env), f"the server container lacks {model_settings - set(r.env)}"
    assert model_settings <= init_names, f"fetch-models would not fetch {model_settings - init_names}"


# --- GPU ------------------------------------------------------------------------------------


def test_gpu_requested_by_default(renderings):
    r = renderings["default"]
    resources = r.server["resources"]
    assert resources["limits"][GPU] == 1
    assert resources.get("requests", {}).get(GPU, 1) == 1  # extended resources: requests default to limits
    assert {"key": GPU, "operator": "Exists", "effect": "NoSchedule"} in pod_spec(r)["tolerations"]
    assert r.env["ASR_DEVICE"] == "cuda"
    assert "ASR_DEMO" not in r.env


@pytest.mark.parametrize("name", ["tls-on", "autoscaling-on", "monitoring-on", "persistent-cache", "baked-image"])
def test_gpu_requested_in_gpu_values_sets(renderings, name):
    assert renderings[name].server["resources"]["limits"][GPU] == 1


def test_cpu_only_requests_no_gpu(renderings):
    r = renderings["cpu-only"]
    assert GPU not in r.text, "cpu-only still mentions nvidia.com/gpu (limits, requests or tolerations)"
    assert r.env["ASR_DEVICE"] == "cpu"
    assert r.env["ASR_DEMO"] == "true"
    assert r.env["ASR_DEMO_DIR"].startswith(r.env["ASR_MODEL_CACHE_DIR"] + "/")
    assert not pod_spec(r).get("initContainers"), "demo mode downloads nothing"


def test_overload_settings_are_the_servers_unless_set(renderings):
    default, cpu = renderings["default"].env, renderings["cpu-only"].env
    assert "ASR_MAX_QUEUE_WAIT_SECONDS" not in default and "ASR_INFERENCE_NICE" not in default
    assert cpu["ASR_INFERENCE_NICE"] == "10"  # CPU inference on 2 cores: the probe thread first


def test_inference_nice_zero_reaches_the_server(tools_tmp):
    # 0 turns the server's default (10) off: the chart must pass it, not drop it as "empty".
    assert render(tools_tmp, "--set", "server.inferenceNice=0").env["ASR_INFERENCE_NICE"] == "0"


# --- probes and ports ------------------------------------------------------------------------


def test_probes_are_grpc_on_the_right_port(renderings):
    for r in all_renderings(renderings):
        ports = container_ports(r)
        expected = int(r.env["ASR_HEALTH_PORT"]) if uses_health_port(r) else int(r.env["ASR_PORT"])
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            probe = r.server[kind]
            assert set(probe) & {"grpc", "httpGet", "tcpSocket", "exec"} == {"grpc"}, f"{r.name} {kind}: {probe}"
            port = probe["grpc"]["port"]
            assert isinstance(port, int), f"{r.name} {kind}: gRPC probes need a numeric port, not {port!r}"
            assert port == expected, f"{r.name} {kind} probes port {port}, expected {expected}"
            assert port in ports.values(), f"{r.name} {kind}: port {port} is not a container port"


def test_health_port_used_exactly_when_tls_or_tokens_are_on(renderings):
    assert uses_health_port(renderings["tls-on"]) and uses_health_port(renderings["auth-only"])
    assert uses_health_port(renderings["tls-existing-secret"])
    for name in ("default", "cpu-only", "autoscaling-on", "monitoring-on"):
        r = renderings[name]
        assert not uses_health_port(r) and "ASR_HEALTH_PORT" not in r.env and "health" not in container_ports(r)
    r = renderings["tls-on"]
    assert container_ports(r)["health"] == int(r.env["ASR_HEALTH_PORT"]) != int(r.env["ASR_PORT"])


def test_startup_probe_allows_a_model_load(renderings):
    for r in all_renderings(renderings):
        probe = r.server["startupProbe"]
        budget = probe["periodSeconds"] * probe["failureThreshold"]
        assert budget >= (300 if r.env.get("ASR_DEMO") == "true" else 600), f"{r.name}: startup probe gives up after {budget} s"


def test_container_ports_match_server_env(renderings):
    for r in all_renderings(renderings):
        ports = container_ports(r)
        assert ports["grpc"] == int(r.env["ASR_PORT"]), r.name
        assert ports["metrics"] == int(r.env["ASR_METRICS_PORT"]), r.name
        if "ASR_HEALTH_PORT" in r.env:
            assert ports["health"] == int(r.env["ASR_HEALTH_PORT"]), r.name
        assert r.env["ASR_HOST"] == "0.0.0.0"


def test_services_target_named_container_ports(renderings):
    for r in all_renderings(renderings):
        ports = container_ports(r)
        selector = r.deployment["spec"]["selector"]["matchLabels"]
        for svc in r.of_kind("Service"):
            assert svc["spec"]["selector"] == selector, f"{r.name} {svc['metadata']['name']} selects other pods"
            for port in svc["spec"]["ports"]:
                assert port["targetPort"] in ports, f"{r.name} {svc['metadata']['name']}: no container port {port['targetPort']}"
        main = r.one("Service", "asr-paraformer-asr")
        assert {p["name"]: p["port"] for p in main["spec"]["ports"]}["grpc"] == 50051
        assert "metrics" not in {p["name"] for p in main["spec"]["ports"]}, "the gRPC Service must not expose metrics"


def test_headless_service_for_client_side_balancing(renderings):
    r = renderings["default"]
    headless = r.one("Service", "-headless")
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is False
    assert [p["targetPort"] for p in headless["spec"]["ports"]] == ["grpc"]


def test_test_pod_is_not_a_service_endpoint_and_checks_health(renderings):
    for r in all_renderings(renderings):
        (pod,) = r.of_kind("Pod")
        assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
        selector = r.deployment["spec"]["selector"]["matchLabels"]
        labels = pod["metadata"]["labels"]
        assert not all(labels.get(k) == v for k, v in selector.items()), "the test pod would receive Service traffic"
        (container,) = pod["spec"]["containers"]
        args = container["args"]
        assert args[0] == "health"
        port = int(args[args.index("--target") + 1].rsplit(":", 1)[1])
        service_ports = {p["port"] for p in r.one("Service", "asr-paraformer-asr")["spec"]["ports"]}
        assert port in service_ports
        assert port == (int(r.env["ASR_HEALTH_PORT"]) if uses_health_port(r) else 50051), r.name


def test_network_policy_admits_the_server_ports(renderings):
    for r in all_renderings(renderings):
        (policy,) = [p for p in r.of_kind("NetworkPolicy")]
        assert policy["spec"]["podSelector"]["matchLabels"] == r.deployment["spec"]["selector"]["matchLabels"]
        admitted = {port["port"] for rule in policy["spec"]["ingress"] for port in rule["ports"]}
        assert admitted == set(container_ports(r)), f"{r.name}: policy admits {admitted}, pod has {set(container_ports(r))}"


# --- drain ----------------------------------------------------------------------------------


def test_termination_grace_covers_prestop_and_drain(renderings):
    for r in all_renderings(renderings):
        spec = pod_spec(r)
        command = r.server["lifecycle"]["preStop"]["exec"]["command"]
        assert command[0] == "/bin/sleep"
        drain = max(float(r.env["ASR_SHUTDOWN_GRACE_S"]), float(r.env.get("ASR_STREAM_GRACE_S") or 0))
        assert spec["terminationGracePeriodSeconds"] > float(command[1]) + drain, r.name
        liveness = r.server["livenessProbe"]
        assert liveness["periodSeconds"] * liveness["failureThreshold"] > float(r.env["ASR_SHUTDOWN_GRACE_S"]), (
            f"{r.name}: the liveness probe would kill a draining pod"
        )


# --- autoscaling ----------------------------------------------------------------------------


def test_hpa_targets_the_deployment(renderings):
    r = renderings["autoscaling-on"]
    hpa = r.one("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert target == {"apiVersion": "apps/v1", "kind": "Deployment", "name": r.deployment["metadata"]["name"]}
    assert "replicas" not in r.deployment["spec"], "with an HPA the Deployment must not set replicas"
    types = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert types["Pods"]["pods"]["metric"]["name"].startswith("paraformer_asr_")
    assert types["Pods"]["pods"]["target"]["type"] == "AverageValue"
    assert types["Resource"]["resource"]["name"] == "cpu"
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300
    for name in renderings:
        if name != "autoscaling-on":
            assert not renderings[name].of_kind("HorizontalPodAutoscaler")


def test_hpa_metric_is_one_the_server_exports():
    """The HPA's default metric and the ones values.yaml suggests are defined in app/metrics.py."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    source = (ROOT / "app" / "metrics.py").read_text()
    name = values["autoscaling"]["customMetric"]["name"]
    assert name.startswith("paraformer_asr_")
    assert f'f"{{PREFIX}}_{name.removeprefix("paraformer_asr_")}"' in source, f"{name} is not defined in app/metrics.py"


def test_pdb_selects_the_server_pods(renderings):
    r = renderings["default"]
    pdb = r.one("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == r.deployment["spec"]["selector"]["matchLabels"]
    assert pdb["spec"]["maxUnavailable"] == 1


# --- security -------------------------------------------------------------------------------


def test_pods_are_hardened(renderings):
    for r in all_renderings(renderings):
        pods = [pod_spec(r)] + [p["spec"] for p in r.of_kind("Pod")]
        for spec in pods:
            assert spec["securityContext"]["runAsNonRoot"] is True
            assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
            assert spec["automountServiceAccountToken"] is False
            tmp_volumes = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
            for container in spec.get("initContainers", []) + spec["containers"]:
                ctx = container["securityContext"]
                assert ctx["readOnlyRootFilesystem"] is True and ctx["allowPrivilegeEscalation"] is False
                assert ctx["capabilities"]["drop"] == ["ALL"] and not ctx["capabilities"].get("add")
                mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
                assert mounts.get("/tmp") in tmp_volumes, f"{r.name} {container['name']}: /tmp is not an emptyDir"
        assert r.one("ServiceAccount")["automountServiceAccountToken"] is False


def test_model_cache_is_a_writable_volume(renderings):
    for r in all_renderings(renderings):
        mounts = {m["mountPath"]: m for m in r.server["volumeMounts"]}
        cache = r.env["ASR_MODEL_CACHE_DIR"]
        assert r.env["MODELSCOPE_CACHE"] == cache
        if r.name == "baked-image":
            assert cache not in mounts, "a volume over /models would hide the baked models"
        else:
            assert cache in mounts and not mounts[cache].get("readOnly"), r.name


def test_model_provisioning(renderings):
    r = renderings["default"]
    (init,) = pod_spec(r)["initContainers"]
    assert init["args"] == ["fetch-models"] and init["image"] == r.server["image"]
    init_env = {e["name"]: e.get("value") for e in init["env"]}
    for key in ("ASR_ASR_MODEL", "ASR_VAD_MODEL", "ASR_PUNC_MODEL", "ASR_ONLINE_MODEL", "ASR_MODEL_REVISION", "ASR_MODEL_CACHE_DIR"):
        assert init_env[key] == r.env[key], key
    assert init_env["ASR_OFFLINE"] == "false" and r.env["ASR_OFFLINE"] == "true"
    assert GPU not in json.dumps(init["resources"])
    downloading = renderings["tls-existing-secret"]
    assert not pod_spec(downloading).get("initContainers") and downloading.env["ASR_OFFLINE"] == "false"
    startup = downloading.server["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= float(downloading.env["ASR_DOWNLOAD_TIMEOUT_S"]), (
        "a server that downloads at start needs a startup probe that outlasts the download timeout"
    )
    baked = renderings["baked-image"]
    assert not pod_spec(baked).get("initContainers") and baked.env["ASR_OFFLINE"] == "true"
    assert "@sha256:" in baked.server["image"]


# --- TLS and tokens -------------------------------------------------------------------------


def test_tls_from_cert_manager_with_client_ca_and_tokens(renderings):
    r = renderings["tls-on"]
    cert = r.one("Certificate")
    secret = mounted_secret(r, r.env["ASR_TLS_CERT_FILE"])
    assert secret == mounted_secret(r, r.env["ASR_TLS_KEY_FILE"]) == cert["spec"]["secretName"]
    headless = r.one("Service", "-headless")["metadata"]["name"]
    assert f"{headless}.asr-ci.svc.cluster.local" in cert["spec"]["dnsNames"]
    assert mounted_secret(r, r.env["ASR_TLS_CLIENT_CA_FILE"]) == "asr-client-ca"
    assert mounted_secret(r, r.env["ASR_AUTH_TOKENS_FILE"]) == "asr-tokens"
    assert not r.of_kind("Secret"), "existing secrets are used, none is created"


def test_tls_from_existing_secret(renderings):
    r = renderings["tls-existing-secret"]
    assert mounted_secret(r, r.env["ASR_TLS_CERT_FILE"]) == "asr-server-tls"
    assert not r.of_kind("Certificate")


def test_tokens_from_a_chart_made_secret(renderings):
    r = renderings["auth-only"]
    name = mounted_secret(r, r.env["ASR_AUTH_TOKENS_FILE"])
    secret = r.one("Secret")
    assert secret["metadata"]["name"] == name
    tokens = secret["stringData"][r.env["ASR_AUTH_TOKENS_FILE"].rsplit("/", 1)[1]]
    assert tokens.split() == ["ci-token-one", "ci-token-two"]
    assert "ASR_TLS_CERT_FILE" not in r.env


# --- named pipelines, admin tokens, result cache -------------------------------------------

FEATURES = "pipelines-admin-cache"  # the ci values set that turns all three on
FEATURE_ENV = ("ASR_MODELS_CONFIG", "ASR_ADMIN_TOKENS_FILE", "ASR_ADMIN_TOKENS", "ASR_CACHE_MAX_BYTES", "ASR_CACHE_TTL_S", "ASR_CACHE_REDIS_URL")
HUB_ID = re.compile(r"^[^/.~][^/]*/[^/]+$")  # as app/engine/loader.py's _looks_like_hub_id


def mount_of(r: Rendering, file_path: str) -> tuple[dict, dict, str]:
    """(volume mount, volume, file name inside the volume) of the server container's file_path."""
    volumes = {v["name"]: v for v in pod_spec(r)["volumes"]}
    for mount in r.server["volumeMounts"]:
        prefix = mount["mountPath"].rstrip("/") + "/"
        if file_path.startswith(prefix):
            return mount, volumes[mount["name"]], file_path[len(prefix) :]
    pytest.fail(f"{r.name}: nothing mounts {file_path}")


def ci_values(name: str) -> dict:
    return yaml.safe_load((CHART / "ci" / f"{name}.yaml").read_text())


def render(tools_tmp, *args: str) -> Rendering:
    proc = run([tool("helm"), "template", "asr", CHART, "--namespace", "asr-ci", *args], env=tool_env(tools_tmp))
    assert proc.returncode == 0, proc.stderr
    return Rendering("extra", tools_tmp / "extra.yaml", proc.stdout, [d for d in yaml.safe_load_all(proc.stdout) if d])


def test_pipelines_configmap_is_mounted_where_models_config_points(renderings, tmp_path):
    r = renderings[FEATURES]
    mount, volume, key = mount_of(r, r.env["ASR_MODELS_CONFIG"])
    assert mount["readOnly"] is True and "subPath" not in mount
    configmap = r.one("ConfigMap", "-pipelines")
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    assert key in [i["path"] for i in volume["configMap"]["items"]]
    (item,) = [i for i in volume["configMap"]["items"] if i["path"] == key]
    text = configmap["data"][item["key"]]
    assert yaml.safe_load(text) == ci_values(FEATURES)["models"]["pipelines"]["config"], "the ConfigMap does not hold the values' models config"
    # The server accepts it: every pipeline, its settings and the default (app.config.model_settings).
    from app.config import model_settings

    path = tmp_path / "models.yaml"
    path.write_text(text)
    default, pipelines = model_settings(Settings(models_config=str(path)))
    assert default == "paraformer-large" and set(pipelines) == {"paraformer-large", "paraformer-large-hotwords", "paraformer-finetuned"}
    assert pipelines["paraformer-large-hotwords"].max_batch_size == 8 and pipelines["paraformer-large-hotwords"].online_model == "none"


def test_pipelines_change_rolls_the_pods(renderings, tools_tmp):
    r = renderings[FEATURES]
    checksum = r.deployment["spec"]["template"]["metadata"]["annotations"]["checksum/pipelines"]
    assert re.fullmatch(r"[0-9a-f]{64}", checksum)
    values = CHART / "ci" / f"{FEATURES}.yaml"
    same = render(tools_tmp, "-f", values)
    changed = render(tools_tmp, "-f", values, "--set", "models.pipelines.config.models.paraformer-large.max_batch_size=4")
    assert same.deployment["spec"]["template"]["metadata"]["annotations"]["checksum/pipelines"] == checksum
    assert changed.deployment["spec"]["template"]["metadata"]["annotations"]["checksum/pipelines"] != checksum


def test_init_containers_fetch_every_pipelines_hub_models_once(renderings):
    r = renderings[FEATURES]
    values = yaml.safe_load((CHART / "values.yaml").read_text())["models"]
    pipelines = ci_values(FEATURES)["models"]["pipelines"]["config"]["models"]
    needed = set()
    for settings in pipelines.values():
        settings = settings or {}
        revision = settings.get("model_revision", values["revision"])
        for role in ("asr", "vad", "punc", "online"):
            spec = settings.get(f"{role}_model", values[role])
            if HUB_ID.match(spec):
                needed.add((role, spec, revision))
    inits = pod_spec(r)["initContainers"]
    assert "fetch-models" not in [c["name"] for c in inits], "with pipelines, the models.* fetch is replaced by one per pipeline"
    fetched = []
    for init in inits:
        args = init["args"]
        assert args[0] == "fetch-models" and init["image"] == r.server["image"], init["name"]
        flags = dict(zip(args[1::2], args[2::2], strict=True))
        for role in ("asr", "vad", "punc", "online"):
            spec = flags[f"--{role}-model"]
            assert spec == "none" or HUB_ID.match(spec), f"{init['name']} would check directory {spec} (it may be on a volume the init container lacks)"
            if spec != "none":
                fetched.append((role, spec, flags["--model-revision"]))
        assert {m["mountPath"] for m in init["volumeMounts"]} >= {"/tmp", r.env["ASR_MODEL_CACHE_DIR"]}
    assert sorted(fetched) == sorted(needed), "every hub model of every pipeline is fetched exactly once"
    assert ("asr", "iic/speech_seaco_paraformer_large_asr_nat-zh-cn-16k-common-vocab8404-pytorch", "master") in needed


def test_admin_tokens_come_from_the_existing_secret(renderings):
    r = renderings[FEATURES]
    mount, _, _ = mount_of(r, r.env["ASR_ADMIN_TOKENS_FILE"])
    assert mount["readOnly"] is True
    assert mounted_secret(r, r.env["ASR_ADMIN_TOKENS_FILE"]) == "asr-admin-tokens"
    assert mounted_secret(r, r.env["ASR_AUTH_TOKENS_FILE"]) == "asr-tokens"
    assert "ASR_ADMIN_TOKENS" not in r.env, "admin tokens travel in a file, never in the environment"
    assert not r.of_kind("Secret"), "the chart creates no Secret: token values never pass through values"


def test_redis_url_comes_from_a_secret_key_ref(renderings):
    r = renderings[FEATURES]
    (entry,) = [e for e in r.server["env"] if e["name"] == "ASR_CACHE_REDIS_URL"]
    assert "value" not in entry
    assert entry["valueFrom"] == {"secretKeyRef": {"name": "asr-redis", "key": "url"}}
    assert r.env["ASR_CACHE_TTL_S"] == "7200"
    assert "ASR_CACHE_MAX_BYTES" not in r.env, "with Redis the in-memory budget is not used"
    assert not [e for e in r.server["env"] if "redis://" in str(e.get("value", ""))], "a Redis URL in plain env"


def test_network_policy_allows_redis_egress_when_egress_is_restricted(renderings, tools_tmp):
    policy = renderings[FEATURES].one("NetworkPolicy")
    assert "Egress" in policy["spec"]["policyTypes"]
    redis_rules = [rule for rule in policy["spec"]["egress"] if {"port": 6379, "protocol": "TCP"} in rule.get("ports", [])]
    assert redis_rules == [{"ports": [{"port": 6379, "protocol": "TCP"}], "to": ci_values(FEATURES)["resultCache"]["redis"]["egress"]["to"]}]
    assert any({"port": 53, "protocol": "UDP"} in rule.get("ports", []) for rule in policy["spec"]["egress"]), "the ci set keeps DNS"
    # Egress left open (networkPolicy.egress empty): the allowance adds nothing, so egress stays open.
    open_egress = render(
        tools_tmp,
        "--set", "resultCache.enabled=true",
        "--set", "resultCache.redis.enabled=true",
        "--set", "resultCache.redis.existingSecret=asr-redis",
        "--set", "resultCache.redis.egress.enabled=true",
    )  # fmt: skip
    spec = open_egress.one("NetworkPolicy")["spec"]
    assert spec["policyTypes"] == ["Ingress"] and "egress" not in spec


def test_in_memory_result_cache(tools_tmp):
    r = render(tools_tmp, "--set", "resultCache.enabled=true")
    assert r.env["ASR_CACHE_MAX_BYTES"] == "268435456", "an integer, not Helm's float notation (2.68435456e+08)"
    assert r.env["ASR_CACHE_TTL_S"] == "3600"
    assert "ASR_CACHE_REDIS_URL" not in r.env
    assert Settings.env_name("cache_max_bytes") == "ASR_CACHE_MAX_BYTES"


def test_features_are_off_by_default(renderings):
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["models"]["pipelines"]["enabled"] is False
    assert values["admin"]["enabled"] is False and values["admin"]["existingSecret"] == ""
    assert values["resultCache"]["enabled"] is False and values["resultCache"]["redis"]["enabled"] is False
    assert values["resultCache"]["redis"]["egress"]["enabled"] is False
    assert "tokens" not in values["admin"], "admin tokens come only from an existing Secret"
    for r in all_renderings(renderings):
        if r.name == FEATURES:
            continue
        spec = pod_spec(r)
        names = {e["name"] for c in spec.get("initContainers", []) + spec["containers"] for e in c.get("env", [])}
        assert not names & set(FEATURE_ENV), f"{r.name} sets {sorted(names & set(FEATURE_ENV))}"
        assert not [c for c in r.of_kind("ConfigMap") if c["metadata"]["name"].endswith("-pipelines")], r.name
        assert {v["name"] for v in spec["volumes"]}.isdisjoint({"pipelines", "admin-tokens"}), r.name
        assert "checksum/pipelines" not in r.deployment["spec"]["template"]["metadata"]["annotations"], r.name
        assert [c["name"] for c in spec.get("initContainers", [])] in ([], ["fetch-models"]), r.name
        for policy in r.of_kind("NetworkPolicy"):
            assert "6379" not in json.dumps(policy), r.name


def test_schema_knows_the_per_pipeline_settings():
    """models.pipelines.config.models entries allow exactly what the server allows (app/config.py)."""
    from app.config import PER_MODEL_SETTINGS

    schema = json.loads((CHART / "values.schema.json").read_text())
    models = schema["properties"]["models"]["properties"]["pipelines"]["properties"]["config"]["properties"]["models"]
    (pipeline,) = [s for s in models["additionalProperties"]["anyOf"] if s.get("type") == "object"]
    assert set(pipeline["properties"]) == set(PER_MODEL_SETTINGS)
    assert pipeline["additionalProperties"] is False
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    for key, node in pipeline["properties"].items():
        python = type(fields[key].default)
        expected = {str: "string", bool: "boolean", int: "integer", float: "number"}[python]
        assert node["type"] == expected, f"{key}: schema says {node['type']}, app/config.py has {python.__name__}"


# --- monitoring -----------------------------------------------------------------------------


def test_service_monitor_scrapes_the_metrics_service(renderings):
    r = renderings["monitoring-on"]
    monitor = r.one("ServiceMonitor")
    metrics_svc = r.one("Service", "-metrics")
    labels = metrics_svc["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in monitor["spec"]["selector"]["matchLabels"].items())
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [metrics_svc["metadata"]["namespace"]]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in metrics_svc["spec"]["ports"]}
    assert metrics_svc["spec"]["ports"][0]["port"] == int(r.env["ASR_METRICS_PORT"])
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_dashboard_configmap_holds_the_dashboard_json(renderings):
    r = renderings["monitoring-on"]
    (configmap,) = [c for c in r.of_kind("ConfigMap") if c["metadata"]["name"].endswith("-dashboard")]
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    (text,) = configmap["data"].values()
    assert text == DASHBOARD_COPY.read_text(), "the ConfigMap does not hold the chart's dashboard file byte for byte"
    assert json.loads(text) == json.loads(DASHBOARD_COPY.read_text())


def test_prometheus_rule_holds_the_alert_rules(renderings):
    r = renderings["monitoring-on"]
    rule = r.one("PrometheusRule")
    assert rule["spec"] == yaml.safe_load(ALERTS_COPY.read_text())
    assert rule["spec"]["groups"], "no rule groups"


def test_chart_dashboard_copy_equals_monitoring_dashboard():
    assert DASHBOARD_SOURCE.exists(), f"{DASHBOARD_SOURCE.relative_to(ROOT)} is missing: the chart ships a copy of it ({DASHBOARD_COPY.relative_to(ROOT)})"
    assert DASHBOARD_COPY.read_bytes() == DASHBOARD_SOURCE.read_bytes(), (
        f"the chart's copy differs: cp {DASHBOARD_SOURCE.relative_to(ROOT)} {DASHBOARD_COPY.relative_to(ROOT)}"
    )


def test_chart_alerts_copy_equals_monitoring_alerts():
    assert ALERTS_SOURCE.exists(), f"{ALERTS_SOURCE.relative_to(ROOT)} is missing: the chart ships a copy of it ({ALERTS_COPY.relative_to(ROOT)})"
    assert ALERTS_COPY.read_bytes() == ALERTS_SOURCE.read_bytes(), (
        f"the chart's copy differs: cp {ALERTS_SOURCE.relative_to(ROOT)} {ALERTS_COPY.relative_to(ROOT)}"
    )


# --- k8s/ -----------------------------------------------------------------------------------

HELM_ONLY_LABELS = ("helm.sh/chart", "app.kubernetes.io/managed-by")


def _comparable(doc: dict) -> dict:
    doc = json.loads(json.dumps(doc))
    for holder in (doc["metadata"], doc.get("spec", {}).get("template", {}).get("metadata", {})):
        for label in HELM_ONLY_LABELS:
            (holder.get("labels") or {}).pop(label, None)
    return doc


def test_k8s_base_equals_chart_defaults(kustomized, tools_tmp):
    proc = run(
        [tool("helm"), "template", K8S_RELEASE, CHART, "--namespace", K8S_NAMESPACE, "--set", "tests.enabled=false"],
        env=tool_env(tools_tmp),
    )
    assert proc.returncode == 0, proc.stderr
    chart = {(d["kind"], d["metadata"]["name"]): _comparable(d) for d in yaml.safe_load_all(proc.stdout) if d}
    base = {(d["kind"], d["metadata"]["name"]): _comparable(d) for d in kustomized.docs}
    namespace = base.pop(("Namespace", K8S_NAMESPACE))
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    hint = "k8s/ drifted from the chart's defaults: python tests/deploy/render_k8s_base.py"
    assert sorted(base) == sorted(chart), hint
    for key, doc in chart.items():
        assert base[key] == doc, f"{key}: {hint}"
    assert all(d["metadata"]["namespace"] == K8S_NAMESPACE for d in base.values())


def test_k8s_base_has_no_helm_leftovers():
    for path in K8S.glob("*.yaml"):
        text = path.read_text()
        assert "{{" not in text and "helm.sh/" not in text and "managed-by: Helm" not in text, path.name


# --- values ---------------------------------------------------------------------------------

# Values whose children are Kubernetes objects passed through verbatim (documented as a whole).
VERBATIM = {
    "updateStrategy",
    "models.cache.persistence.accessModes",
    "models.initResources",
    "resources",
    "tolerations",
    "podSecurityContext",
    "securityContext",
    "probes.startup",
    "probes.readiness",
    "probes.liveness",
    "autoscaling.behavior",
    "tests.resources",
    "monitoring.grafanaDashboard.labels",
}


def test_every_value_is_commented():
    """Each key in values.yaml has a comment right above it, unless it is inside a verbatim object."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    path: list[tuple[int, str]] = []
    missing = []
    for i, line in enumerate(lines):
        match = re.match(r"^( *)([A-Za-z_][\w.-]*):", line)
        if not match or line.lstrip().startswith("#"):
            continue
        indent, key = len(match.group(1)), match.group(2)
        while path and path[-1][0] >= indent:
            path.pop()
        parent = ".".join(k for _, k in path)
        path.append((indent, key))
        full = f"{parent}.{key}" if parent else key
        if any(full.startswith(v + ".") for v in VERBATIM):
            continue
        previous = lines[i - 1].strip() if i else ""
        if not previous.startswith("#"):
            missing.append(f"line {i + 1}: {full}")
    assert not missing, "values without a comment:\n" + "\n".join(missing)


def test_schema_covers_every_value():
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(value, node, path):
        if node.get("type") == "object" and "properties" in node and isinstance(value, dict):
            for key, child in value.items():
                assert key in node["properties"], f"values.schema.json does not describe {path}{key}"
                walk(child, node["properties"][key], f"{path}{key}.")

    walk(values, schema, "")
    assert schema["additionalProperties"] is False
