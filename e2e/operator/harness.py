"""The operator suite's hands and eyes: the operator process, API reads, steps, waits and dumps.

ECK-style: a scenario is a list of named steps (apply, wait for a condition with a timeout,
assert objects and status); the first failing step stops the scenario, and the fixture dumps
the cluster's status, children, Events and the operator log. Reads go straight to the REST API
(the control plane's stdlib client), writes go through `kubectl` as a user's would.

Against an external cluster (SHARDREC_E2E_KUBECONFIG, see external_cluster.py) real pods start,
build and load indexes, so SHARDREC_E2E_TIMEOUT_SCALE (default 1) stretches every wait and the
rollout timeout of the clusters created here, and SHARDREC_E2E_IMAGE names the data-plane image.

Loaded by path from conftest.py (this folder is not a package: `operator` would shadow the
standard library module if it were ever put on sys.path).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from shardrec.api import v1alpha1 as api
from shardrec.api.topology import TOPOLOGY_CONFIGMAP_KEY
from shardrec_operator.reconcile import resources as kinds
from shardrec_operator.reconcile.resources import Resource

Obj = dict[str, Any]
STEP_TIMEOUT = 90.0
POLL_SECONDS = 0.5
# What cluster_document builds from; the external-cluster store is seeded to match.
INDEX_SOURCE = "/embeddings/movielens"
INDEX_DIMENSION = 32
ROLLOUT_TIMEOUT_SECONDS = 60


def _timeout_scale() -> float:
    raw = os.environ.get("SHARDREC_E2E_TIMEOUT_SCALE", "1")
    try:
        scale = float(raw)
    except ValueError:
        scale = 0.0
    if not 1.0 <= scale <= 20.0:
        raise ValueError(f"SHARDREC_E2E_TIMEOUT_SCALE={raw!r}: expected a number from 1 to 20")
    return scale


TIMEOUT_SCALE = _timeout_scale()


class StepError(AssertionError):
    """A step did not hold; the message names the step and what was last seen."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, check: Callable[[], Any], timeout: float = STEP_TIMEOUT) -> Any:
    """Poll `check` until it returns something truthy; StepError after `timeout` seconds (scaled)."""
    timeout *= TIMEOUT_SCALE
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
        except (AssertionError, KeyError, IndexError, TypeError) as error:
            last = f"{type(error).__name__}: {error}"
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise StepError(f"timed out after {timeout:.0f}s waiting for {what}; last seen: {last!r}")
        time.sleep(POLL_SECONDS)


