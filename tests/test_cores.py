"""How the engine sizes torch threads and worker pools, and where it runs the models: cgroup CPU
limits and the model's size."""

from __future__ import annotations

import os

import pytest

from app.engine.cores import cpu_quota_cores, sized_by, usable_cores
from app.engine.funasr_engine import GEMM_BOUND_WEIGHT_BYTES, models_in_processes, process_torch_threads, weight_bytes

AFFINITY = len(os.sched_getaffinity(0))


def cgroup_v2(root, line: str):
    (root / "cpu.max").write_text(line + "\n")
    return root


def cgroup_v1(root, controller: str, quota_us: int, period_us: int = 100000):
    (root / controller).mkdir()
    (root / controller / "cpu.cfs_quota_us").write_text(f"{quota_us}\n")
    (root / controller / "cpu.cfs_period_us").write_text(f"{period_us}\n")
    return root


def test_cgroup_v2_limit_is_quota_over_period(tmp_path):
    assert cpu_quota_cores(cgroup_v2(tmp_path, "250000 100000")) == 2.5


def test_cgroup_v2_without_limit(tmp_path):
    root = cgroup_v2(tmp_path, "max 100000")
    assert cpu_quota_cores(root) is None
    assert usable_cores(root) == AFFINITY


@pytest.mark.parametrize("controller", ["cpu", "cpu,cpuacct"])
def test_cgroup_v1_limit(tmp_path, controller):
    assert cpu_quota_cores(cgroup_v1(tmp_path, controller, 150000)) == 1.5


def test_cgroup_v1_without_limit(tmp_path):
    assert cpu_quota_cores(cgroup_v1(tmp_path, "cpu", -1)) is None


def test_no_cgroup_files_means_the_affinity(tmp_path):
    assert cpu_quota_cores(tmp_path) is None
    assert usable_cores(tmp_path) == AFFINITY


def test_a_limit_rounds_down_and_never_below_one(tmp_path):
    # A pool one thread wider than the quota is throttled every period; half a core still gets one.
    assert usable_cores(cgroup_v2(tmp_path, "50000 100000")) == 1
    if AFFINITY >= 2:
        assert usable_cores(cgroup_v2(tmp_path, "190000 100000")) == 1
        assert usable_cores(cgroup_v2(tmp_path, "200000 100000")) == 2


def test_a_limit_above_the_affinity_changes_nothing(tmp_path):
    root = cgroup_v2(tmp_path, f"{(AFFINITY + 8) * 100000} 100000")
    assert usable_cores(root) == AFFINITY
    assert sized_by(root) == (AFFINITY, f"{AFFINITY} usable cores ({AFFINITY} in the CPU affinity, cgroup CPU limit {AFFINITY + 8})")


def model_dir(tmp_path, weight: int):
    (tmp_path / "model.pt").touch()
    os.truncate(tmp_path / "model.pt", weight)  # sparse: no disk needed for a "large" model
    (tmp_path / "config.yaml").write_text("x" * 1000)  # not a weight file
    return str(tmp_path)


def test_weight_bytes_counts_weight_files_only(tmp_path):
    assert weight_bytes(model_dir(tmp_path, 12345)) == 12345
    assert weight_bytes(tmp_path / "missing") == 0


def test_a_large_asr_model_on_cpu_takes_every_core(tmp_path):
    large = model_dir(tmp_path, GEMM_BOUND_WEIGHT_BYTES)
    assert process_torch_threads("asr", large, "cpu", 8, configured=0) == 8
    # On a GPU the GEMMs are not on the cores; punctuation keeps its quarter whatever its size.
    assert process_torch_threads("asr", large, "cuda:0", 8, configured=0) == 4
    assert process_torch_threads("punc", large, "cpu", 8, configured=0) == 2


def test_a_small_asr_model_takes_half_the_cores(tmp_path):
    small = model_dir(tmp_path, GEMM_BOUND_WEIGHT_BYTES - 1)
    assert process_torch_threads("asr", small, "cpu", 8, configured=0) == 4
    assert process_torch_threads("asr", small, "cpu", 1, configured=0) == 1
    assert process_torch_threads("punc", small, "cpu", 2, configured=0) == 1


def test_configured_threads_win(tmp_path):
    large = model_dir(tmp_path, GEMM_BOUND_WEIGHT_BYTES)
    assert process_torch_threads("asr", large, "cpu", 8, configured=3) == 3
    assert process_torch_threads("punc", large, "cpu", 8, configured=3) == 3


def test_auto_puts_a_large_asr_model_in_a_process_on_cpu(tmp_path):
    (tmp_path / "large").mkdir()
    (tmp_path / "small").mkdir()
    large, small = model_dir(tmp_path / "large", GEMM_BOUND_WEIGHT_BYTES), model_dir(tmp_path / "small", 1 << 20)
    assert models_in_processes("auto", "cpu", large)
    assert not models_in_processes("auto", "cpu", small)
    assert models_in_processes("auto", "cuda:0", small)  # on a GPU whatever the size
    assert not models_in_processes("off", "cuda:0", large)
    assert models_in_processes("on", "cpu", small)
