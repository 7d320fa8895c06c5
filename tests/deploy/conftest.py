"""Shared fixtures of the deploy checks: the tools in .tools/ and the chart rendered once per values set.

The tools come from `bash scripts/install-deploy-tools.sh`. A missing tool fails the test that
needs it (it does not skip): CI runs the script before the tests.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "paraformer-asr"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
K8S = ROOT / "k8s"
TOOLS = ROOT / ".tools"
INSTALL_HINT = "run bash scripts/install-deploy-tools.sh"

# The Kubernetes versions every manifest is validated against: the oldest the chart supports
# (Chart.yaml kubeVersion) and the one of the kubectl/helm the project installs.
KUBERNETES_VERSIONS = ("1.30.0", "1.35.0")
RELEASE = "asr"
NAMESPACE = "asr-ci"

# Where each tool lives; .tools/bin links them all.
_TOOL_PATHS = {
    "helm": [TOOLS / "bin" / "helm"],
    "kubectl": [TOOLS / "bin" / "kubectl"],
    "kubernetes-validate": [TOOLS / "bin" / "kubernetes-validate", TOOLS / "venv" / "bin" / "kubernetes-validate"],
    "hadolint": [TOOLS / "bin" / "hadolint", TOOLS / "venv" / "bin" / "hadolint"],
    "checkov": [TOOLS / "bin" / "checkov", TOOLS / "checkov-venv" / "bin" / "checkov"],
    "tools-python": [TOOLS / "venv" / "bin" / "python"],
}


def tool(name: str) -> Path:
    """Path of an installed tool; fails the test with the install command when it is missing."""
    for path in _TOOL_PATHS[name]:
        if path.exists() and os.access(path, os.X_OK):
            return path
    pytest.fail(f"{name} is not installed in {TOOLS} ({INSTALL_HINT})", pytrace=False)


def tool_env(tmp: Path) -> dict[str, str]:
    """Environment for the tools: .tools/bin first on PATH, Helm's state in a temp dir."""
    env = dict(os.environ)
    env["PATH"] = f"{TOOLS / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    for var in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"):
        env[var] = str(tmp / var.lower())
    return env


def run(cmd: list[str | Path], env: dict[str, str] | None = None, cwd: Path = ROOT, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)


@dataclass
class Rendering:
    """One values set rendered by `helm template`."""

    name: str
    path: Path
    text: str
    docs: list[dict] = field(default_factory=list)

    def of_kind(self, kind: str) -> list[dict]:
        return [d for d in self.docs if d.get("kind") == kind]

    def one(self, kind: str, name_suffix: str = "") -> dict:
        found = [d for d in self.of_kind(kind) if d["metadata"]["name"].endswith(name_suffix)]
        assert len(found) == 1, f"{self.name}: expected one {kind} named *{name_suffix}, found {[d['metadata']['name'] for d in found]}"
        return found[0]

    @property
    def deployment(self) -> dict:
        return self.one("Deployment")

    @property
    def server(self) -> dict:
        (container,) = [c for c in self.deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "server"]
        return container

    @property
    def env(self) -> dict[str, str]:
        return {e["name"]: e.get("value") for e in self.server.get("env", [])}


@pytest.fixture(scope="session")
def tools_tmp(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("deploy-tools")


@pytest.fixture(scope="session")
def renderings(tools_tmp) -> dict[str, Rendering]:
    """Every ci/*.yaml values set rendered once (release "asr" in namespace "asr-ci")."""
    helm = tool("helm")
    out_dir = tools_tmp / "rendered"
    out_dir.mkdir()
    result: dict[str, Rendering] = {}
    for values in CI_VALUES:
        proc = run([helm, "template", RELEASE, CHART, "--namespace", NAMESPACE, "-f", values], env=tool_env(tools_tmp))
        assert proc.returncode == 0, f"helm template -f {values.name} failed:\n{proc.stderr}"
        path = out_dir / values.name
        path.write_text(proc.stdout)
        docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
        result[values.stem] = Rendering(values.stem, path, proc.stdout, docs)
    return result


@pytest.fixture(scope="session")
def kustomized(tools_tmp) -> Rendering:
    """`kubectl kustomize k8s/`."""
    proc = run([tool("kubectl"), "kustomize", K8S], env=tool_env(tools_tmp))
    assert proc.returncode == 0, f"kubectl kustomize k8s/ failed:\n{proc.stderr}"
    path = tools_tmp / "kustomized.yaml"
    path.write_text(proc.stdout)
    return Rendering("k8s", path, proc.stdout, [d for d in yaml.safe_load_all(proc.stdout) if d])