class Kube:
    """REST reads through the control plane's client, kubectl for everything a user would type."""

    def __init__(self, control_plane: Any) -> None:
        self.cp = control_plane

    def get(self, path: str) -> Obj | None:
        code, body = self.cp.api.request("GET", path)
        if code == 404:
            return None
        if code != 200:
            raise AssertionError(f"GET {path}: HTTP {code}: {body.get('message', body)}")
        return dict(body)

    def list(self, resource: Resource, namespace: str | None, selector: str = "") -> list[Obj]:
        path = resource.path(namespace)
        if selector:
            path += "?labelSelector=" + urllib.parse.quote(selector)
        found = self.get(path)
        return list(found.get("items", [])) if found else []

    def kubectl(
        self, *args: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result: subprocess.CompletedProcess[str] = self.cp.kubectl(*args, input=stdin, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    def apply(self, *documents: Obj, manager: str = "e2e-user") -> None:
        # YAML, not JSON joined by '---': kubectl 1.32 (seen; 1.36 is fine) reads a stream starting with
        # '{' as one JSON stream and fails at the first separator.
        text = yaml.safe_dump_all(documents, sort_keys=False)
        self.kubectl("apply", "--server-side", f"--field-manager={manager}", "-f", "-", stdin=text)


class OperatorProcess:
    """`python -m shardrec_operator` watching one namespace; started, killed and restarted by PID."""

    def __init__(
        self,
        kubeconfig: Path,
        namespace: str,
        log_path: Path,
        extra_args: tuple[str, ...] = (),
        argv_prefix: tuple[str, ...] = (),
    ) -> None:
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.log_path = log_path
        self.extra_args = extra_args
        self.argv_prefix = argv_prefix  # e.g. `unshare --pid --fork`: the operator as PID 1
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.liveness_port = 0
        self.metrics_port = 0

    def start(self) -> None:
        self.liveness_port, self.metrics_port = free_port(), free_port()
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "SHARDREC_OPERATOR_TIMER_SECONDS": "0.5",
            # The safety-net resync, short by default so the suite does not wait on it;
            # SHARDREC_E2E_OPERATOR_RESYNC_SECONDS=600 proves that watch events alone drive the scenarios.
            "SHARDREC_OPERATOR_RESYNC_SECONDS": os.environ.get("SHARDREC_E2E_OPERATOR_RESYNC_SECONDS", "2"),
            "PYTHONUNBUFFERED": "1",
        }
        argv = [
            *self.argv_prefix,
            sys.executable,
            "-m",
            "shardrec_operator",
            f"--namespace={self.namespace}",
            f"--liveness=http://127.0.0.1:{self.liveness_port}/healthz",
            "--metrics-address=127.0.0.1",
            f"--metrics-port={self.metrics_port}",
            *self.extra_args,
        ]
        with self.log_path.open("ab") as log:
            log.write(f"\n===== operator start #{self.starts + 1} =====\n".encode())
            self.proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        self.starts += 1
        wait_for("operator liveness endpoint", self._alive, timeout=60)

    def _alive(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise StepError(f"operator exited with {self.proc.returncode}:\n{self.log_tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.liveness_port}/healthz", timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as resp:
            return str(resp.read().decode())

    def kill(self) -> None:
        """SIGKILL: the operator gets no chance to finish what it was doing."""
        self._signal(signal.SIGKILL, wait=10)

    def stop(self) -> None:
        self._signal(signal.SIGTERM, wait=15)
        self._signal(signal.SIGKILL, wait=5)

    def _signal(self, sig: int, wait: float) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, sig)  # its own process group: we started it with start_new_session
        try:
            self.proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            return

    def log_tail(self, lines: int = 80) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as error:
            return f"(no operator log: {error})"
        return "\n".join(text.splitlines()[-lines:])


@contextlib.contextmanager
def static_rwo_volumes(kube: Kube, names: list[str], storage_class: str) -> Iterator[list[str]]:
    """1Gi ReadWriteOnce hostPath PersistentVolumes of `storage_class`, one per name, for claims to
    bind to (kwok nodes have no provisioner: write-log claims bind to these); deleted afterwards."""
    kube.apply(
        *(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": name},
                "spec": {
                    "capacity": {"storage": "1Gi"},
                    "accessModes": ["ReadWriteOnce"],
                    "persistentVolumeReclaimPolicy": "Retain",
                    "storageClassName": storage_class,
                    "hostPath": {"path": f"/tmp/shardrec-e2e/{name}"},
                },
            }
            for name in names
        )
    )
    try:
        yield names
    finally:
        for name in names:
            kube.kubectl("delete", "pv", name, "--wait=false", "--ignore-not-found", check=False)


def cluster_document(namespace: str, name: str = "recs", **spec: Any) -> Obj:
    """A small valid RecommenderCluster: 2 shards x 2 replicas, fast rollouts for the suite.

    On an external cluster its pods run for real: the image is SHARDREC_E2E_IMAGE (never pulled
    when present on the node) and the rollout timeout stretches with SHARDREC_E2E_TIMEOUT_SCALE.
    """
    rollout_timeout = round(ROLLOUT_TIMEOUT_SECONDS * TIMEOUT_SCALE)
    base: dict[str, Any] = {
        "shards": 2,
        "replicasPerShard": 2,
        "index": {
            "version": "v1",
            "source": INDEX_SOURCE,
            "dimension": INDEX_DIMENSION,
            "store": {"persistentVolumeClaim": {"claimName": "index-store"}},
        },
        "rollout": {"timeoutSeconds": rollout_timeout, "rollbackWindowSeconds": 8, "drainSeconds": 1},
        "failover": {"forceDeleteAfterSeconds": 30},
        "router": {"replicas": 2},
    }
    image = os.environ.get("SHARDREC_E2E_IMAGE") if os.environ.get("SHARDREC_E2E_KUBECONFIG") else None
    if image:
        base.update(image=image, imagePullPolicy="IfNotPresent")
    for key, value in spec.items():
        base[key] = (
            {**base[key], **value} if isinstance(value, dict) and isinstance(base.get(key), dict) else value
        )
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": base,
    }


