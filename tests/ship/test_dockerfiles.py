"""The Dockerfile (one file, targets `serving` and `operator`): hadolint clean, and the properties that
matter checked directly. `make images` builds both targets with buildah (tests/ship/test_images.py checks
what it produced); `make e2e-kind` builds them with Docker where an engine exists."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field

import pytest

from tests.ship.tools import ROOT, find_tool, run

DOCKERFILE = ROOT / "Dockerfile"
TARGETS = ("serving", "operator")
BUILD_TOOLS = ("build-essential", "gcc", "g++", "make", "git", "curl", "wget", "python3-dev")


@dataclass
class Stage:
    base: str
    name: str
    lines: list[str] = field(default_factory=list)


def _stages() -> dict[str, Stage]:
    """Build stages by name (line continuations joined, comments dropped)."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?", line, flags=re.IGNORECASE)
        if match:
            current = Stage(base=match[1], name=match[2] or f"#{len(stages)}")
            stages[current.name] = current
        if current is not None:
            current.lines.append(line)
    return stages


def _chain(stages: dict[str, Stage], name: str) -> list[Stage]:
    """The stage and every stage of this file it is built FROM, nearest first."""
    chain = [stages[name]]
    while chain[-1].base in stages:
        chain.append(stages[chain[-1].base])
    return chain


def _copied_from(stage: Stage) -> list[str]:
    return [
        m[1] for line in stage.lines if (m := re.match(r"COPY\s+--from=(\S+)", line, flags=re.IGNORECASE))
    ]


def test_one_dockerfile_for_both_images() -> None:
    tracked = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "*Dockerfile*"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert tracked == ["Dockerfile"], tracked
    assert set(TARGETS) <= set(_stages())


def test_hadolint_clean() -> None:
    proc = run([find_tool("hadolint"), "--failure-threshold", "info", DOCKERFILE], check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_overridable_pinned_base() -> None:
    text = DOCKERFILE.read_text()
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, flags=re.MULTILINE)
    assert base and re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base[1]), base
    assert {stage.base for stage in _stages().values() if stage.base not in _stages()} == {"${PYTHON_IMAGE}"}


@pytest.mark.parametrize("target", TARGETS)
def test_final_stage_non_root_without_build_tools(target: str) -> None:
    stages = _stages()
    chain = _chain(stages, target)
    final_text = "\n".join(line for stage in chain for line in stage.lines)
    assert not [t for t in BUILD_TOOLS if re.search(rf"(?<![\w-]){re.escape(t)}(?![\w-])", final_text)], (
        final_text
    )
    assert "apt-get install" not in final_text and "pip install" not in final_text
    users = [line.split()[1] for line in chain[0].lines if line.upper().startswith("USER ")]
    assert users and users[-1] == "10001:10001", f"final USER must be 10001:10001: {users}"
    assert any(line.upper().startswith("HEALTHCHECK ") for line in chain[0].lines)


@pytest.mark.parametrize("target", TARGETS)
def test_each_image_installs_only_its_extra_on_a_portable_hnswlib_build(target: str) -> None:
    stages = _stages()
    (venv_stage,) = _copied_from(stages[target])
    chain = _chain(stages, venv_stage)
    installs = [line for line in chain[0].lines if "pip install" in line]
    assert any(f'".[{target}]"' in line for line in installs), installs
    others = [t for t in TARGETS if t != target]
    assert not [line for line in installs if any(f"[{o}]" in line for o in others)], installs
    assert any("HNSWLIB_NO_NATIVE=1" in line for stage in chain for line in stage.lines), (
        "portable hnswlib build (no -march=native)"
    )


def test_entrypoints() -> None:
    stages = _stages()
    assert 'ENTRYPOINT ["shardrec-operator"]' in stages["operator"].lines
    # The operator sets the command of every data-plane pod (shard, router, index-build Job).
    assert not [line for line in stages["serving"].lines if line.upper().startswith("ENTRYPOINT")]


def test_dockerignore_keeps_the_context_to_sources() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    assert lines[lines.index("*")] == "*", "deny everything first"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "shard-server/src", "operator/src"}
    copied = {
        source
        for stage in _stages().values()
        for line in stage.lines
        if line.upper().startswith("COPY ") and "--from" not in line
        for source in line.split()[1:-1]
    }
    assert copied <= allowed, copied
