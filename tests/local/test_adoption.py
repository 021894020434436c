"""A new supervisor and what a dead one left running: the pure decisions (adopt, replace, leave a
reused pid alone), the identity of a process (pid and start time), and the files they read."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from shardrec.api.v1alpha1 import LayoutStatus, RecommenderCluster, RecommenderClusterStatus
from shardrec.tools.cli.local_cmd import for_local_runtime
from shardrec.tools.cli.main import CliError
from shardrec.tools.local.processes import (
    STATE_DIR_ENV,
    Adoption,
    ProcessIdentity,
    ProcStat,
    adoption_decision,
    identity_of,
    is_alive,
    parse_stat,
    processes_of_state_dir,
    signal_verified,
)
from shardrec.tools.local.state import StateDir
from shardrec.tools.local.status_table import render_status
from shardrec.tools.local.supervisor import (
    LocalSupervisor,
    kill_recorded_children,
    recorded_processes,
    restart_rollout_clocks,
)

RECORDED = ProcessIdentity(pid=4242, start_time=1000)


def test_stat_fields_are_counted_after_the_last_parenthesis_of_the_command_name() -> None:
    # field 2 may hold spaces and parentheses; state is field 3, session 6, starttime 22
    fields = ["S", "1", "2", "77"] + [str(n) for n in range(7, 22)] + ["123456", "0", "0"]
    text = "4242 (evil) (name) " + " ".join(fields) + "\n"
    assert parse_stat(text) == ProcStat(state="S", session=77, start_time=123456)
    assert parse_stat("4242 (truncated") is None
    assert parse_stat("4242 (x) S 1 2") is None


@pytest.mark.parametrize(
    ("current", "recorded_digest", "wanted_digest", "expected"),
    [
        (ProcStat("S", 4242, 1000), "a", "a", Adoption.ADOPT),
        (ProcStat("R", 4242, 1000), "a", "b", Adoption.REPLACE),  # spec changed while no one watched
        (ProcStat("S", 4242, 1000), None, "a", Adoption.REPLACE),  # a table without digests
        (ProcStat("S", 4242, 1000), "a", None, Adoption.REPLACE),  # nothing here would run it
        (ProcStat("S", 4242, 1001), "a", "a", Adoption.GONE),  # the pid now names another process
        (ProcStat("Z", 4242, 1000), "a", "a", Adoption.GONE),  # it exited
        (None, "a", "a", Adoption.GONE),
    ],
)
def test_adoption_decision(
    current: ProcStat | None, recorded_digest: str | None, wanted_digest: str | None, expected: Adoption
) -> None:
    assert adoption_decision(RECORDED, current, recorded_digest, wanted_digest) is expected


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_a_pid_with_another_start_time_is_never_signalled(sleeper: subprocess.Popen[bytes]) -> None:
    real = identity_of(sleeper.pid)
    assert real is not None and is_alive(real)
    reused = ProcessIdentity(sleeper.pid, real.start_time + 1)  # what a reused pid looks like
    assert not is_alive(reused)
    assert not signal_verified(reused, signal.SIGKILL)
    assert sleeper.poll() is None, "a pid whose start time differs was signalled"
    assert signal_verified(real, signal.SIGTERM)
    assert sleeper.wait(timeout=10) == -signal.SIGTERM


def _runtime(state: StateDir, rows: list[dict[str, object]]) -> None:
    state.ensure()
    state.runtime_file.write_text(json.dumps({"processes": rows}))


def test_cleanup_after_a_dead_supervisor_spares_a_reused_pid(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    state = StateDir(tmp_path / "state")
    real = identity_of(sleeper.pid)
    assert real is not None
    _runtime(state, [{"name": "router", "pid": sleeper.pid, "start_time": real.start_time + 7, "port": 1}])
    assert kill_recorded_children(state) == 0
    assert sleeper.poll() is None, "the cleanup killed a process the table did not name"


def test_cleanup_stops_a_recorded_child_and_an_unrecorded_marked_one(tmp_path: Path) -> None:
    """The table names one child; a second carries the state folder but is missing from the table
    (a full disk kept it from being rewritten): both are stopped."""
    state = StateDir(tmp_path / "state")
    env = {**os.environ, STATE_DIR_ENV: str(state.root)}
    code = "import time; time.sleep(60)"
    recorded = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    unrecorded = subprocess.Popen([sys.executable, "-c", code], start_new_session=True, env=env)
    try:
        identity = identity_of(recorded.pid)
        assert identity is not None
        _runtime(state, [{"name": "router", "pid": recorded.pid, "start_time": identity.start_time}])
        assert [i.pid for i, _ in processes_of_state_dir(state.root)] == [unrecorded.pid]
        assert kill_recorded_children(state) == 2
        assert recorded.wait(timeout=10) == -signal.SIGTERM
        assert unrecorded.wait(timeout=10) == -signal.SIGTERM
        assert list(processes_of_state_dir(state.root)) == []
    finally:
        for proc in (recorded, unrecorded):
            proc.kill()
            proc.wait(timeout=10)


def test_a_damaged_or_old_process_table_names_nothing(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    _runtime(state, [{"name": "router", "pid": 12}, {"name": "x", "pid": "7", "start_time": 1}])
    assert recorded_processes(state) == []
    state.runtime_file.write_text("{not json")
    assert recorded_processes(state) == []


def _layout(name: str, state: str, created: str) -> LayoutStatus:
    return LayoutStatus(
        name=name, version="v", shards=1, state=state, created_at=created, state_since=created
    )


def test_rollout_clocks_restart_for_layouts_on_their_way_only() -> None:
    old = "2026-01-01T00:00:00Z"
    status = RecommenderClusterStatus(
        layouts=[
            _layout("a", "Building", old),
            _layout("b", "Starting", old),
            _layout("c", "Serving", old),
            _layout("d", "Failed", old),
        ]
    )
    now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    restarted = restart_rollout_clocks(status, now)
    assert [entry.created_at for entry in restarted.layouts] == [
        "2026-03-01T12:00:00Z",
        "2026-03-01T12:00:00Z",
        old,
        old,
    ]
    assert restart_rollout_clocks(restarted, now) == restarted
    settled = RecommenderClusterStatus(layouts=[_layout("c", "Serving", old)])
    assert restart_rollout_clocks(settled, now) is settled


def _cluster(auth: dict[str, object], router: dict[str, object] | None = None) -> RecommenderCluster:
    return RecommenderCluster.model_validate(
        {
            "apiVersion": "shardrec.io/v1alpha1",
            "kind": "RecommenderCluster",
            "metadata": {"name": "keys", "generation": 1},
            "spec": {
                "shards": 1,
                "replicasPerShard": 1,
                "index": {"version": "v1", "source": "/nowhere", "dimension": 8},
                "auth": auth,
                "router": router or {},
            },
        }
    )


def test_a_secret_reference_alone_is_refused_locally_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(CliError, match=r"spec.auth.apiKeysFile") as caught:
        for_local_runtime(_cluster({"apiKeysSecretRef": {"name": "keys"}}), tmp_path)
    assert "\n" not in str(caught.value)


def test_a_relative_keys_file_is_taken_from_the_yaml_folder(tmp_path: Path) -> None:
    (tmp_path / "keys.txt").write_text("alice:k-alice\n")
    resolved = for_local_runtime(_cluster({"apiKeysFile": "keys.txt"}), tmp_path)
    assert resolved.spec.auth.api_keys_file == str(tmp_path / "keys.txt")
    with pytest.raises(CliError, match="no such file"):
        for_local_runtime(_cluster({"apiKeysFile": "missing.txt"}), tmp_path)


def test_router_settings_or_new_keys_change_the_router_spec(tmp_path: Path) -> None:
    """The router reads its config and keys once: a change must make a different spec, which the
    process table answers with a restart."""
    keys = tmp_path / "keys.txt"
    keys.write_text("alice:k-alice\n")
    supervisor = LocalSupervisor(state=StateDir(tmp_path / "state"), router_port=1)
    supervisor.state.ensure()
    base = _cluster({"apiKeysFile": str(keys)})
    first = supervisor._router_spec(base)
    assert first == supervisor._router_spec(base)
    assert "--api-keys-file" in first.argv
    assert (
        supervisor._router_spec(_cluster({"apiKeysFile": str(keys)}, {"consistency": "available"})) != first
    )
    keys.write_text("alice:k-alice\nbob:k-bob\n")
    assert supervisor._router_spec(base) != first


def test_status_says_unsupervised_while_processes_serve_without_a_supervisor(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    state.ensure()
    state.spec_file.write_text(yaml.safe_dump({}))
    assert "Stopped" in render_status(state)
    env = {**os.environ, STATE_DIR_ENV: str(state.root)}
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env=env)
    try:
        text = render_status(state)
        assert "Unsupervised" in text and "`recctl up` adopts them" in text
    finally:
        child.kill()
        child.wait(timeout=10)


def test_the_local_router_gets_the_ack_policy_and_a_change_restarts_it(tmp_path: Path) -> None:
    from shardrec.serving.router.config import load_router_config

    supervisor = LocalSupervisor(state=StateDir(tmp_path / "state"), router_port=1)
    supervisor.state.ensure()
    base = _cluster({})
    first = supervisor._router_spec(base)
    assert load_router_config(supervisor.state.router_config_file).writes.ack == "all"
    majority = base.model_copy(
        update={
            "spec": base.spec.model_copy(
                update={"writes": base.spec.writes.model_copy(update={"ack": "majority"})}
            )
        }
    )
    assert supervisor._router_spec(majority) != first
    assert load_router_config(supervisor.state.router_config_file).writes.ack == "majority"


def test_the_local_router_takes_writes_only_while_the_spec_enables_them(tmp_path: Path) -> None:
    """Local shards keep a log whatever the spec says (a cluster that had writes keeps replaying
    them), so the switch is the router's: `writes.enabled` follows `spec.writes.enabled`, and
    turning it on restarts the router (a new spec)."""
    from shardrec.serving.router.config import load_router_config

    supervisor = LocalSupervisor(state=StateDir(tmp_path / "state"), router_port=1)
    supervisor.state.ensure()
    off = _cluster({})
    first = supervisor._router_spec(off)
    assert load_router_config(supervisor.state.router_config_file).writes.enabled is False
    on = off.model_copy(
        update={
            "spec": off.spec.model_copy(
                update={"writes": off.spec.writes.model_copy(update={"enabled": True})}
            )
        }
    )
    assert supervisor._router_spec(on) != first
    assert load_router_config(supervisor.state.router_config_file).writes.enabled is True
