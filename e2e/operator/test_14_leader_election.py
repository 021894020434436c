"""Scenario 13: two operator replicas with leader election; the leader is killed mid-rollout.

Both processes run `--leader-election` against the real API server (short timings: 6 s lease,
4 s renew deadline, 1 s retry). Only the Lease holder reconciles; the other waits and answers its
liveness probe. A version rollout starts, the leader is SIGKILLed by PID once the new layout's
shards exist, and the standby takes the Lease after it expires and finishes the rollout. The
takeover time (kill -> Lease holder changed) is printed.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from shardrec_operator.reconcile import resources as kinds

pytestmark = [pytest.mark.controlplane]

LEASE = "shardrec-operator"
ELECTION = (
    "--leader-election",
    "--lease-duration-seconds=6",
    "--renew-deadline-seconds=4",
    "--retry-period-seconds=1",
)


def _identity(operator: Any) -> str:
    return f"{socket.gethostname()}-{operator.proc.pid}"


def _holder(scenario: Any) -> str:
    lease = scenario.kube.get(f"/apis/coordination.k8s.io/v1/namespaces/{scenario.namespace}/leases/{LEASE}")
    return str(((lease or {}).get("spec") or {}).get("holderIdentity") or "")


def _log(operator: Any) -> str:
    return str(operator.log_path.read_text(errors="replace"))


def test_standby_takes_over_a_killed_leader_and_finishes_the_rollout(
    scenario: Any, harness: Any, tmp_path: Path
) -> None:
    scenario.operator.stop()  # the fixture's standalone operator: replaced by two electing ones
    first = harness.OperatorProcess(
        scenario.kube.cp.kubeconfig, scenario.namespace, tmp_path / "operator-a.log", ELECTION
    )
    second = harness.OperatorProcess(
        scenario.kube.cp.kubeconfig, scenario.namespace, tmp_path / "operator-b.log", ELECTION
    )
    measured: dict[str, float] = {}
    layouts: dict[str, str] = {}
    try:
        first.start()
        harness.wait_for("the first operator to lead", lambda: _holder(scenario) == _identity(first), 30)
        second.start()  # liveness answers while it waits
        scenario.operator = first

        def rollout_then_kill_the_leader() -> None:
            scenario.patch_spec({"index": {"version": "v2"}})
            status = scenario.wait_status("the v2 target", lambda s: s.get("targetVersion") == "v2")
            layouts["v2"] = status["targetLayout"]
            harness.wait_for(
                "the new layout's shards to exist",
                lambda: len(scenario.names(kinds.STATEFUL_SET, f"shardrec.io/layout={layouts['v2']}")) == 2,
            )
            assert scenario.active_layout() != layouts["v2"], "the rollout finished before the kill"
            first.kill()
            killed = time.monotonic()
            harness.wait_for(
                "the standby to take the Lease", lambda: _holder(scenario) == _identity(second), 60
            )
            measured["takeover_s"] = time.monotonic() - killed
            scenario.operator = second

        def standby_finishes() -> None:
            final = scenario.wait_ready("v2")
            assert final["activeLayout"] == layouts["v2"]
            harness.wait_for(
                "the previous layout to be deleted",
                lambda: scenario.layouts_running() == {layouts["v2"]},
                timeout=90,
            )

        scenario.create()
        scenario.run(
            [
                ("Ready on v1 under the first leader", lambda: scenario.wait_ready("v1")),
                ("roll to v2 and kill the leader mid-rollout", rollout_then_kill_the_leader),
                ("the standby finishes the rollout", standby_finishes),
            ]
        )
        standby_log = _log(second)
        before, took, after = standby_log.partition("took Lease")
        assert took, "the standby never took the Lease"
        assert "Reconciled" not in before and "Applied" not in before, "the standby reconciled while waiting"
        assert "Reconciled" in after
        lease_window = 6 + 1  # lease duration + one retry
        print(
            f"leader election: takeover {measured['takeover_s']:.1f}s after SIGKILL (bound {lease_window}s)"
        )
        scenario.log.append(f"takeover {measured['takeover_s']:.1f}s after SIGKILL")
    finally:
        first.stop()
        second.stop()


def test_a_stopped_leader_hands_the_lease_over_at_once(scenario: Any, harness: Any, tmp_path: Path) -> None:
    scenario.operator.stop()
    first = harness.OperatorProcess(
        scenario.kube.cp.kubeconfig, scenario.namespace, tmp_path / "operator-a.log", ELECTION
    )
    second = harness.OperatorProcess(
        scenario.kube.cp.kubeconfig, scenario.namespace, tmp_path / "operator-b.log", ELECTION
    )
    try:
        first.start()
        harness.wait_for("the first operator to lead", lambda: _holder(scenario) == _identity(first), 30)
        second.start()
        first.stop()  # SIGTERM: kopf stops, the Lease is released
        stopped = time.monotonic()
        harness.wait_for("the standby to lead", lambda: _holder(scenario) == _identity(second), 30)
        print(f"leader election: handover {time.monotonic() - stopped:.1f}s after SIGTERM returned")
        assert "released Lease" in _log(first)
    finally:
        first.stop()
        second.stop()


def _child(pid: int) -> int:
    """The one child of `pid` (unshare's forked child: the operator, PID 1 of its namespace)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    assert len(children) == 1, f"{pid} has children {children}"
    return int(children[0])


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare")
def test_a_standby_as_pid_1_stops_at_once_on_sigterm(scenario: Any, harness: Any, tmp_path: Path) -> None:
    """In a container the operator is PID 1, and the kernel does not apply a signal's default action
    to PID 1: a SIGTERM it has no handler for is dropped. kopf handles SIGTERM, but a standby waits
    for the Lease before kopf starts, so it would sit out the pod's whole grace period and be
    SIGKILLed (30 s by default: every operator rollout, node drain and uninstall waited that long
    for the standby). The standby here runs as PID 1 of its own PID namespace, as in a pod."""
    scenario.operator.stop()
    leader = harness.OperatorProcess(
        scenario.kube.cp.kubeconfig, scenario.namespace, tmp_path / "operator-a.log", ELECTION
    )
    standby = harness.OperatorProcess(
        scenario.kube.cp.kubeconfig,
        scenario.namespace,
        tmp_path / "operator-b.log",
        ELECTION,
        argv_prefix=("unshare", "--pid", "--fork", "--kill-child"),
    )
    try:
        leader.start()
        harness.wait_for("the first operator to lead", lambda: _holder(scenario) == _identity(leader), 30)
        standby.start()  # its liveness answers while it waits for the Lease
        assert standby.proc is not None
        operator_pid = _child(standby.proc.pid)
        (pids,) = [
            line
            for line in Path(f"/proc/{operator_pid}/status").read_text().splitlines()
            if line.startswith("NSpid:")
        ]
        assert pids.split()[-1] == "1", f"not PID 1 of its namespace: {pids}"  # NSpid: <ours> <its own>
        os.kill(operator_pid, signal.SIGTERM)
        sent = time.monotonic()
        harness.wait_for("the standby to exit on SIGTERM", lambda: standby.proc.poll() is not None, 10)
        print(f"standby as PID 1: exited {time.monotonic() - sent:.1f}s after SIGTERM")
        assert standby.proc.returncode == 0, _log(standby)
        assert "SIGTERM while waiting for the Lease" in _log(standby)
        assert _holder(scenario) == _identity(leader), "the leader lost the Lease to a stopping standby"
    finally:
        standby.stop()
        leader.stop()
