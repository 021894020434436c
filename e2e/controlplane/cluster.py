#!/usr/bin/env python3
"""A real Kubernetes control plane on 127.0.0.1 for e2e tests and humans (no Docker, no kubelet).

etcd -> kube-apiserver -> kube-controller-manager + kube-scheduler -> kwok (fake nodes that make pods
Running/Ready). Every process binds 127.0.0.1 on a random free port, uses certificates generated into a
state directory, and runs in its own process group so teardown is by PID only.

Commands (the Makefile targets run exactly these, from the repository root):

    make cluster-build  ->  bash e2e/controlplane/build.sh
    make cluster-up     ->  python3 e2e/controlplane/cluster.py up --state-dir .cluster
                            # prints `export KUBECONFIG=<abs>/.cluster/kubeconfig`; use:
                            # eval "$(python3 e2e/controlplane/cluster.py env --state-dir .cluster)"
    make cluster-down   ->  python3 e2e/controlplane/cluster.py down --state-dir .cluster
    (also)                  python3 e2e/controlplane/cluster.py status --state-dir .cluster

From Python (pytest fixtures):

    with LocalControlPlane() as cp:          # temporary state dir, removed on exit
        kubernetes.config.load_kube_config(config_file=str(cp.kubeconfig))

Needs only the standard library plus the `openssl` CLI (or, without it, the `cryptography` package).
Binaries come from build.sh's cache; see find_binaries().

The parts live beside this file: binaries.py (find_binaries), pki.py (certificates, kubeconfig),
processes.py (spawn, stop by PID), kubeapi.py (HTTP helpers). This file keeps LocalControlPlane and the CLI.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

# e2e is not a package: this file runs as a script (`python3 e2e/controlplane/cluster.py up`) and is loaded
# by path (e2e/conftest.py, e2e/node/node.py, tests/ship), so it finds its sibling modules through
# sys.path, as benchmarks/ does; mypy sees them the same way (mypy_path in pyproject.toml).
sys.path.insert(0, str(Path(__file__).resolve().parent))

import binaries
import kubeapi
import pki
import processes
from binaries import (
    BUILD_HINT,
    KWOK_STAGES,
    VERSIONS_FILE,
    Binaries,
    BinariesNotFoundError,
    cache_root,
    find_binaries,
    read_versions,
)
from kubeapi import _PROBE_ERRORS, ApiClient, _tls_context, http_get
from pki import CERT_DNS_SANS, CERT_IP_SANS, Pki, generate_pki, issue_with_openssl, write_kubeconfig
from processes import (
    LOG_TAIL_LINES,
    Component,
    ControlPlaneError,
    _owns,
    free_port,
    is_alive,
    log_tail,
    proc_start_time,
    terminate,
)

HERE = Path(__file__).resolve().parent

# These names used to be defined in this file; other files reach them as attributes of this module
# (e2e/node/node.py uses issue_with_openssl, _owns, terminate, Component, Pki, ...).
__all__ = [
    "BUILD_HINT",
    "CERT_DNS_SANS",
    "CERT_IP_SANS",
    "KWOK_STAGES",
    "LOG_TAIL_LINES",
    "VERSIONS_FILE",
    "ApiClient",
    "Binaries",
    "BinariesNotFoundError",
    "Component",
    "ControlPlaneError",
    "LocalControlPlane",
    "Pki",
    "_owns",
    "cache_root",
    "find_binaries",
    "free_port",
    "generate_pki",
    "http_get",
    "is_alive",
    "issue_with_openssl",
    "log_tail",
    "main",
    "proc_start_time",
    "read_versions",
    "stop_from_state",
    "terminate",
    "write_kubeconfig",
]


def _check_siblings() -> None:
    """A same-named module imported earlier from elsewhere would shadow ours: refuse to mix them."""
    for module in (binaries, kubeapi, pki, processes):
        origin = getattr(module, "__file__", None)
        if origin is None or Path(origin).resolve().parent != HERE:
            raise ImportError(f"module {module.__name__!r} was imported from {origin}, not from {HERE}")


_check_siblings()

STATE_FILE = "state.json"

SERVICE_CIDR = "10.96.0.0/16"
POD_CIDR = "10.244.0.0/16"  # must differ from the service CIDR; kwok hands out fake pod IPs from it
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
KWOK_LEASE_SECONDS = 40
KWOK_NODE_SELECTOR = "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake"


# ----------------------------------------------------------------------------------------------------
# The control plane


def _etcd_supports_no_fsync(etcd: Path) -> bool:
    """--unsafe-no-fsync exists from etcd 3.5; Debian's 3.4 fallback would refuse to start with it."""
    out = subprocess.run(
        [str(etcd), "--version"], capture_output=True, text=True, timeout=20, check=False
    ).stdout
    for line in out.splitlines():
        if line.startswith("etcd Version:"):
            major, minor = (int(x) for x in line.split(":", 1)[1].strip().split(".")[:2])
            return (major, minor) >= (3, 5)
    return False


