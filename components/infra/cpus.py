"""How many CPUs this process may use: the default worker count of every step that fans out
(validate, convert, evaluate, predict-batch).

os.cpu_count() counts the node's CPUs, which a pod does not get: Kubernetes bounds a container
by its cgroup's CPU quota (cpu.max in cgroup v2, cpu.cfs_quota_us in v1), and taskset or a
cpuset by its affinity. Starting a worker per node CPU in a 2-CPU pod would only add memory and
context switches.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def _quota(cgroup: Path) -> float | None:
    """The cgroup's CPU quota in CPUs, or None where there is none (or none can be read)."""
    try:
        quota, period = (cgroup / "cpu.max").read_text().split()[:2]  # v2: "max 100000"
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:  # v1
        quota = int((cgroup / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((cgroup / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 or period <= 0 else quota / period
    except (OSError, ValueError):
        return None


def usable_cpus(cgroup: Path = CGROUP) -> int:
    """CPUs this process may run on (its affinity), at most its cgroup's quota rounded up."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    quota = _quota(cgroup)
    return max(1, min(cpus, math.ceil(quota)) if quota else cpus)
