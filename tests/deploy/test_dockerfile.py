"""What the Dockerfile must do, read from its text (there is no Docker engine to build it here).

hadolint and checkov run on it in test_tools.py.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.conftest import ROOT

pytestmark = pytest.mark.deploy

DOCKERFILE = (ROOT / "Dockerfile").read_text()
# Instructions with their continuation lines joined, comments dropped.
INSTRUCTIONS = [
    line.strip() for line in re.sub(r"\\\n", " ", "\n".join(x for x in DOCKERFILE.splitlines() if not x.lstrip().startswith("#"))).splitlines() if line.strip()
]


def stages() -> list[list[str]]:
    result: list[list[str]] = []
    for instruction in INSTRUCTIONS:
        if instruction.startswith("FROM "):
            result.append([])
        if result:
            result[-1].append(instruction)
    return result


def test_multi_stage_final_stage_has_no_compiler():
    all_stages = stages()
    assert len(all_stages) >= 3
    final = " ".join(all_stages[-1])
    assert "gcc" not in final and "build-essential" not in final and "pip install" not in final
    assert "COPY --from=build /opt/venv /opt/venv" in final


def test_cuda_base_and_cuda_torch_installed_before_the_package():
    assert re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:13\.\d+\.\d+-base-ubuntu\d\d\.\d\d$", DOCKERFILE, re.M)
    assert re.search(r"^ARG TORCH_VERSION=2\.13\.0$", DOCKERFILE, re.M)
    assert re.search(r"^ARG TORCH_INDEX_URL=https://download\.pytorch\.org/whl/cu130$", DOCKERFILE, re.M)
    build = " ".join(stages()[1])
    torch_at = build.index('"torch==${TORCH_VERSION}"')
    package_at = build.index("-c requirements.lock .")
    assert torch_at < package_at, "torch (CUDA build) must be installed before the package"
    torch_install = build[build.rindex("RUN", 0, torch_at) : torch_at]
    assert '--index-url "${TORCH_INDEX_URL}"' in torch_install and "-c requirements.lock" in torch_install


def test_requirements_lock_leaves_torch_to_the_dockerfile():
    lock = (ROOT / "requirements.lock").read_text().splitlines()
    assert not [line for line in lock if re.match(r"torch(==|\s|$)", line)], "requirements.lock pins torch; the image needs its CUDA build"


def test_runs_as_non_root_with_tini_and_serve():
    final = stages()[-1]
    (user,) = [i for i in final if i.startswith("USER ")]
    uid = user.split()[1].split(":")[0]
    assert uid.isdigit() and int(uid) >= 10000, "numeric non-root USER, so that runAsNonRoot can verify it"
    (entrypoint,) = [i for i in final if i.startswith("ENTRYPOINT ")]
    assert json.loads(entrypoint.removeprefix("ENTRYPOINT ")) == ["/usr/bin/tini", "--", "paraformer-asr"]
    (cmd,) = [i for i in final if i.startswith("CMD ")]
    assert json.loads(cmd.removeprefix("CMD ")) == ["serve"]
    env = " ".join(i for i in final if i.startswith("ENV "))
    assert "ASR_MODEL_CACHE_DIR=/models" in env and "MODELSCOPE_CACHE=/models" in env


def test_dockerignore_admits_what_the_build_copies():
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines() if p.strip() and not p.startswith("#")]
    assert patterns[0] == "*", ".dockerignore should be an allow-list"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    for instruction in INSTRUCTIONS:
        if instruction.startswith("COPY ") and "--from=" not in instruction:
            *sources, _dest = instruction.split()[1:]
            for source in sources:
                assert source.rstrip("/") in allowed, f"{source} is copied but excluded by .dockerignore"
                assert (ROOT / source).exists(), f"{source} does not exist"


def _healthcheck_command() -> list[str]:
    (instruction,) = [i for i in INSTRUCTIONS if i.startswith("HEALTHCHECK ")]
    return json.loads(instruction[instruction.index("CMD ") + 4 :])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("health_port", [False, True], ids=["grpc-port", "health-port"])
def test_healthcheck_is_unhealthy_without_a_server(health_port):
    """The HEALTHCHECK command, run as the image would: exit 1 (never 2, which Docker reserves) and the right port."""
    port, other = _free_port(), _free_port()
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", ASR_PORT=str(other))
    env.pop("ASR_HEALTH_PORT", None)
    if health_port:
        env["ASR_HEALTH_PORT"] = str(port)
    else:
        env["ASR_PORT"] = str(port)
    proc = subprocess.run(_healthcheck_command(), capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"127.0.0.1:{port}" in proc.stderr, proc.stderr