def _has_default_route() -> bool:
    """The apiserver derives its advertise address from the default route; without one it cannot start."""
    try:
        rows = Path("/proc/net/route").read_text().splitlines()[1:]
    except OSError:
        return True  # not Linux-like; let the apiserver decide
    return any(r.split()[1] == "00000000" for r in rows if len(r.split()) > 1)


def _node_manifest(name: str, zone: str, taint: bool) -> dict[str, Any]:
    """A fake Node for kwok (labels as kwok's docs plus zone/type labels the operator's tests select on)."""
    spec: dict[str, Any] = {}
    if taint:  # kwok's docs taint fake nodes; off by default so ordinary pods schedule without tolerations
        spec["taints"] = [{"key": "kwok.x-k8s.io/node", "value": "fake", "effect": "NoSchedule"}]
    resources = {"cpu": "32", "memory": "256Gi", "pods": "110", "ephemeral-storage": "1Ti"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "type": "kwok",
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/role": "agent",
                "node-role.kubernetes.io/agent": "",
                "topology.kubernetes.io/region": "local",
                "topology.kubernetes.io/zone": zone,
            },
        },
        "spec": spec,
        "status": {"capacity": resources, "allocatable": resources},
    }


def _node_is_ready(node: dict[str, Any]) -> bool:
    conditions = node.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


