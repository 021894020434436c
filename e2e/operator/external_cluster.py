"""An existing cluster for the e2e suites: any kubeconfig, refused unless its context is named.

`SHARDREC_E2E_KUBECONFIG=<file>` makes the suites use that cluster instead of starting the local
control plane. `SHARDREC_E2E_CONTEXT` must equal the file's current context, or nothing runs: the
suites create and delete namespaces, PersistentVolumes and pods, cordon nodes and kill pods, so a
kubeconfig that happens to point at production must fail loudly, not "mostly work".

After the guard, every call is pinned to that context: kubectl gets `--context`, and the operator
subprocesses and the REST client read a flattened copy holding that one context, so a later
`kubectl config use-context` (or `kind create cluster`) on the same file cannot redirect a run.

`ExternalCluster` offers what the suites use of `LocalControlPlane`: `kubeconfig`, `api.request`,
`kubectl(...)`, `node_names`; `kwok_selects_nodes` is always False (there is no kwok to restart).

Loaded by path (e2e is not a package), like e2e/controlplane/cluster.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KUBECONFIG_ENV = "SHARDREC_E2E_KUBECONFIG"
CONTEXT_ENV = "SHARDREC_E2E_CONTEXT"
KUBECTL_ENV = "SHARDREC_E2E_KUBECTL"
IMAGE_ENV = "SHARDREC_E2E_IMAGE"
STORE_NODE_DIR_ENV = "SHARDREC_E2E_STORE_NODE_DIR"
STORE_HOST_DIR_ENV = "SHARDREC_E2E_STORE_HOST_DIR"
REQUEST_TIMEOUT_SECONDS = 10.0


class ContextGuardError(RuntimeError):
    """The kubeconfig is missing, unreadable, or its current context is not the one named."""


def current_context(kubeconfig: Path) -> str:
    """The current-context of a kubeconfig file, checked to name a context defined in it."""
    import yaml

    try:
        document = yaml.safe_load(kubeconfig.read_text())
    except OSError as error:
        raise ContextGuardError(f"{KUBECONFIG_ENV}={kubeconfig}: cannot read it: {error}") from None
    except yaml.YAMLError as error:
        raise ContextGuardError(f"{KUBECONFIG_ENV}={kubeconfig}: not YAML: {error}") from None
    if not isinstance(document, dict):
        raise ContextGuardError(f"{KUBECONFIG_ENV}={kubeconfig}: not a kubeconfig (no mapping at the top)")
    current = document.get("current-context")
    if not current or not isinstance(current, str):
        raise ContextGuardError(f"{KUBECONFIG_ENV}={kubeconfig}: has no current-context")
    defined = [c.get("name") for c in document.get("contexts") or [] if isinstance(c, dict)]
    if current not in defined:
        raise ContextGuardError(
            f"{KUBECONFIG_ENV}={kubeconfig}: current-context {current!r} is not among its contexts {defined}"
        )
    return current


def check_context(kubeconfig: Path, expected: str | None) -> str:
    """Return the current context if it is exactly `expected`; ContextGuardError otherwise."""
    if not expected:
        raise ContextGuardError(
            f"{KUBECONFIG_ENV} is set but {CONTEXT_ENV} is not: set it to the name of the kubeconfig's "
            "current context to confirm that this cluster may be used (the suite creates and deletes "
            "namespaces, volumes and pods)"
        )
    current = current_context(kubeconfig)
    if current != expected:
        raise ContextGuardError(
            f"refusing to run against {kubeconfig}: its current context is {current!r}, "
            f"but {CONTEXT_ENV}={expected!r}"
        )
    return current


def guarded_kubeconfig(env: Mapping[str, str]) -> tuple[Path, str] | None:
    """(kubeconfig, context) from the environment once the guard passed; None without the variable."""
    raw = env.get(KUBECONFIG_ENV, "")
    if not raw:
        return None
    if os.pathsep in raw:
        raise ContextGuardError(f"{KUBECONFIG_ENV}={raw!r}: give one file, not a list of files")
    path = Path(raw).expanduser().resolve()
    return path, check_context(path, env.get(CONTEXT_ENV))


def find_kubectl(env: Mapping[str, str]) -> str:
    """$SHARDREC_E2E_KUBECTL, else kubectl on PATH, else the one `make cluster-build` cached."""
    chosen = env.get(KUBECTL_ENV)
    if chosen:
        if not os.access(chosen, os.X_OK):
            raise ContextGuardError(f"{KUBECTL_ENV}={chosen}: not an executable file")
        return chosen
    found = shutil.which("kubectl")
    if found:
        return found
    cache = Path(env.get("SHARDREC_CACHE") or Path.home() / ".cache" / "shardrec") / "k8s"
    built = sorted(cache.glob("*/bin/kubectl"), key=lambda p: p.stat().st_mtime, reverse=True)
    if built:
        return str(built[0])
    raise ContextGuardError(f"no kubectl: put one on PATH, set {KUBECTL_ENV}, or run `make cluster-build`")


@dataclass(frozen=True)
class DataPlane:
    """What real pods need in the suite: an image the nodes can run and a store every node shares.

    `store_node_dir` is a directory that is the same on every node (e.g. a kind extraMount);
    `store_host_dir` is that directory as this machine sees it, so the suite can create each
    test's folder (world-writable: pods run as uid 10001) and write its embeddings there.
    """

    image: str
    store_node_dir: str
    store_host_dir: Path

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> DataPlane | None:
        image, node_dir, host_dir = (env.get(k) for k in (IMAGE_ENV, STORE_NODE_DIR_ENV, STORE_HOST_DIR_ENV))
        if not (image and node_dir and host_dir):
            return None
        if not node_dir.startswith("/"):
            raise ValueError(f"{STORE_NODE_DIR_ENV}={node_dir!r}: must be an absolute path on the nodes")
        host = Path(host_dir)
        if not host.is_dir():
            raise ValueError(f"{STORE_HOST_DIR_ENV}={host_dir}: not a directory on this machine")
        return cls(image=image, store_node_dir=node_dir.rstrip("/"), store_host_dir=host)

    def node_path(self, folder: str) -> str:
        return f"{self.store_node_dir}/{folder}"


MISSING_DATA_PLANE = (
    f"needs real pods on the external cluster: set {IMAGE_ENV} (the data-plane image the nodes can "
    f"run) and {STORE_NODE_DIR_ENV} + {STORE_HOST_DIR_ENV} (a directory all nodes share, as the nodes "
    "and as this machine see it); see e2e/operator/README.md"
)


class RestApi:
    """`request(method, path, body) -> (status, body)`, the shape of the local plane's ApiClient,
    over the `kubernetes` package's transport (certificates, tokens, exec plugins alike)."""

    def __init__(self, kubeconfig: Path) -> None:
        from kubernetes import client, config

        configuration = client.Configuration()
        config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)  # type: ignore[no-untyped-call]
        self._client = client.ApiClient(configuration)

    def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        timeout: float = REQUEST_TIMEOUT_SECONDS,
    ) -> tuple[int, dict[str, Any]]:
        resource, _, query = path.partition("?")
        serialized = self._client.param_serialize(
            method,
            resource,
            query_params=urllib.parse.parse_qsl(query),
            header_params={"Accept": "application/json", "Content-Type": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
        )
        response = self._client.call_api(*serialized, _request_timeout=timeout)
        raw = response.read() or b"{}"  # type: ignore[no-untyped-call]
        try:
            data: dict[str, Any] = json.loads(raw)
        except ValueError:
            data = {"message": raw.decode(errors="replace")}
        return int(response.status), data

    def close(self) -> None:
        self._client.close()  # type: ignore[no-untyped-call]


class ExternalCluster:
    """A guarded, context-pinned existing cluster (see the module docstring)."""

    kwok_selects_nodes = False

    def __init__(self, kubeconfig: Path, context: str, kubectl_path: str) -> None:
        self.kubeconfig = kubeconfig
        self.context = context
        self.kubectl_path = kubectl_path
        self.api = RestApi(kubeconfig)

    @classmethod
    def open(cls, source: Path, context: str, kubectl_path: str, workdir: Path) -> ExternalCluster:
        """Pin `context` of `source` into workdir/kubeconfig (flattened: certificates inline)."""
        argv = [kubectl_path, f"--kubeconfig={source}", f"--context={context}", "config", "view"]
        view = subprocess.run(
            [*argv, "--minify", "--flatten", "--raw"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if view.returncode != 0:
            raise ContextGuardError(f"kubectl config view of {source} failed: {view.stderr.strip()}")
        workdir.mkdir(parents=True, exist_ok=True)
        pinned = workdir / "kubeconfig"
        pinned.touch(mode=0o600)
        pinned.write_text(view.stdout)
        if current_context(pinned) != context:  # --minify keeps exactly the chosen context
            raise ContextGuardError(f"the pinned copy {pinned} does not select context {context!r}")
        return cls(pinned, context, kubectl_path)

    def kubectl_command(self, *args: str) -> list[str]:
        """argv of a kubectl call pinned to this cluster (for long-running ones, e.g. port-forward)."""
        return [self.kubectl_path, f"--kubeconfig={self.kubeconfig}", f"--context={self.context}", *args]

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.kubectl_command(*args),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
        )

    @property
    def node_names(self) -> list[str]:
        """Nodes that take ordinary pods: no NoSchedule/NoExecute taint (control planes have one)."""
        code, body = self.api.request("GET", "/api/v1/nodes")
        if code != 200:
            raise AssertionError(f"GET /api/v1/nodes: HTTP {code}: {body.get('message', body)}")
        return sorted(
            node["metadata"]["name"]
            for node in body.get("items", [])
            if not any(
                taint.get("effect") in ("NoSchedule", "NoExecute")
                for taint in node.get("spec", {}).get("taints") or []
            )
        )

    def close(self) -> None:
        self.api.close()


def seed_store(data_plane: DataPlane, folder: str, source: str, dimension: int, seed: int = 0) -> Path:
    """Create `folder` in the shared store (writable by the pods' uid) holding a small embeddings
    directory at `source` (a path inside the store, as `spec.index.source` names it)."""
    from shardrec.serving.index.embeddings import write_embeddings_dir
    from shardrec.serving.index.synthetic import clustered

    root = data_plane.store_host_dir / folder
    root.mkdir(exist_ok=True)
    root.chmod(0o777)  # explicit: mkdir's mode is cut by the umask, and the pods run as uid 10001
    items, users = clustered(400, dimension, seed=seed), clustered(50, dimension, seed=seed + 1)
    item_ids = [f"item-{i}" for i in range(len(items))]
    user_ids = [f"user-{u}" for u in range(len(users))]
    seen = [(user_ids[u], item_ids[(u * 7) % len(item_ids)]) for u in range(len(user_ids))]
    target = root / source.strip("/")
    write_embeddings_dir(target, items, item_ids, users=users, user_ids=user_ids, seen=seen)
    return target
