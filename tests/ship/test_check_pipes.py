"""The `make lint` check that no script pipes into an early-exiting reader under pipefail."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "e2e" / "tools" / "check_pipes.py"
_spec = importlib.util.spec_from_file_location("check_pipes", SCRIPT)
assert _spec and _spec.loader
check_pipes = importlib.util.module_from_spec(_spec)
sys.modules["check_pipes"] = check_pipes
_spec.loader.exec_module(check_pipes)

PIPEFAIL = "#!/usr/bin/env bash\nset -Eeuo pipefail\n"


@pytest.mark.parametrize(
    ("line", "reader"),
    [
        ('"$BIN/etcd" --version | head -1', "head"),
        ('x="$(promtool --version 2>&1 | head -n1)"', "head"),
        ('kube-apiserver --version | grep -qx "Kubernetes $V" || exit 1', "grep -q/-m/-l"),
        ("ls | grep -m1 foo", "grep -q/-m/-l"),
        ("ls | grep --quiet foo", "grep -q/-m/-l"),
        ("cat big | sed '1q'", "sed ...q"),
        ("cat big | awk '{print; exit}'", "awk exit"),
        ("cat big | IFS= read -r first", "read"),
    ],
)
def test_flags_early_exiting_readers(line: str, reader: str) -> None:
    found = check_pipes.findings_in(Path("x.sh"), PIPEFAIL + line + "\n")
    assert [(f.line, f.reader) for f in found] == [(3, reader)]


@pytest.mark.parametrize(
    "line",
    [
        'out="$("$BIN/etcd" --version)"; echo "${out%%$\'\\n\'*}"',
        'kind get clusters | grep -x "$C" >/dev/null',
        "cat big | sed -n 1p",
        "cmd || head -1 file",
        "# a comment: etcd --version | head -1",
        "etcd --version | head -1  # pipes: ok",
        "ps aux | grep foo | sort",
    ],
)
def test_accepts_draining_readers_and_comments(line: str) -> None:
    assert check_pipes.findings_in(Path("x.sh"), PIPEFAIL + line + "\n") == []


def test_scripts_without_pipefail_are_not_checked() -> None:
    assert check_pipes.findings_in(Path("x.sh"), "#!/bin/sh\nset -e\netcd --version | head -1\n") == []


def test_makefile_shellflags_count_as_pipefail() -> None:
    text = ".SHELLFLAGS := -eu -o pipefail -c\nx:\n\tetcd --version | head -1\n"
    assert len(check_pipes.findings_in(Path("Makefile"), text)) == 1


def test_the_repository_is_clean() -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT)], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout
    assert "under pipefail" not in result.stdout


def test_every_checked_script_that_exists_is_found() -> None:
    scripts = {p.relative_to(ROOT).as_posix() for p in check_pipes.tracked_scripts(ROOT)}
    assert {".ci/run", "Makefile", "e2e/controlplane/build.sh", "e2e/tools/install-tools.sh"} <= scripts
