"""CPU-quota-aware thread counts: the cgroup v1/v2 parsers on fixture trees, and the reader for real.

The real test makes a cgroup v1 `cpu` child with a 0.5-CPU quota, moves a fresh Python process
into it and asks that process how many CPUs it may use (root and a v1 `cpu` mount needed; this
project's build host has both).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from shardrec.serving import cpus

FIXTURES = Path(__file__).parent / "fixtures" / "cgroups"


def _reader(root: Path) -> cpus.ReadText:
    def read(path: Path) -> str | None:
        target = root / path.relative_to("/")
        return target.read_text(encoding="ascii") if target.is_file() else None

    return read


def _quota_of(tree: str) -> float | None:
    root = FIXTURES / tree
    proc = (root / "proc-self-cgroup").read_text(encoding="ascii")
    return cpus.cgroup_cpu_quota(_reader(root), proc)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("max 100000\n", None), ("150000 100000\n", 1.5), ("50000 100000", 0.5), ("200000", 2.0), ("", None)],
)
def test_cpu_max_parses_quota_and_period(text: str, expected: float | None) -> None:
    assert cpus.parse_cpu_max(text) == expected


@pytest.mark.parametrize(
    ("quota", "period", "expected"),
    [("-1\n", "100000\n", None), ("250000\n", "100000\n", 2.5), ("50000", "50000", 1.0)],
)
def test_cfs_quota_parses_v1_files(quota: str, period: str, expected: float | None) -> None:
    assert cpus.parse_cfs_quota(quota, period) == expected


def test_proc_self_cgroup_gives_the_unified_and_the_v1_cpu_paths() -> None:
    hybrid = "12:pids:/a\n4:cpu,cpuacct:/kubepods/x\n0::/user.slice\n"
    assert cpus.parse_proc_cgroup(hybrid) == cpus.CgroupPaths(unified="/user.slice", v1_cpu="/kubepods/x")
    assert cpus.parse_proc_cgroup("0::/\n") == cpus.CgroupPaths(unified="/")
    assert cpus.parse_proc_cgroup("3:cpuacct:/a\n2:cpu:/b\n") == cpus.CgroupPaths(v1_cpu="/b")


def test_v2_takes_the_smallest_quota_along_the_path() -> None:
    # The container's scope says 2.5, its pod 4, the slice above has none: 2.5 applies.
    assert _quota_of("v2") == 2.5


def test_v2_without_a_quota_is_none() -> None:
    assert _quota_of("v2-unlimited") is None


def test_v1_reads_the_cpu_cpuacct_mount_and_takes_the_smallest_ancestor() -> None:
    # The container's own cgroup has 0.5, its pod 3, the rest -1: 0.5 applies.
    assert _quota_of("v1") == 0.5


def test_no_files_means_no_quota() -> None:
    assert cpus.cgroup_cpu_quota(lambda _: None, "0::/\n4:cpu:/x\n") is None


@pytest.mark.parametrize(
    ("affinity", "quota", "expected"),
    [(64, 2.0, 2), (64, 2.5, 3), (2, 8.0, 2), (4, None, 4), (8, 0.5, 1), (0, None, 1), (16, 3.0000000001, 3)],
)
def test_usable_cpus_is_min_of_affinity_and_ceil_quota(
    affinity: int, quota: float | None, expected: int
) -> None:
    assert cpus.cpus_within(affinity, quota) == expected


def test_reader_on_this_host_agrees_with_its_own_files() -> None:
    """Whatever this host is (v1, v2, hybrid), the thin reader never exceeds the affinity."""
    assert 1 <= cpus.usable_cpus() <= len(os.sched_getaffinity(0))


V1_CPU = Path("/sys/fs/cgroup/cpu")


@pytest.mark.integration
@pytest.mark.skipif(
    os.geteuid() != 0 or not (V1_CPU / "cpu.cfs_quota_us").is_file(),
    reason="needs root and a cgroup v1 cpu controller mounted at /sys/fs/cgroup/cpu",
)
def test_a_process_in_a_half_cpu_v1_cgroup_uses_one_thread() -> None:
    group = V1_CPU / f"shardrec-test-{os.getpid()}"
    group.mkdir()
    try:
        (group / "cpu.cfs_period_us").write_text("100000", encoding="ascii")
        (group / "cpu.cfs_quota_us").write_text("50000", encoding="ascii")
        script = (
            "import os, sys\n"
            f"open({str(group / 'cgroup.procs')!r}, 'w').write(str(os.getpid()))\n"
            "from shardrec.serving import cpus\n"
            "print(len(os.sched_getaffinity(0)), cpus.usable_cpus())\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
        ).stdout.split()
        affinity, usable = int(out[0]), int(out[1])
        assert usable == 1, f"affinity {affinity}, quota 0.5 CPU: expected 1 thread, got {usable}"
    finally:
        group.rmdir()
