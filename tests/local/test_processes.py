"""Supervised children: a dead child is restarted after a backoff that grows while it keeps dying."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from shardrec.tools.local.processes import INITIAL_BACKOFF_S, ProcessSpec, ProcessTable
from shardrec.tools.local.state import StateDir, SupervisorLock, is_supervisor_running


def _spec(tmp_path: Path, name: str, code: str) -> ProcessSpec:
    return ProcessSpec(name, (sys.executable, "-c", code), tmp_path / f"{name}.log")


def _wait_exit(table: ProcessTable, name: str, timeout_s: float = 10.0) -> None:
    proc = table.get(name)
    assert proc is not None and proc.popen is not None
    proc.popen.wait(timeout=timeout_s)


def test_a_crashing_child_is_restarted_with_growing_backoff(tmp_path: Path) -> None:
    table = ProcessTable()
    table.ensure(_spec(tmp_path, "crasher", "import sys; print('up'); sys.exit(3)"), now=0.0)
    _wait_exit(table, "crasher")

    assert table.tick(now=1.0) == ["crasher"]
    proc = table.get("crasher")
    assert proc is not None
    assert proc.last_exit_code == 3 and proc.restarts == 1 and proc.popen is None
    first_backoff = proc.backoff_s
    assert first_backoff > INITIAL_BACKOFF_S  # it lived 1 s: not stable, so the backoff grew

    table.tick(now=1.0 + first_backoff)
    assert proc.popen is not None, "restarted once the backoff expired"
    _wait_exit(table, "crasher")
    table.tick(now=2.0 + first_backoff)
    assert proc.restarts == 2 and proc.backoff_s == 2 * first_backoff
    assert (tmp_path / "crasher.log").read_text().count("up") == 2
    table.stop_all()


def test_a_long_lived_child_that_dies_restarts_fast(tmp_path: Path) -> None:
    table = ProcessTable()
    table.ensure(_spec(tmp_path, "worker", "import time; time.sleep(60)"), now=0.0)
    proc = table.get("worker")
    assert proc is not None and proc.popen is not None
    proc.popen.kill()
    proc.popen.wait(timeout=10)
    table.tick(now=100.0)  # it had been up 100 s: stable
    assert proc.backoff_s == INITIAL_BACKOFF_S
    table.tick(now=100.0 + INITIAL_BACKOFF_S)
    assert proc.is_running()
    table.stop_all()
    assert not proc.is_running()


def test_a_changed_spec_replaces_the_process_and_an_equal_one_keeps_it(tmp_path: Path) -> None:
    table = ProcessTable()
    first = table.ensure(_spec(tmp_path, "p", "import time; time.sleep(60)"), now=0.0)
    pid = first.pid
    assert table.ensure(_spec(tmp_path, "p", "import time; time.sleep(60)"), now=1.0).pid == pid
    second = table.ensure(_spec(tmp_path, "p", "import time; time.sleep(61)"), now=2.0)
    assert second.pid != pid and not first.is_running()
    table.remove("p")
    assert not second.is_running() and "p" not in table


def test_stop_escalates_to_sigkill_for_a_child_that_ignores_sigterm(tmp_path: Path) -> None:
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ready', flush=True); time.sleep(60)"
    )
    table = ProcessTable()
    proc = table.ensure(_spec(tmp_path, "stubborn", code), now=0.0)
    deadline = time.monotonic() + 10
    while "ready" not in (tmp_path / "stubborn.log").read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.stop(grace_s=0.5)
    assert not proc.is_running()


def test_one_supervisor_per_state_folder(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "c")
    state.ensure()
    first, second = SupervisorLock(state), SupervisorLock(state)
    assert not is_supervisor_running(state)
    assert first.try_acquire()
    assert is_supervisor_running(state)
    assert not second.try_acquire()
    first.release()
    assert not is_supervisor_running(state)
    assert second.try_acquire()
    second.release()