class LocalControlPlane:
    """Context manager running etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok."""

    def __init__(
        self,
        state_dir: Path | str | None = None,
        *,
        zones: Sequence[str] = ("zone-a", "zone-b"),
        nodes_per_zone: int = 1,
        taint_nodes: bool = False,
        binaries: Binaries | None = None,
        timeout: float = 120.0,
        verbosity: int = 0,
    ) -> None:
        self.binaries = binaries or find_binaries()
        self._own_state_dir = state_dir is None
        self.state_dir = Path(state_dir or tempfile.mkdtemp(prefix="shardrec-cp-")).resolve()
        self.zones = tuple(zones)
        self.nodes_per_zone = nodes_per_zone
        self.taint_nodes = taint_nodes
        self.timeout = timeout
        self.verbosity = verbosity
        self.pki = Pki.in_dir(self.state_dir / "pki")
        self.kubeconfig = self.state_dir / "kubeconfig"
        self.components: list[Component] = []
        self.ports: dict[str, int] = {}
        self.etcd_data_dir: Path | None = None
        self.startup_seconds: float | None = None
        self._api: ApiClient | None = None

    # -- public API ------------------------------------------------------------------------------------------

    @property
    def api_url(self) -> str:
        return f"https://127.0.0.1:{self.ports['apiserver']}"

    @property
    def api(self) -> ApiClient:
        if self._api is None:
            self._api = ApiClient(self.api_url, self.pki)
        return self._api

    @property
    def node_names(self) -> list[str]:
        return [f"kwok-{zone}-{i}" for zone in self.zones for i in range(self.nodes_per_zone)]

    def __enter__(self) -> LocalControlPlane:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> LocalControlPlane:
        t0 = time.monotonic()
        try:
            self._prepare_state_dir()
            generate_pki(self.pki.ca_cert.parent)
            self._start_etcd()
            self._start_apiserver()
            self._start_controllers_and_kwok()
            self._create_nodes()
            self._wait_nodes_ready()
            self._wait_default_service_account()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0
        return self

    def stop(self) -> None:
        """Reverse start order: clients first (so they do not spam errors), then apiserver, then etcd."""
        procs = {c.pid: c.proc for c in self.components if c.proc is not None}
        stages = (("kwok", "kube-scheduler", "kube-controller-manager"), ("kube-apiserver",), ("etcd",))
        for names in stages:
            terminate([c.to_state() for c in self.components if c.name in names], procs)
        self.components = []
        self._remove_etcd_data()
        if self._own_state_dir and not os.environ.get("SHARDREC_KEEP_CLUSTER_STATE"):
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run the built kubectl against this cluster (apply, explain, auth can-i ...)."""
        return subprocess.run(
            [str(self.binaries.kubectl), f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
        )

    def write_state(self) -> Path:
        """Record PIDs etc. so `cluster.py down` can stop a detached plane."""
        state = {
            "kubeconfig": str(self.kubeconfig),
            "api_url": self.api_url,
            "etcd_data_dir": str(self.etcd_data_dir) if self.etcd_data_dir else None,
            "binaries": str(self.binaries.root),
            "ports": self.ports,
            "startup_seconds": self.startup_seconds,
            "components": [c.to_state() for c in self.components],
        }
        path = self.state_dir / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        tmp.replace(path)
        return path

    def log_tails(self) -> str:
        return "\n".join(f"----- {c.name} ({c.log}) -----\n{log_tail(c.log)}" for c in self.components)

    # -- start steps -----------------------------------------------------------------------------------------

    def _prepare_state_dir(self) -> None:
        (self.state_dir / "logs").mkdir(parents=True, exist_ok=True)
        for log in (self.state_dir / "logs").glob("*.log"):
            log.unlink()  # fresh logs per start so failure tails are about this run
        # etcd on tmpfs: no fsync cost and no disk wear; falls back to the state dir.
        shm = Path("/dev/shm")
        base = shm if shm.is_dir() and os.access(shm, os.W_OK) else self.state_dir
        self.etcd_data_dir = Path(tempfile.mkdtemp(prefix="shardrec-etcd-", dir=base))

    def _remove_etcd_data(self) -> None:
        if self.etcd_data_dir is not None:
            shutil.rmtree(self.etcd_data_dir, ignore_errors=True)
            self.etcd_data_dir = None

    def _component(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Component:
        return Component(name=name, argv=argv, log=self.state_dir / "logs" / f"{name}.log", env=env)

    def _launch(
        self, make: Callable[[], Component], wait: Callable[[Component], None], attempts: int = 3
    ) -> None:
        """Spawn and wait; on a port race ('address already in use') retry with freshly chosen ports."""
        for attempt in range(1, attempts + 1):
            comp = make()
            self.components.append(comp)
            comp.spawn()
            try:
                wait(comp)
                return
            except ControlPlaneError:
                if attempt == attempts or "address already in use" not in log_tail(comp.log, 200):
                    raise
                terminate([comp.to_state()], {comp.pid: comp.proc} if comp.proc else None)
                self.components.remove(comp)
                comp.log.rename(comp.log.with_suffix(f".attempt{attempt}.log"))

    def _wait_for(
        self, what: str, check: Callable[[], str | None], timeout: float, watch: Sequence[Component] = ()
    ) -> None:
        """Poll check() (None = done, str = why not yet) until timeout; fail fast if a watched one dies."""
        deadline = time.monotonic() + timeout
        last = "not checked yet"
        while True:
            for comp in watch:
                code = comp.exited()
                if code is not None:
                    raise ControlPlaneError(
                        f"{comp.name} exited with code {code} while waiting for {what}.\n{self.log_tails()}"
                    )
            try:
                result = check()
            except _PROBE_ERRORS as exc:
                result = f"{type(exc).__name__}: {exc}"
            if result is None:
                return
            last = result
            if time.monotonic() >= deadline:
                raise ControlPlaneError(
                    f"timed out after {timeout:.0f}s waiting for {what}; last: {last}\n{self.log_tails()}"
                )
            time.sleep(0.2)

    def _expect_http_ok(self, url: str, ctx: ssl.SSLContext | None) -> str | None:
        code, body = http_get(url, ctx)
        return None if code == 200 else f"HTTP {code}: {body[:300]}"

    def _start_etcd(self) -> None:
        no_fsync = _etcd_supports_no_fsync(self.binaries.etcd)

        def make() -> Component:
            client, peer = free_port(), free_port()
            self.ports["etcd"], self.ports["etcd-peer"] = client, peer
            assert self.etcd_data_dir is not None
            argv = [
                str(self.binaries.etcd),
                "--name=node0",
                f"--data-dir={self.etcd_data_dir}",
                f"--listen-client-urls=http://127.0.0.1:{client}",
                f"--advertise-client-urls=http://127.0.0.1:{client}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=node0=http://127.0.0.1:{peer}",
                "--initial-cluster-state=new",
                "--auto-compaction-retention=1",
                "--quota-backend-bytes=8589934592",
                "--log-level=warn",
            ]
            if no_fsync:
                argv.append(
                    "--unsafe-no-fsync=true"
                )  # test data is throw-away; fsync dominates write latency
            return self._component("etcd", argv)

        def wait(comp: Component) -> None:
            url = f"http://127.0.0.1:{self.ports['etcd']}/health"
            self._wait_for("etcd /health", lambda: self._expect_http_ok(url, None), 30, [comp])

        self._launch(make, wait)

    def _start_apiserver(self) -> None:
        p = self.pki

        def make() -> Component:
            port = free_port()
            self.ports["apiserver"] = port
            self._api = None
            write_kubeconfig(self.kubeconfig, f"https://127.0.0.1:{port}", p)
            argv = [
                str(self.binaries.kube_apiserver),
                f"--etcd-servers=http://127.0.0.1:{self.ports['etcd']}",
                "--bind-address=127.0.0.1",
                f"--secure-port={port}",
                f"--tls-cert-file={p.cert}",
                f"--tls-private-key-file={p.key}",
                f"--client-ca-file={p.ca_cert}",
                f"--cert-dir={self.state_dir / 'apiserver-certs'}",  # avoids the default /var/run/kubernetes
                f"--service-account-issuer={SA_ISSUER}",
                f"--service-account-key-file={p.sa_pub}",
                f"--service-account-signing-key-file={p.sa_key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                # RBAC, not AlwaysAllow: RBAC objects and `kubectl auth can-i` must behave for real. Node +
                # NodeRestriction: a real kubelet (e2e/node) runs with its own system:node:<name> identity.
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",
                # The API server's identity towards kubelets (logs, exec, port-forward on the real node).
                f"--kubelet-client-certificate={p.cert}",
                f"--kubelet-client-key={p.key}",
                # InternalIP first (as kubeadm does): a node's hostname does not resolve on this machine.
                "--kubelet-preferred-address-types=InternalIP,Hostname,InternalDNS,ExternalDNS,ExternalIP",
                "--allow-privileged=true",
                # Default admission plugins stay on (PodSecurity, ServiceAccount, NamespaceLifecycle,
                # ValidatingAdmissionPolicy, ...). APF off: saves CPU on small machines; no tenants here.
                "--enable-priority-and-fairness=false",
                "--profiling=false",
                # A front-proxy CA for the extension-apiserver-authentication ConfigMap: without it the KCM
                # and scheduler log "missing content for CA bundle" repeatedly. The allowed name is a CN we
                # never issue, so no certificate can actually assert identities through these headers.
                f"--requestheader-client-ca-file={p.ca_cert}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--v={self.verbosity}",
            ]
            if not _has_default_route():
                # The advertise address is derived from the default route; without one the apiserver refuses
                # to start. Use a non-special placeholder and stop reconciling the `kubernetes` Endpoints
                # (nothing reaches the apiserver through them here). Untested path: this machine has a route.
                argv += ["--advertise-address=10.96.0.1", "--endpoint-reconciler-type=none"]
            return self._component("kube-apiserver", argv)

        def wait(comp: Component) -> None:
            ctx = _tls_context(p, client_cert=True)
            url = f"https://127.0.0.1:{self.ports['apiserver']}/readyz"
            etcd = [c for c in self.components if c.name == "etcd"]
            self._wait_for(
                "kube-apiserver /readyz", lambda: self._expect_http_ok(url, ctx), self.timeout, [*etcd, comp]
            )

        self._launch(make, wait)

    def _secure_component_args(self, port: int) -> list[str]:
        """KCM + scheduler: serve on loopback with our (verifiable) cert; delegated auth via kubeconfig."""
        p, kc = self.pki, self.kubeconfig
        return [
            f"--authentication-kubeconfig={kc}",
            f"--authorization-kubeconfig={kc}",
            "--bind-address=127.0.0.1",
            f"--secure-port={port}",
            f"--tls-cert-file={p.cert}",
            f"--tls-private-key-file={p.key}",
            "--authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics",
            f"--v={self.verbosity}",
        ]

    def _kcm(self) -> Component:
        port = free_port()
        self.ports["kube-controller-manager"] = port
        p = self.pki
        argv = [
            str(self.binaries.kube_controller_manager),
            f"--kubeconfig={self.kubeconfig}",
            *self._secure_component_args(port),
            # Default controller set: garbage collector, namespace, deployment/replicaset, statefulset, job,
            # cronjob, serviceaccount (+token), node lifecycle, ... The SA key lets it mint SA tokens.
            f"--root-ca-file={p.ca_cert}",
            f"--service-account-private-key-file={p.sa_key}",
            f"--cluster-signing-cert-file={p.ca_cert}",
            f"--cluster-signing-key-file={p.ca_key}",
            "--leader-elect=false",  # single instance; skips lease acquisition delay
            "--node-monitor-period=5s",
            "--node-monitor-grace-period=40s",
            "--kube-api-qps=100",
            "--kube-api-burst=200",  # tests create/delete in bursts; defaults throttle GC
        ]
        return self._component("kube-controller-manager", argv)

    def _scheduler(self) -> Component:
        port = free_port()
        self.ports["kube-scheduler"] = port
        config = self.state_dir / "kube-scheduler.json"
        # A config file instead of the deprecated --kubeconfig/--leader-elect scheduler flags.
        config.write_text(
            json.dumps(
                {
                    "apiVersion": "kubescheduler.config.k8s.io/v1",
                    "kind": "KubeSchedulerConfiguration",
                    "clientConnection": {"kubeconfig": str(self.kubeconfig), "qps": 100, "burst": 200},
                    "leaderElection": {"leaderElect": False},
                },
                indent=2,
            )
        )
        argv = [str(self.binaries.kube_scheduler), f"--config={config}", *self._secure_component_args(port)]
        return self._component("kube-scheduler", argv)

    def _kwok(self) -> Component:
        port = free_port()
        self.ports["kwok"] = port
        home = self.state_dir / "kwok-home"
        home.mkdir(exist_ok=True)
        argv = [
            str(self.binaries.kwok),
            f"--kubeconfig={self.kubeconfig}",
            *(f"--config={self.binaries.stages / s}" for s in KWOK_STAGES),
            # Only the nodes this file creates (annotated kwok.x-k8s.io/node=fake): a real node beside them
            # (e2e/node) must never be managed, or kwok would fake its pods as Running.
            KWOK_NODE_SELECTOR,
            f"--server-address=127.0.0.1:{port}",  # plain-HTTP /healthz; kwok's default binds 0.0.0.0
            # Pairs with the heartbeat-with-lease stage.
            f"--node-lease-duration-seconds={KWOK_LEASE_SECONDS}",
            f"--cidr={POD_CIDR}",
        ]
        # HOME override: kwok silently auto-loads ~/.kwok/kwok.yaml, which could change behaviour per machine.
        env = {**os.environ, "HOME": str(home)}
        return self._component("kwok", argv, env)

    def _start_controllers_and_kwok(self) -> None:
        """KCM, scheduler and kwok only need the apiserver, so they start (and are awaited) together."""
        started = [self._kcm(), self._scheduler(), self._kwok()]
        for comp in started:
            self.components.append(comp)
            comp.spawn()
        ctx = _tls_context(self.pki, client_cert=False)
        watch = list(self.components)
        probes: list[tuple[str, str, ssl.SSLContext | None]] = [
            (name, f"https://127.0.0.1:{self.ports[name]}/healthz", ctx)
            for name in ("kube-controller-manager", "kube-scheduler")
        ]
        probes.append(("kwok", f"http://127.0.0.1:{self.ports['kwok']}/healthz", None))
        for name, url, tls in probes:
            self._wait_for(
                f"{name} /healthz", functools.partial(self._expect_http_ok, url, tls), self.timeout, watch
            )

    def _create_nodes(self) -> None:
        for i, name in enumerate(self.node_names):
            zone = self.zones[i // self.nodes_per_zone]
            code, body = self.api.request(
                "POST", "/api/v1/nodes", _node_manifest(name, zone, self.taint_nodes)
            )
            if code not in (201, 409):
                raise ControlPlaneError(f"creating node {name}: HTTP {code}: {body.get('message', body)}")

    def _wait_nodes_ready(self) -> None:
        def check() -> str | None:
            code, body = self.api.request("GET", "/api/v1/nodes?labelSelector=type%3Dkwok")
            if code != 200:
                return f"HTTP {code}"
            ready = {n["metadata"]["name"] for n in body.get("items", []) if _node_is_ready(n)}
            missing = sorted(set(self.node_names) - ready)
            return f"not Ready yet: {missing}" if missing else None

        self._wait_for("kwok nodes Ready", check, 60, self.components)

    def _wait_default_service_account(self) -> None:
        """Pods are rejected by the ServiceAccount admission plugin until the KCM has created `default`."""

        def check() -> str | None:
            code, _ = self.api.request("GET", "/api/v1/namespaces/default/serviceaccounts/default")
            return None if code == 200 else f"HTTP {code}"

        self._wait_for("default/default ServiceAccount", check, 60, self.components)


# ----------------------------------------------------------------------------------------------------
# CLI: up / down / status / env


def _load_state(state_dir: Path) -> dict[str, Any] | None:
    path = state_dir / STATE_FILE
    if not path.is_file():
        return None
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def stop_from_state(state_dir: Path) -> bool:
    """Stop a detached plane by the PIDs in its state file. Returns False if there was nothing to stop."""
    state = _load_state(state_dir)
    if state is None:
        return False
    comps: list[dict[str, Any]] = state["components"]
    for names in (("kwok", "kube-scheduler", "kube-controller-manager"), ("kube-apiserver",), ("etcd",)):
        terminate([c for c in comps if c["name"] in names])
    data_dir = state.get("etcd_data_dir")
    if data_dir and Path(data_dir).name.startswith("shardrec-etcd-"):  # only ever delete what we created
        shutil.rmtree(data_dir, ignore_errors=True)
    (state_dir / STATE_FILE).unlink()
    return True


def _cmd_up(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir).resolve()
    state = _load_state(state_dir)
    if state and any(_owns(c) for c in state["components"]):
        print(f"a control plane is already running from {state_dir}; run `down` first", file=sys.stderr)
        return 1
    if state:
        stop_from_state(state_dir)  # stale state from a crash: clean up the leftovers
    try:
        cp = LocalControlPlane(
            state_dir,
            zones=args.zones.split(","),
            nodes_per_zone=args.nodes_per_zone,
            timeout=args.timeout,
            verbosity=args.v,
        ).start()
    except (BinariesNotFoundError, ControlPlaneError) as exc:
        print(f"cluster up failed: {exc}", file=sys.stderr)
        return 1
    cp.write_state()
    print(
        f"control plane up in {cp.startup_seconds:.1f}s: {cp.api_url} nodes={','.join(cp.node_names)} "
        f"logs={state_dir / 'logs'}",
        file=sys.stderr,
    )
    print(f"export KUBECONFIG={cp.kubeconfig}")
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir).resolve()
    stopped = stop_from_state(state_dir)
    print("control plane stopped" if stopped else f"nothing to stop in {state_dir}", file=sys.stderr)
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir).resolve()
    state = _load_state(state_dir)
    if state is None:
        print(f"not running (no {STATE_FILE} in {state_dir})")
        return 1
    healthy = True
    for comp in state["components"]:
        alive = _owns(comp)
        healthy &= alive
        print(f"{comp['name']:<24} pid={comp['pid']:<8} {'running' if alive else 'DEAD'}")
    pki = Pki.in_dir(state_dir / "pki")
    with contextlib.suppress(*_PROBE_ERRORS):
        code, body = http_get(f"{state['api_url']}/readyz", _tls_context(pki, True))
        print(f"apiserver /readyz: {code} {body.strip()[:80]}")
        healthy &= code == 200
    print(f"export KUBECONFIG={state['kubeconfig']}")
    return 0 if healthy else 1


def _cmd_env(args: argparse.Namespace) -> int:
    state = _load_state(Path(args.state_dir).resolve())
    if state is None:
        print("not running", file=sys.stderr)
        return 1
    print(f"export KUBECONFIG={state['kubeconfig']}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func in (("up", _cmd_up), ("down", _cmd_down), ("status", _cmd_status), ("env", _cmd_env)):
        p = sub.add_parser(name)
        p.add_argument("--state-dir", required=True, help="kubeconfig, PKI, logs and state.json live here")
        p.set_defaults(func=func)
        if name == "up":
            p.add_argument("--zones", default="zone-a,zone-b")
            p.add_argument("--nodes-per-zone", type=int, default=1)
            p.add_argument("--timeout", type=float, default=120.0, help="per-wait timeout in seconds")
            p.add_argument("-v", type=int, default=0, help="klog verbosity of the kube components")
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
