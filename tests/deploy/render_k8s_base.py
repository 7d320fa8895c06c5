"""Regenerate the plain manifests in k8s/ from the Helm chart's defaults.

    python tests/deploy/render_k8s_base.py            (needs .tools/bin/helm: bash scripts/install-deploy-tools.sh)

k8s/ is the chart rendered with its default values as release "paraformer-asr" in namespace
"paraformer-asr", without the helm test pod and the Helm-only labels, one file per object, comments
kept. test_k8s_base_equals_chart_defaults fails when the two drift apart; this script brings k8s/
back in line. kustomization.yaml, namespace.yaml, .checkov.yaml and README.md are written by hand.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "paraformer-asr"
K8S = ROOT / "k8s"
RELEASE = "paraformer-asr"
NAMESPACE = "paraformer-asr"

# Chart template -> file in k8s/ (the objects the chart renders with its defaults).
FILES = {
    "serviceaccount.yaml": "serviceaccount.yaml",
    "service.yaml": "service.yaml",
    "service-headless.yaml": "service-headless.yaml",
    "deployment.yaml": "deployment.yaml",
    "pdb.yaml": "poddisruptionbudget.yaml",
    "networkpolicy.yaml": "networkpolicy.yaml",
}


def render_chart_defaults(helm: Path) -> str:
    return subprocess.run(
        [str(helm), "template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--set", "tests.enabled=false"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def to_plain(rendered: str) -> dict[str, str]:
    """Split the rendering into files, dropping Helm's source comments and Helm-only labels."""
    files: dict[str, str] = {}
    for doc in re.split(r"^---\n", rendered, flags=re.M):
        source = re.search(r"^# Source: paraformer-asr/templates/(\S+)$", doc, re.M)
        if not source:
            continue
        template = source.group(1)
        if template not in FILES:
            raise SystemExit(f"the chart's defaults render {template}, which k8s/ does not know: add it to FILES")
        body = re.sub(r"^# Source: .*\n", "", doc, flags=re.M)
        body = re.sub(r"^\s*helm\.sh/chart: .*\n", "", body, flags=re.M)
        body = body.replace("app.kubernetes.io/managed-by: Helm", "app.kubernetes.io/managed-by: kustomize")
        files[FILES[template]] = body.strip("\n") + "\n"
    return files


def main() -> int:
    helm = ROOT / ".tools" / "bin" / "helm"
    if not helm.exists():
        print("no .tools/bin/helm: run bash scripts/install-deploy-tools.sh", file=sys.stderr)
        return 1
    for name, text in to_plain(render_chart_defaults(helm)).items():
        (K8S / name).write_text(text)
        print(f"wrote k8s/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
