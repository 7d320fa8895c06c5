"""The real linters and validators on the chart, the kustomize base and the Dockerfile.

Tools: bash scripts/install-deploy-tools.sh (helm, kubectl, kubernetes-validate, checkov, hadolint).
"""

from __future__ import annotations

import json
import re

import pytest
import yaml

from tests.deploy.conftest import (
    CHART,
    CI_VALUES,
    K8S,
    KUBERNETES_VERSIONS,
    NAMESPACE,
    RELEASE,
    ROOT,
    run,
    tool,
    tool_env,
)

pytestmark = pytest.mark.deploy

# Kinds that kubernetes-validate has no schema for (custom resources); crd_check.py checks them.
CUSTOM_KINDS = {"ServiceMonitor", "PrometheusRule", "Certificate"}


# --- helm -----------------------------------------------------------------------------------


def test_helm_lint_strict_defaults(tools_tmp):
    proc = run([tool("helm"), "lint", "--strict", CHART], env=tool_env(tools_tmp))
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.stem)
def test_helm_lint_strict(values, tools_tmp):
    proc = run([tool("helm"), "lint", "--strict", CHART, "-f", values], env=tool_env(tools_tmp))
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.stem)
def test_helm_template(values, renderings):
    rendering = renderings[values.stem]
    assert rendering.of_kind("Deployment"), f"{values.name} rendered no Deployment"


def test_ci_values_cover_the_required_sets():
    names = {p.stem for p in CI_VALUES}
    assert {"default", "tls-on", "autoscaling-on", "monitoring-on", "cpu-only"} <= names


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "gpu.enabeld=true"], "additional properties 'enabeld' not allowed"),
        (["--set", "tls.enabled=true"], "tls.enabled needs a certificate"),
        (["--set", "tls.enabled=true", "--set", "tls.existingSecret=s", "--set", "server.healthPort=0"], "server.healthPort must be a port"),
        (["--set", "auth.enabled=true"], "auth.enabled needs auth.existingSecret or auth.tokens"),
        (["--set", "server.terminationGracePeriodSeconds=20"], "must exceed preStopSleepSeconds"),
        (["--set", "server.config.ASR_PORT=1"], "server.config.ASR_PORT is set by the chart"),
        (["--set", "server.metricsPort=50051"], "must differ"),
        (["--set", "models.provisioning=sometimes"], "provisioning"),
        (["--set", "tls.clientCA.enabled=true"], "needs tls.enabled"),
        (["--set", "models.pipelines.enabled=true"], "models.pipelines.enabled needs models.pipelines.config.models"),
        (
            [
                "--set",
                "models.pipelines.enabled=true",
                "--set",
                "models.pipelines.config.models.a.max_batch_size=4",
                "--set",
                "models.pipelines.config.default=b",
            ],
            "must name one of models.pipelines.config.models (a)",
        ),
        (["--set", "models.pipelines.config.models.a.asr=x"], "additional properties 'asr' not allowed"),
        (
            [
                "--set",
                "models.pipelines.enabled=true",
                "--set",
                "models.pipelines.config.default=a.b",
                "--set-json",
                'models.pipelines.config.models={"a.b":{},"a_b":{"asr_model":"iic/other"}}',
            ],
            "gives the init container name fetch-models-a-b again",
        ),
        (["--set", "admin.enabled=true"], "admin.enabled needs admin.existingSecret"),
        (["--set", "resultCache.enabled=true", "--set", "resultCache.redis.enabled=true"], "resultCache.redis.enabled needs resultCache.redis.existingSecret"),
        (["--set", "resultCache.enabled=true", "--set", "resultCache.maxBytes=0"], "needs resultCache.maxBytes above 0"),
        (["--set", "resultCache.enabled=true", "--set", "server.config.ASR_CACHE_TTL_S=5"], "server.config.ASR_CACHE_TTL_S is set by the chart"),
    ],
    ids=[
        "schema-typo",
        "tls-without-cert",
        "tls-without-health-port",
        "auth-without-tokens",
        "short-grace",
        "managed-env",
        "port-clash",
        "bad-enum",
        "mtls-without-tls",
        "pipelines-without-models",
        "pipelines-bad-default",
        "pipeline-unknown-setting",
        "pipeline-name-clash",
        "admin-without-secret",
        "redis-without-secret",
        "memory-cache-without-budget",
        "cache-env-managed",
    ],
)
def test_chart_refuses_values_that_cannot_work(args, message, tools_tmp):
    proc = run([tool("helm"), "template", RELEASE, CHART, *args], env=tool_env(tools_tmp))
    assert proc.returncode != 0, f"helm template {' '.join(args)} succeeded"
    assert message in proc.stderr, proc.stderr


# --- kubernetes-validate --------------------------------------------------------------------


def _kubernetes_validate(path, tools_tmp) -> None:
    cmd = [tool("kubernetes-validate"), "--strict", "--quiet"]
    for version in KUBERNETES_VERSIONS:
        cmd += ["-k", version]
    proc = run([*cmd, path], env=tool_env(tools_tmp))
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    errors = [line for line in lines if not line.startswith("WARN")]
    assert proc.returncode == 0 and not errors, f"kubernetes-validate --strict {path.name}:\n{proc.stdout}{proc.stderr}"
    # WARN lines are "no schema for kind X": allowed only for the custom resources.
    for line in lines:
        kind = re.search(r"schema for kind (\w+)", line)
        assert kind and kind.group(1) in CUSTOM_KINDS, f"unexpected warning: {line}"


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.stem)
def test_rendered_manifests_validate_strict(values, renderings, tools_tmp):
    _kubernetes_validate(renderings[values.stem].path, tools_tmp)


