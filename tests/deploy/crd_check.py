"""Check custom resources against typed models of their CRDs (run with .tools/venv/bin/python).

    .tools/venv/bin/python tests/deploy/crd_check.py FILE.yaml...

kubernetes-validate knows only the built-in kinds; for ServiceMonitor and PrometheusRule
(prometheus-operator) and Certificate (cert-manager) this script validates each object with the
cloudcoil models generated from those CRDs, and also reports fields the models do not know (the
models ignore unknown fields, so a misspelt field would otherwise pass). Prints one line per
object; exits 1 when any object fails.
"""

from __future__ import annotations

import sys
from typing import Any

import yaml
from cloudcoil.models.cert_manager import v1 as cert_manager_v1
from cloudcoil.models.prometheus_operator import v1 as monitoring_v1

MODELS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): monitoring_v1.ServiceMonitor,
    ("monitoring.coreos.com/v1", "PrometheusRule"): monitoring_v1.PrometheusRule,
    ("monitoring.coreos.com/v1", "PodMonitor"): monitoring_v1.PodMonitor,
    ("cert-manager.io/v1", "Certificate"): cert_manager_v1.Certificate,
}


def unknown_fields(given: Any, understood: Any, path: str = "") -> list[str]:
    """Paths present in the input but absent from the model's dump of it."""
    if isinstance(given, dict):
        if not isinstance(understood, dict):
            return [path or "."]
        found = []
        for key, value in given.items():
            if key not in understood:
                found.append(f"{path}.{key}")
            else:
                found += unknown_fields(value, understood[key], f"{path}.{key}")
        return found
    if isinstance(given, list) and isinstance(understood, list):
        return [p for i, (a, b) in enumerate(zip(given, understood, strict=False)) for p in unknown_fields(a, b, f"{path}[{i}]")]
    return []


def main(files: list[str]) -> int:
    failed = 0
    for filename in files:
        with open(filename) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        for doc in docs:
            model = MODELS.get((doc.get("apiVersion"), doc.get("kind")))
            if model is None:
                continue
            name = f"{filename}: {doc['kind']}/{doc['metadata']['name']}"
            try:
                obj = model.model_validate(doc)
            except Exception as e:  # pydantic.ValidationError: report and go on
                print(f"ERROR {name}: {e}")
                failed += 1
                continue
            extra = unknown_fields(doc, obj.model_dump(by_alias=True, exclude_unset=True, mode="json"))
            if extra:
                print(f"ERROR {name}: fields the CRD does not define: {', '.join(extra)}")
                failed += 1
            else:
                print(f"OK {name}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
