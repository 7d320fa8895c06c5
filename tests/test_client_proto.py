"""The contract clients are generated from: `buf lint` clean, no breaking change against main or the last release.

buf comes from `bash scripts/install-buf.sh` (scripts/test.sh runs it); buf.yaml says which
rules apply and why the legacy proto is not linted.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUF = ROOT / ".tools" / "bin" / "buf"
V1 = "proto/paraformer/asr/v1/asr.proto"


def buf(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    if not BUF.exists():
        pytest.fail(f"buf is not installed at {BUF}: run bash scripts/install-buf.sh")
    return subprocess.run([str(BUF), *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()


def test_v1_proto_is_buf_lint_clean():
    proc = buf("lint", "--error-format", "text")
    assert proc.returncode == 0, f"buf lint:\n{proc.stdout}{proc.stderr}"
    # The legacy proto is skipped on purpose (buf.yaml); everything else is checked.
    listed = buf("ls-files").stdout.split()
    assert V1 in listed and "proto/asr_service.proto" in listed


def baselines() -> dict[str, str]:
    """What the protos must stay compatible with: the main branch and the newest release tag (v*)."""
    found = {}
    for ref in ("refs/heads/main", "refs/remotes/origin/main"):
        sha = git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
        if sha:
            found["main"] = sha
            break
    tag = git("describe", "--tags", "--abbrev=0", "--match", "v[0-9]*", "HEAD")
    if tag:
        found[tag] = git("rev-parse", f"{tag}^{{commit}}")
    return found


def against(sha: str) -> str:
    # Commits from before buf.yaml existed: point buf at the proto root itself.
    has_config = subprocess.run(["git", "cat-file", "-e", f"{sha}:buf.yaml"], cwd=ROOT, capture_output=True).returncode == 0
    return f".git#ref={sha}" + ("" if has_config else ",subdir=proto")


def test_no_breaking_change_against_main_or_the_last_release():
    found = baselines()
    if "main" not in found:
        pytest.fail("no main branch to compare the protos with: git fetch origin main:main")
    for name, sha in found.items():
        proc = buf("breaking", "--against", against(sha))
        assert proc.returncode == 0, f"breaking change against {name} ({sha[:12]}):\n{proc.stdout}{proc.stderr}"


def test_the_breaking_check_catches_a_renumbered_field(tmp_path):
    """Guard the guard: a copy of the protos with one field renumbered must fail `buf breaking`."""
    shutil.copytree(ROOT / "proto", tmp_path / "proto")
    shutil.copy(ROOT / "buf.yaml", tmp_path / "buf.yaml")
    path = tmp_path / V1
    text, count = re.subn(r"^(\s+string transcript = )\d+;", r"\g<1>99;", path.read_text(), count=1, flags=re.M)
    assert count == 1
    path.write_text(text)
    proc = buf("breaking", str(tmp_path), "--against", str(ROOT))
    assert proc.returncode != 0 and "transcript" in proc.stdout, proc.stdout + proc.stderr