def test_kustomize_base_validates_strict(kustomized, tools_tmp):
    _kubernetes_validate(kustomized.path, tools_tmp)


def test_custom_resources_match_their_crds(renderings, tools_tmp):
    """ServiceMonitor, PrometheusRule and Certificate against models generated from their CRDs."""
    kinds = {d["kind"] for r in renderings.values() for d in r.docs}
    assert kinds >= CUSTOM_KINDS, f"the ci values sets render none of {CUSTOM_KINDS - kinds}"
    files = [r.path for r in renderings.values()]
    proc = run([tool("tools-python"), ROOT / "tests" / "deploy" / "crd_check.py", *files], env=tool_env(tools_tmp))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    checked = {line.split()[-1].split("/")[0] for line in proc.stdout.splitlines() if line.startswith("OK")}
    assert checked >= CUSTOM_KINDS, proc.stdout


# --- checkov --------------------------------------------------------------------------------


def _checkov(args: list, tools_tmp, extra_env: dict[str, str] | None = None) -> list[dict]:
    env = tool_env(tools_tmp)
    env.update(extra_env or {})
    proc = run([tool("checkov"), "--skip-download", "--quiet", "--compact", "-o", "json", *args], env=env, timeout=600)
    try:
        reports = json.loads(proc.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"checkov printed no JSON (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    reports = reports if isinstance(reports, list) else [reports]
    failed = [f"{c['check_id']} {c['check_name']}: {c['resource']} ({c['file_path']})" for report in reports for c in report["results"]["failed_checks"]]
    assert not failed, "checkov failed checks (fix them or skip with a reason):\n" + "\n".join(failed)
    assert sum(r["summary"]["passed"] for r in reports) > 0, "checkov checked nothing"
    assert all(r["summary"]["parsing_errors"] == 0 for r in reports), reports
    return reports


def test_checkov_chart(tools_tmp):
    # checkov's helm runner calls `helm template` (the one in .tools/bin, first on PATH);
    # HELM_NAMESPACE renders into a namespace other than "default", as an install does.
    _checkov(
        ["--config-file", CHART / ".checkov.yaml", "-d", CHART, "--framework", "helm"],
        tools_tmp,
        {"HELM_NAMESPACE": NAMESPACE},
    )


def test_checkov_rendered_values_sets(renderings, tools_tmp):
    rendered_dir = next(iter(renderings.values())).path.parent
    _checkov(["--config-file", CHART / ".checkov.yaml", "-d", rendered_dir, "--framework", "kubernetes"], tools_tmp)


def test_checkov_kustomize_base(tools_tmp):
    reports = _checkov(["--config-file", K8S / ".checkov.yaml", "-d", K8S, "--framework", "kubernetes", "kustomize"], tools_tmp)
    assert {r["check_type"] for r in reports} >= {"kubernetes", "kustomize"}


def test_checkov_dockerfile(tools_tmp):
    _checkov(["-f", ROOT / "Dockerfile", "--framework", "dockerfile"], tools_tmp)


@pytest.mark.parametrize("config", [CHART / ".checkov.yaml", K8S / ".checkov.yaml"], ids=["chart", "k8s"])
def test_every_checkov_skip_is_justified(config):
    """Each skipped check in a checkov config has a comment right above it that names it."""
    lines = config.read_text().splitlines()
    skips = yaml.safe_load(config.read_text())["skip-check"]
    for check in skips:
        (index,) = [i for i, line in enumerate(lines) if line.strip() == f"- {check}"]
        comment = []
        for line in reversed(lines[:index]):
            if not line.strip().startswith("#"):
                break
            comment.append(line)
        assert any(check in line for line in comment), f"{config.name}: skip of {check} has no comment that names and justifies it"


def test_checkov_skip_annotations_carry_reasons(renderings):
    for rendering in renderings.values():
        for doc in rendering.docs:
            for key, value in (doc["metadata"].get("annotations") or {}).items():
                if key.startswith("checkov.io/skip"):
                    check, _, reason = value.partition("=")
                    assert re.fullmatch(r"CKV2?_K8S_\d+", check) and len(reason) > 20, f"{key}: {value}"


# --- hadolint -------------------------------------------------------------------------------


def test_hadolint_dockerfile(tools_tmp):
    proc = run([tool("hadolint"), "--no-color", ROOT / "Dockerfile"], env=tool_env(tools_tmp))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_ignores_are_justified():
    """Every `# hadolint ignore=RULE` has a comment within the three lines above that names the rule."""
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    for i, line in enumerate(lines):
        match = re.match(r"\s*#\s*hadolint ignore=([\w,]+)", line)
        if not match:
            continue
        above = " ".join(lines[max(0, i - 3) : i])
        for rule in match.group(1).split(","):
            assert rule in above, f"Dockerfile line {i + 1}: ignore of {rule} without a comment that names it"