@dataclass
class Scenario:
    """One test's namespace, operator and cluster, with the steps that drive and check them."""

    kube: Kube
    namespace: str
    operator: OperatorProcess
    name: str = "recs"
    log: list[str] = field(default_factory=list)

    # -- steps ----------------------------------------------------------------------------------

    def run(self, steps: list[tuple[str, Callable[[], object]]]) -> None:
        for number, (description, action) in enumerate(steps, 1):
            started = time.monotonic()
            try:
                action()
            except AssertionError as error:
                raise StepError(f"step {number} ({description}) failed: {error}") from error
            self.log.append(f"step {number} ok in {time.monotonic() - started:.1f}s: {description}")

    # -- the RecommenderCluster ---------------------------------------------------------------------

    @property
    def path(self) -> str:
        return kinds.RECOMMENDER_CLUSTER.path(self.namespace, self.name)

    def create(self, **spec: Any) -> None:
        self.kube.apply(cluster_document(self.namespace, self.name, **spec))

    def patch_spec(self, patch: Obj) -> None:
        self.kube.kubectl(
            "-n",
            self.namespace,
            "patch",
            api.PLURAL,
            self.name,
            "--type=merge",
            "-p",
            json.dumps({"spec": patch}),
        )

    def body(self) -> Obj:
        found = self.kube.get(self.path)
        assert found is not None, f"{api.KIND} {self.namespace}/{self.name} does not exist"
        return found

    def status(self) -> Obj:
        return dict(self.body().get("status") or {})

    def condition(self, type_: str) -> Obj:
        found = [c for c in self.status().get("conditions", []) if c["type"] == type_]
        return found[0] if found else {}

    def wait_status(self, what: str, check: Callable[[Obj], bool], timeout: float = STEP_TIMEOUT) -> Obj:
        def probe() -> Obj | None:
            status = self.status()
            return status if check(status) else None

        try:
            result: Obj = wait_for(what, probe, timeout)
        except StepError as error:
            raise StepError(f"{error}\nstatus: {json.dumps(self.status(), indent=1)[:3000]}") from None
        return result

    def wait_ready(self, version: str, timeout: float = STEP_TIMEOUT) -> Obj:
        return self.wait_status(
            f"Ready serving version {version}",
            lambda s: (
                s.get("phase") == "Ready"
                and s.get("activeVersion") == version
                and s.get("observedGeneration") == self.body()["metadata"]["generation"]
            ),
            timeout,
        )

    # -- children -----------------------------------------------------------------------------------

    def children(self, resource: Resource, selector: str = "") -> list[Obj]:
        base = f"shardrec.io/cluster={self.name}"
        return self.kube.list(resource, self.namespace, f"{base},{selector}" if selector else base)

    def names(self, resource: Resource, selector: str = "") -> list[str]:
        return sorted(obj["metadata"]["name"] for obj in self.children(resource, selector))

    def layouts_running(self) -> set[str]:
        return {s["metadata"]["labels"]["shardrec.io/layout"] for s in self.children(kinds.STATEFUL_SET)}

    def topology(self) -> Obj | None:
        configmap = self.kube.get(kinds.CONFIG_MAP.path(self.namespace, f"{self.name}-topology"))
        if configmap is None:
            return None
        document: Obj = json.loads(configmap["data"][TOPOLOGY_CONFIGMAP_KEY])
        return document

    def active_layout(self) -> str | None:
        topology = self.topology()
        active = (topology or {}).get("active")
        return str(active["layout"]) if active else None

    def events(self, reason: str | None = None) -> list[Obj]:
        found = self.kube.list(Resource("v1", "Event", "events"), self.namespace)
        mine = [e for e in found if e.get("involvedObject", {}).get("kind") == api.KIND]
        return [e for e in mine if reason is None or e.get("reason") == reason]

    # -- diagnostics --------------------------------------------------------------------------------

    def dump(self) -> str:
        parts = ["===== scenario log =====", *self.log]
        try:
            parts += ["===== status =====", json.dumps(self.status(), indent=1)]
        except AssertionError as error:
            parts.append(f"(no cluster: {error})")
        for resource in (
            kinds.JOB,
            kinds.STATEFUL_SET,
            kinds.POD,
            kinds.PDB,
            kinds.SERVICE,
            kinds.CONFIG_MAP,
        ):
            parts.append(f"{resource.kind}: {self.names(resource)}")
        parts.append(f"topology: {json.dumps(self.topology())[:2000]}")
        events = self.kube.list(Resource("v1", "Event", "events"), self.namespace)
        parts.append("===== events =====")
        parts += [
            f"{e.get('type')} {e.get('reason')} {e.get('involvedObject', {}).get('kind')}/"
            f"{e.get('involvedObject', {}).get('name')}: {e.get('message')}"
            for e in events[-60:]
        ]
        parts += ["===== operator log =====", self.operator.log_tail(120)]
        return "\n".join(parts)
