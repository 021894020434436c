"""How many CPUs this process may really use: its affinity, capped by its cgroup's CPU quota.

`os.cpu_count()` counts the node's CPUs and `sched_getaffinity` the CPUs the process may be
scheduled on; neither knows a container's CPU *quota* (a pod's `limits.cpu`), so a pod limited to
2 CPUs on a 64-core node would start 64 search threads and spend its quota being throttled. The
quota is in the cgroup filesystem:

- cgroup v2: `cpu.max` holds `"<quota> <period>"` or `"max <period>"` (microseconds);
- cgroup v1: `cpu.cfs_quota_us` (`-1` for none) and `cpu.cfs_period_us` in the `cpu` controller.

The limit that applies is the smallest along the path from the process's cgroup to the root
(a parent's quota caps its children), so every ancestor present in the mount is read. Inside a
container with its own cgroup namespace the process's path is `/` and the mount's root is its
cgroup. The parsers are pure; `cgroup_cpu_quota` takes the file reader so fixture trees test it,
and `usable_cpus()` is the thin reader of the real files.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

CGROUP_ROOT: Final = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP: Final = Path("/proc/self/cgroup")
_V1_CPU_CONTROLLER: Final = "cpu"

ReadText = Callable[[Path], "str | None"]


def parse_cpu_max(text: str) -> float | None:
    """cgroup v2 `cpu.max` -> CPUs of quota (`"150000 100000"` -> 1.5), None for `max` (no quota)."""
    fields = text.split()
    if not fields or fields[0] == "max":
        return None
    quota = int(fields[0])
    period = int(fields[1]) if len(fields) > 1 else 100_000
    return quota / period if quota > 0 and period > 0 else None


def parse_cfs_quota(quota_text: str, period_text: str) -> float | None:
    """cgroup v1 `cpu.cfs_quota_us` and `cpu.cfs_period_us` -> CPUs of quota, None for `-1`."""
    quota = int(quota_text.strip())
    period = int(period_text.strip())
    return quota / period if quota > 0 and period > 0 else None


@dataclass(frozen=True)
class CgroupPaths:
    """Where this process sits: its cgroup v2 path, and its v1 `cpu` controller path."""

    unified: str | None = None
    v1_cpu: str | None = None


def parse_proc_cgroup(text: str) -> CgroupPaths:
    """`/proc/self/cgroup` (`hierarchy-ID:controller-list:path` per line) -> the paths that matter.

    `0::/path` is the v2 (unified) hierarchy; a v1 line whose controller list holds `cpu` (often
    `cpu,cpuacct`) gives the path inside the `cpu` controller's mount."""
    unified = v1_cpu = None
    for line in text.splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            unified = path
        elif _V1_CPU_CONTROLLER in controllers.split(","):
            v1_cpu = path
    return CgroupPaths(unified=unified, v1_cpu=v1_cpu)


def _ancestors(mount: Path, path: str) -> list[Path]:
    """`mount/path` and each of its parents up to `mount` itself, deepest first."""
    parts = [part for part in path.split("/") if part and part != ".."]
    return [mount.joinpath(*parts[:depth]) for depth in range(len(parts), -1, -1)]


def _smallest(quotas: list[float | None]) -> float | None:
    found = [quota for quota in quotas if quota is not None]
    return min(found) if found else None


def cgroup_cpu_quota(read: ReadText, proc_cgroup: str, root: Path = CGROUP_ROOT) -> float | None:
    """The CPU quota (in CPUs) that applies to the process described by `proc_cgroup`, or None.

    `read(path)` returns a file's text or None when it does not exist. cgroup v2 is tried first
    (`root/<path>/cpu.max`); on a v1 host, the `cpu` controller's mount (`root/cpu`, or
    `root/cpu,cpuacct`) with `cpu.cfs_quota_us`/`cpu.cfs_period_us`."""
    paths = parse_proc_cgroup(proc_cgroup)
    if paths.unified is not None:
        quotas = []
        for folder in _ancestors(root, paths.unified):
            text = read(folder / "cpu.max")
            quotas.append(parse_cpu_max(text) if text is not None else None)
        quota = _smallest(quotas)
        if quota is not None or paths.v1_cpu is None:
            return quota
    if paths.v1_cpu is None:
        return None
    for mount in (root / _V1_CPU_CONTROLLER, root / "cpu,cpuacct", root / "cpuacct,cpu"):
        quotas = []
        for folder in _ancestors(mount, paths.v1_cpu):
            quota_text, period_text = read(folder / "cpu.cfs_quota_us"), read(folder / "cpu.cfs_period_us")
            if quota_text is not None and period_text is not None:
                quotas.append(parse_cfs_quota(quota_text, period_text))
        if quotas:
            return _smallest(quotas)
    return None


def cpus_within(affinity: int, quota: float | None) -> int:
    """min(affinity, ceil(quota)), at least 1: threads that the quota can keep busy."""
    usable = max(affinity, 1)
    if quota is not None:
        usable = min(usable, math.ceil(quota - 1e-9))
    return max(usable, 1)


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii")
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return None


def affinity_cpus() -> int:
    """CPUs the scheduler may run this process on (`os.cpu_count()` where affinity is unknown)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def usable_cpus() -> int:
    """CPUs this process may use: its affinity, capped by its cgroup's CPU quota (v2 or v1)."""
    proc = _read_text(PROC_SELF_CGROUP)
    quota = cgroup_cpu_quota(_read_text, proc) if proc is not None else None
    return cpus_within(affinity_cpus(), quota)
