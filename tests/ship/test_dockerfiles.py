"""The Dockerfiles: hadolint clean, and the properties that matter checked directly (they cannot be
built on machines without a Docker engine; `make e2e-kind` builds them where one exists)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.ship.tools import ROOT, find_tool, run

DOCKERFILES = [ROOT / "operator" / "Dockerfile", ROOT / "shard-server" / "Dockerfile"]
BUILD_TOOLS = ("build-essential", "gcc", "g++", "make", "git", "curl", "wget")


def _stages(path: Path) -> list[list[str]]:
    """Instructions per build stage (line continuations joined, comments dropped)."""
    text = re.sub(r"\\\n", " ", path.read_text())
    stages: list[list[str]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_hadolint_clean(dockerfile: Path) -> None:
    proc = run([find_tool("hadolint"), "--failure-threshold", "info", dockerfile], check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_multi_stage_pinned_non_root_without_build_tools(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, flags=re.MULTILINE)
    assert base and re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base[1]), base
    stages = _stages(dockerfile)
    assert len(stages) >= 2, "multi-stage: a builder and a runtime stage"
    final = stages[-1]
    final_text = "\n".join(final)
    assert not [t for t in BUILD_TOOLS if re.search(rf"\b{re.escape(t)}\b", final_text)], final_text
    assert "apt-get install" not in final_text and "pip install" not in final_text
    users = [line.split()[1] for line in final if line.upper().startswith("USER ")]
    assert users and re.fullmatch(r"[1-9]\d*:[1-9]\d*", users[-1]), (
        f"final USER must be numeric non-root: {users}"
    )
    assert any(line.upper().startswith("HEALTHCHECK ") for line in final)
    assert any("HNSWLIB_NO_NATIVE=1" in line for line in stages[0]), (
        "portable hnswlib build (no -march=native)"
    )


def test_dockerignore_keeps_the_context_to_sources() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    assert lines[lines.index("*")] == "*", "deny everything first"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "crds", "shard-server/src", "operator/src"}
