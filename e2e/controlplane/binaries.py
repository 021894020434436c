"""The control-plane binaries that build.sh produces: versions.env, the cache key, find_binaries().

Part of e2e/controlplane (cluster.py puts this directory on sys.path; see its docstring).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
VERSIONS_FILE = HERE / "versions.env"
BUILD_HINT = "run `make cluster-build` (i.e. `bash e2e/controlplane/build.sh`)"
# The stages kwokctl injects by default; the standalone kwok binary embeds none ("no stages found").
KWOK_STAGES = (
    "node/fast/node-initialize.yaml",
    "node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "pod/fast/pod-ready.yaml",
    "pod/fast/pod-complete.yaml",
    "pod/fast/pod-delete.yaml",
)


class BinariesNotFoundError(FileNotFoundError):
    """build.sh has not been run (or not for the versions in versions.env)."""


def read_versions(path: Path = VERSIONS_FILE) -> dict[str, str]:
    """Parse versions.env (KEY=VALUE lines; '#' comments) without a shell."""
    versions: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if "=" in line:
            key, value = line.split("=", 1)
            versions[key.strip()] = value.strip().strip("'\"")
    return versions


@dataclass(frozen=True)
class Binaries:
    """Paths of everything build.sh produces under one cache key directory."""

    root: Path
    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    kubectl: Path
    kwok: Path
    stages: Path

    @classmethod
    def in_dir(cls, root: Path) -> Binaries:
        b = root / "bin"
        return cls(
            root=root,
            etcd=b / "etcd",
            kube_apiserver=b / "kube-apiserver",
            kube_controller_manager=b / "kube-controller-manager",
            kube_scheduler=b / "kube-scheduler",
            kubectl=b / "kubectl",
            kwok=b / "kwok",
            stages=root / "stages",
        )

    def missing(self) -> list[Path]:
        paths = [
            self.etcd,
            self.kube_apiserver,
            self.kube_controller_manager,
            self.kube_scheduler,
            self.kubectl,
            self.kwok,
        ]
        gone = [p for p in paths if not os.access(p, os.X_OK)]
        gone += [self.stages / s for s in KWOK_STAGES if not (self.stages / s).is_file()]
        return gone


def cache_root() -> Path:
    return Path(os.environ.get("SHARDREC_CACHE") or Path.home() / ".cache" / "shardrec") / "k8s"


def _local_go_version() -> str | None:
    """`go env GOVERSION` minus the 'go' prefix; None without Go (built binaries still work then)."""
    go = shutil.which("go")
    if go is None:
        return None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run([go, "env", "GOVERSION"], capture_output=True, text=True, timeout=20, check=True)
        return out.stdout.strip().removeprefix("go") or None
    return None


def find_binaries() -> Binaries:
    """Locate a complete build for versions.env.

    Order: $SHARDREC_K8S_DIR (explicit key dir), then the cache key for the local Go version (what build.sh
    writes), then any Go version's build of the same k8s/etcd/kwok (binaries are static, so that is fine).
    """
    override = os.environ.get("SHARDREC_K8S_DIR")
    if override:
        candidates = [Path(override)]
    else:
        v = read_versions()
        prefix = (
            f"{v['K8S_VERSION']}-etcd{v['ETCD_VERSION'].removeprefix('v')}"
            f"-kwok{v['KWOK_VERSION'].removeprefix('v')}-go"
        )
        root = cache_root()
        candidates = []
        go = _local_go_version()
        if go:
            candidates.append(root / f"{prefix}{go}")
        others = sorted(root.glob(f"{prefix}*"), key=lambda p: p.stat().st_mtime, reverse=True)
        candidates += [p for p in others if p not in candidates]
    for candidate in candidates:
        binaries = Binaries.in_dir(candidate)
        if not binaries.missing():
            return binaries
    looked = ", ".join(str(c) for c in candidates) or str(cache_root())
    raise BinariesNotFoundError(
        f"Kubernetes control-plane binaries not found (looked in: {looked}); {BUILD_HINT}"
    )
