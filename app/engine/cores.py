"""How many cores this process may really use: its CPU affinity, capped by a cgroup CPU quota.

In a pod a CPU limit is a CFS quota, not a cpuset: the affinity lists every core of the node. Torch
threads and worker pools sized by a 64-core node under a 4-CPU limit would spend their time throttled.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def cpu_quota_cores(root: Path = CGROUP_ROOT) -> float | None:
    """The CPU limit of this process's cgroup in cores (quota / period), or None when there is none.

    A container sees its own cgroup at the root (cgroup namespaces, or the runtime's bind mount
    on cgroup v1), so the files at the top are the container's own.
    """
    try:  # cgroup v2: "max 100000" or "400000 100000"
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    for controller in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):  # cgroup v1: -1 for no quota
        try:
            quota_us = int((root / controller / "cpu.cfs_quota_us").read_text())
            period_us = int((root / controller / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us
    return None


def usable_cores(root: Path = CGROUP_ROOT) -> int:
    """Cores for sizing thread and process pools: the affinity, at most the quota rounded down (at least 1).

    Down, as Go's automaxprocs does: a pool one thread wider than the quota is throttled every period.
    """
    return sized_by(root)[0]


def sized_by(root: Path = CGROUP_ROOT) -> tuple[int, str]:
    """``usable_cores``, and for the startup log what it was found from (one read of the cgroup)."""
    affinity = len(os.sched_getaffinity(0))
    quota = cpu_quota_cores(root)
    if quota is None:
        return affinity, f"{affinity} usable cores ({affinity} in the CPU affinity, no cgroup CPU limit)"
    cores = max(1, min(affinity, math.floor(quota)))
    return cores, f"{cores} usable cores ({affinity} in the CPU affinity, cgroup CPU limit {quota:g})"
