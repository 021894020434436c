#!/usr/bin/env python3
"""One real Kubernetes node (containerd + runc + kubelet + kube-proxy) beside the kwok nodes of the local
control plane (e2e/controlplane/cluster.py). Pods on it really run; nothing is pulled, images are imported.

Network layout (every address below exists only on this machine; see README.md "Network rules"):

    host netns                                   node netns `shardrec-node` (made by this harness)
    ----------                                   ------------------------------------------------
    kube-apiserver 127.0.0.1:P                   kubelet  (serves 10.211.255.2:10250), kube-proxy (iptables),
    shr-node-h 10.211.255.1/30  <--- veth --->   shr-node-n 10.211.255.2/30   containerd + CNI
    routes 10.211.0.0/16 and 10.96.0.0/16        bridge shr-br0 10.211.0.1/24 -- pods 10.211.0.x/24
           via 10.211.255.2                      route <apiserver advertise IP>/32 via 10.211.255.1

- The node's components run in their own network namespace, so their iptables rules (kube-proxy), the
  bridge, ip_forward and the pods' addresses never touch the host's tables; deleting the namespace removes all
  of them at once.
- Node components and pods reach the API server through the `kubernetes` Service's endpoint (the advertise
  address, the host's own IP): the node netns routes that one /32 into the veth, and one host DNAT rule, for
  packets arriving on the veth only, maps it to 127.0.0.1:P (route_localnet on that veth only). The API
  server keeps listening on 127.0.0.1 only.
- The host reaches ClusterIPs and pod IPs through two routes into the veth (the same path a node's own
  traffic takes); a host filter chain drops any packet for those ranges that did not come through the veth.

Commands (the Makefile runs these from the repository root):

    make node-build  ->  bash e2e/node/build.sh
    make node-up     ->  python3 e2e/node/node.py up --cluster-state .state/controlplane \
                                                    --state-dir .state/node
    make node-down   ->  python3 e2e/node/node.py down --state-dir .state/node
    python3 e2e/node/node.py import-image --state-dir .state/node FILE.tar   # OCI or docker archive

From Python:

    with LocalControlPlane() as cp, LocalNode(cp.state_dir) as node:
        node.import_image("shard.oci.tar")
        cp.kubectl("apply", "-f", "pod.yaml")       # nodeName / nodeSelector: node.labels

Needs root (network namespaces, iptables, mounts, cgroups). Stdlib only.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import hashlib
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any

HERE = Path(__file__).resolve().parent
CLUSTER_PY = HERE.parent / "controlplane" / "cluster.py"
CLUSTER_MODULE = "shardrec_e2e_controlplane_cluster"  # same name as e2e/conftest.py: one module object
BUILD_HINT = "run `make node-build` (i.e. `bash e2e/node/build.sh`)"
STATE_FILE = "node-state.json"

NODE_NAME = "shardrec-node-0"
NETNS = "shardrec-node"
HOST_VETH, NODE_VETH = "shr-node-h", "shr-node-n"
BRIDGE = "shr-br0"
HARNESS_RANGE = "10.211.0.0/16"  # every node-side address below lives in here
POD_CIDR = "10.211.0.0/24"
POD_GATEWAY = "10.211.0.1"
HOST_LINK_IP, NODE_IP, LINK_PREFIX = "10.211.255.1", "10.211.255.2", 30
GUARD_CHAIN = "SHARDREC-NODE-GUARD"
DRAIN_GRACE = 2  # seconds a pod gets to stop when the node itself is stopped
# One real node per machine: fixed names and ranges, so a second `up` must fail fast instead of colliding.
MACHINE_LOCK = Path("/run/shardrec-node.lock")
NODE_LABELS = {"shardrec.io/node": "real", "topology.kubernetes.io/zone": "zone-real"}

PAUSE_IMAGE = "localhost/shardrec/pause:node"
BUSYBOX_IMAGE = "localhost/shardrec/busybox:node"
COREDNS_IMAGE = "localhost/shardrec/coredns:node"
DNS_IP = "10.96.0.10"  # the kube-dns Service (inside cluster.py's SERVICE_CIDR, as kubeadm picks it)
DNS_LABEL = "shardrec.io/node-dns"  # on every object of the DNS add-on, so `down` can remove them
BUSYBOX = Path("/bin/busybox")  # Debian busybox-static (installed by build.sh)

# kubelet writes these host-wide sysctls when protectKernelDefaults is false (and refuses to start when it
# is true and they differ). The harness records them before the kubelet starts and puts them back on stop.
KUBELET_SYSCTLS = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)


class NodeError(RuntimeError):
    """The node failed to start or a wait timed out; the message carries log tails."""


class NodeBusyError(NodeError):
    """Another real node runs (or starts) on this machine: one at a time (fixed names and ranges)."""


class NodeBinariesNotFoundError(FileNotFoundError):
    """e2e/node/build.sh has not been run for the versions in versions.env."""


def cluster_module() -> ModuleType:
    if CLUSTER_MODULE in sys.modules:
        return sys.modules[CLUSTER_MODULE]
    spec = importlib.util.spec_from_file_location(CLUSTER_MODULE, CLUSTER_PY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[CLUSTER_MODULE] = module
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------------------------------
# Binaries


@dataclasses.dataclass(frozen=True)
class NodeBinaries:
    kubelet: Path
    kube_proxy: Path
    kubectl: Path
    containerd: Path
    shim: Path
    ctr: Path
    runc: Path
    coredns: Path
    cni_dir: Path = Path("/usr/lib/cni")

    def missing(self) -> list[str]:
        gone = [str(p) for p in dataclasses.astuple(self)[:8] if not os.access(p, os.X_OK)]
        gone += [
            str(self.cni_dir / p)
            for p in ("bridge", "host-local", "loopback")
            if not (self.cni_dir / p).is_file()
        ]
        gone += [tool for tool in ("iptables", "ip", "nsenter", "conntrack") if shutil.which(tool) is None]
        if not BUSYBOX.is_file():
            gone.append(str(BUSYBOX))
        return gone


def find_node_binaries() -> NodeBinaries:
    cp = cluster_module()
    try:
        k8s = cp.find_binaries()
    except cp.BinariesNotFoundError as exc:
        raise NodeBinariesNotFoundError(str(exc)) from None
    v = cp.read_versions()
    prefix = (
        f"containerd{v['CONTAINERD_VERSION'].removeprefix('v')}-runc{v['RUNC_VERSION'].removeprefix('v')}"
        f"-coredns{v['COREDNS_VERSION'].removeprefix('v')}-go"
    )
    root = Path(os.environ.get("SHARDREC_CACHE") or Path.home() / ".cache" / "shardrec") / "node"
    candidates = sorted(root.glob(f"{prefix}*"), key=lambda p: p.stat().st_mtime, reverse=True)
    kbin = Path(k8s.root) / "bin"
    for cand in candidates or [root / f"{prefix}?"]:
        b = cand / "bin"
        binaries = NodeBinaries(
            kubelet=kbin / "kubelet",
            kube_proxy=kbin / "kube-proxy",
            kubectl=Path(k8s.kubectl),
            containerd=b / "containerd",
            shim=b / "containerd-shim-runc-v2",
            ctr=b / "ctr",
            runc=b / "runc",
            coredns=b / "coredns",
        )
        missing = binaries.missing()
        if not missing:
            return binaries
    raise NodeBinariesNotFoundError(f"real-node binaries missing ({', '.join(missing)}); {BUILD_HINT}")


# ----------------------------------------------------------------------------------------------------
# Small helpers


def run(*argv: str, check: bool = True, timeout: float = 60.0, input: str | None = None) -> str:
    res = subprocess.run(
        list(argv), capture_output=True, text=True, timeout=timeout, input=input, check=False
    )
    if check and res.returncode != 0:
        raise NodeError(
            f"{' '.join(argv)} failed ({res.returncode}): {res.stderr.strip() or res.stdout.strip()}"
        )
    return res.stdout


def in_netns(*argv: str) -> list[str]:
    """argv run inside the node netns; nsenter execs (no fork) so the PID is the command's own."""
    return ["nsenter", f"--net=/run/netns/{NETNS}", "--", *argv]


def _sysctl_path(key: str) -> Path:
    return Path("/proc/sys") / key


def openssl_sign(
    pki: Any, out_dir: Path, name: str, subject: str, *, client: bool, server_ips: Sequence[str] = ()
) -> tuple[Path, Path]:
    """A key + certificate signed by the control plane's CA (openssl CLI, as controlplane/pki.py)."""
    cp = cluster_module()
    key, crt = out_dir / f"{name}.key", out_dir / f"{name}.crt"
    usages = ",".join(u for u, on in (("clientAuth", client), ("serverAuth", bool(server_ips))) if on)
    lines = [
        "basicConstraints=CA:FALSE",
        "keyUsage=critical,digitalSignature,keyEncipherment",
        f"extendedKeyUsage={usages}",
    ]
    if server_ips:
        lines.append("subjectAltName=" + ",".join([f"IP:{ip}" for ip in server_ips] + [f"DNS:{NODE_NAME}"]))
    cp.issue_with_openssl(pki, key=key, cert=crt, subject=subject, extensions=lines, days=365)
    key.chmod(0o600)
    return crt, key


def write_node_kubeconfig(path: Path, server: str, ca: Path, cert: Path, key: Path) -> None:
    """The API server's certificate names `kubernetes`, not the advertise IP: pin the TLS server name."""
    user = {"client-certificate": str(cert), "client-key": str(key)}
    cluster = {"server": server, "certificate-authority": str(ca), "tls-server-name": "kubernetes"}
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": cluster}],
        "users": [{"name": "node", "user": user}],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": "node"}}],
        "current-context": "local",
    }
    path.write_text(json.dumps(config, indent=2) + "\n")
    path.chmod(0o600)


# ----------------------------------------------------------------------------------------------------
# Images: a tiny OCI archive from Debian's busybox-static, written with the standard library


def _tar_bytes(build: Any) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        build(tar)
    return buf.getvalue()


def static_oci_archive(
    out: Path,
    name: str,
    binary: Path,
    entrypoint: Sequence[str],
    *,
    links: Sequence[str] = (),
    cmd: Sequence[str] = (),
) -> Path:
    """An OCI image archive for `ctr import`: one layer holding one static binary as /bin/<name> (plus
    symlinks to it, e.g. busybox applets), /tmp, /etc/passwd and /etc/group. Deterministic (fixed mtimes,
    sorted entries): the same binary gives the same digest every time."""

    def layer(tar: tarfile.TarFile) -> None:
        for d in ("bin", "tmp", "etc"):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if d == "tmp" else 0o755
            tar.addfile(info)
        data = binary.read_bytes()
        info = tarfile.TarInfo(f"bin/{binary.name}")
        info.size, info.mode = len(data), 0o755
        tar.addfile(info, io.BytesIO(data))
        for link in sorted(set(links) - {binary.name}):
            info = tarfile.TarInfo(f"bin/{link}")
            info.type, info.linkname, info.mode = tarfile.SYMTYPE, binary.name, 0o777
            tar.addfile(info)
        for fname, text in (
            ("etc/passwd", "root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n"),
            ("etc/group", "root:x:0:\nnobody:x:65534:\n"),
        ):
            raw = text.encode()
            info = tarfile.TarInfo(fname)
            info.size, info.mode = len(raw), 0o644
            tar.addfile(info, io.BytesIO(raw))

    layer_tar = _tar_bytes(layer)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": list(entrypoint),
            "Cmd": list(cmd) or None,
            "Env": ["PATH=/bin"],
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(layer_tar).hexdigest()}"]},
    }
    blobs: dict[str, bytes] = {}

    def blob(data: bytes, media_type: str) -> dict[str, Any]:
        digest = hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}

    config_desc = blob(
        json.dumps(config, sort_keys=True).encode(), "application/vnd.oci.image.config.v1+json"
    )
    # Uncompressed: the archive never leaves this machine, and gzip costs seconds for a 70 MB binary.
    layer_desc = blob(layer_tar, "application/vnd.oci.image.layer.v1.tar")
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config_desc,
        "layers": [layer_desc],
    }
    manifest_desc = blob(
        json.dumps(manifest, sort_keys=True).encode(), "application/vnd.oci.image.manifest.v1+json"
    )
    manifest_desc["annotations"] = {
        "io.containerd.image.name": name,
        "org.opencontainers.image.ref.name": name,
    }
    manifest_desc["platform"] = {"architecture": "amd64", "os": "linux"}
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [manifest_desc],
    }

    def archive(tar: tarfile.TarFile) -> None:
        def add(path: str, data: bytes) -> None:
            info = tarfile.TarInfo(path)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))

        add("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        add("index.json", json.dumps(index, sort_keys=True).encode())
        for digest, data in sorted(blobs.items()):
            add(f"blobs/sha256/{digest}", data)

    out.write_bytes(_tar_bytes(archive))
    return out


def busybox_oci_archive(out: Path, name: str, entrypoint: Sequence[str]) -> Path:
    """Debian's static busybox with a symlink per applet (sh, sleep, httpd, nc, nslookup, ...)."""
    applets = run(str(BUSYBOX), "--list").split()
    return static_oci_archive(out, name, BUSYBOX, entrypoint, links=applets)


# ----------------------------------------------------------------------------------------------------
# The node


class LocalNode:
    """Context manager: a real node joined to the control plane whose state dir is `cluster_state`."""

    def __init__(
        self,
        cluster_state: Path | str,
        state_dir: Path | str | None = None,
        *,
        binaries: NodeBinaries | None = None,
        timeout: float = 120.0,
        verbosity: int = 0,
        dns: bool = True,
    ) -> None:
        """dns: run CoreDNS as a pod behind the kube-dns Service (10.96.0.10), the kubelet's clusterDNS."""
        self.cp = cluster_module()
        self.dns = dns
        self.binaries = binaries or find_node_binaries()
        self.cluster_state = Path(cluster_state).resolve()
        self._own_state_dir = state_dir is None
        self.state_dir = Path(state_dir or tempfile.mkdtemp(prefix="shardrec-node-")).resolve()
        self.timeout = timeout
        self.verbosity = verbosity
        self.cp_pki = self.cp.Pki.in_dir(self.cluster_state / "pki")
        self.admin_kubeconfig = self.cluster_state / "kubeconfig"
        self.name = NODE_NAME
        self.node_ip = NODE_IP
        self.pod_cidr = POD_CIDR
        self.labels = dict(NODE_LABELS)
        self.components: list[Any] = []
        self.startup_seconds: float | None = None
        self.step_seconds: dict[
            str, float
        ] = {}  # start step -> wall seconds (printed by `up`, kept in state)
        self.api_endpoint: tuple[str, int] | None = None
        self.saved_sysctls: dict[str, str] = {}
        self._lock_fd: int | None = None
        self._owns_host = False  # set once the machine lock is ours: only then may stop() undo host changes
        d = self.state_dir
        self.sock = d / "containerd" / "containerd.sock"
        self.logs = d / "logs"

    # -- public API ------------------------------------------------------------------------------------------

    def __enter__(self) -> LocalNode:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> LocalNode:
        t0 = time.monotonic()
        steps = [
            self._take_machine_lock,
            self._prepare_dirs,
            self._setup_network,
            self._write_pki_and_kubeconfigs,
            self._start_containerd,
            self._import_base_images,
            self._save_sysctls,
            self._start_kubelet,
            self._start_kube_proxy,
            self._wait_node_ready,
        ]
        if self.dns:
            steps.append(self._start_dns)
        try:
            for step in steps:
                t = time.monotonic()
                step()
                self.step_seconds[step.__name__.lstrip("_")] = round(time.monotonic() - t, 2)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0
        return self

    def stop(self) -> None:
        """Pods first (the kubelet tears their sandboxes down), then kubelet + kube-proxy, tasks, containerd,
        mounts, cgroups, network. Every step is best effort so a half-started node is cleaned up as well."""
        if not self._owns_host:  # another node owns the machine: touch nothing of the host
            self._remove_own_state_dir()
            return
        procs = {c.pid: c.proc for c in self.components if c.proc is not None}
        if any(c.name == "kubelet" for c in self.components):
            self._drain_pods()
        kubelet_ran = any(c.name == "kubelet" for c in self.components)
        self.cp.terminate(
            [c.to_state() for c in self.components if c.name in ("kube-proxy", "kubelet")], procs
        )
        if kubelet_ran:  # the Node object would stay NotReady forever; a later `up` registers it again
            self._kubectl("delete", "node", self.name, "--ignore-not-found", check=False)
        if any(c.name == "containerd" for c in self.components):
            self._kill_leftover_tasks()
        self.cp.terminate([c.to_state() for c in self.components if c.name == "containerd"], procs)
        self.components = []
        cleanup_host(self.state_dir, self.saved_sysctls)
        self.saved_sysctls = {}
        (self.state_dir / STATE_FILE).unlink(missing_ok=True)
        self._owns_host = False
        self._release_machine_lock()
        self._remove_own_state_dir()

    def _remove_own_state_dir(self) -> None:
        if self._own_state_dir and not os.environ.get("SHARDREC_KEEP_CLUSTER_STATE"):
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def ctr(self, *args: str, timeout: float = 120.0) -> str:
        """Run ctr against this node's containerd in the CRI namespace (k8s.io)."""
        return run(
            str(self.binaries.ctr),
            "--address",
            str(self.sock),
            "--namespace",
            "k8s.io",
            *args,
            timeout=timeout,
        )

    def import_image(self, archive: Path | str, name: str | None = None) -> list[str]:
        """Import an OCI (or docker) archive into the node's containerd; returns the image names it holds now.

        Pods use the image with `imagePullPolicy: Never` (or IfNotPresent and the exact tag): no registry.
        `name` renames a single-image archive whose ref annotation is missing or only a tag.
        """
        args = ["images", "import"]
        if name:
            args += ["--index-name", name]
        self.ctr(*args, str(archive), timeout=600)
        return self.image_names()

    def image_names(self) -> list[str]:
        """Named images in the CRI namespace (the CRI's own digest-only references left out)."""
        names = (line.split()[0] for line in self.ctr("images", "ls").splitlines()[1:] if line.strip())
        return sorted(n for n in names if not n.startswith("sha256:"))

    def running_tasks(self) -> dict[str, str]:
        """container id -> status, straight from containerd (what really runs, not what the API says)."""
        tasks = {}
        for line in self.ctr("tasks", "ls").splitlines()[1:]:
            parts = line.split()
            if len(parts) >= 3:
                tasks[parts[0]] = parts[2]
        return tasks

    def netns_argv(self, *argv: str) -> list[str]:
        """argv that runs inside the node's network namespace (where ClusterIPs work as on any node)."""
        return in_netns(*argv)

    def write_state(self) -> Path:
        state = {
            "name": self.name,
            "node_ip": self.node_ip,
            "pod_cidr": self.pod_cidr,
            "cluster_state": str(self.cluster_state),
            "containerd_socket": str(self.sock),
            "ctr": str(self.binaries.ctr),
            "api_endpoint": list(self.api_endpoint) if self.api_endpoint else None,
            "saved_sysctls": self.saved_sysctls,
            "startup_seconds": self.startup_seconds,
            "step_seconds": self.step_seconds,
            "components": [c.to_state() for c in self.components],
        }
        path = self.state_dir / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        tmp.replace(path)
        return path

    def log_tails(self) -> str:
        return "\n".join(
            f"----- {c.name} ({c.log}) -----\n{self.cp.log_tail(c.log)}" for c in self.components
        )

    # -- start steps -----------------------------------------------------------------------------------------

    def _take_machine_lock(self) -> None:
        """One node per machine (fixed names and ranges). The flock is held while a node starts and, for the
        context manager, while it runs; a detached node (`up`) is recognised by the live PIDs in its state."""
        fd = os.open(MACHINE_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = MACHINE_LOCK.read_text().strip()
            raise NodeBusyError(
                f"another real node is starting or running here ({holder}); one at a time"
            ) from None
        holder = os.read(fd, 4096).decode().strip()
        if holder and Path(holder) != self.state_dir:
            state = _load_state(Path(holder))
            if state and any(self.cp._owns(c) for c in state["components"]):
                os.close(fd)
                raise NodeBusyError(f"a real node is running from {holder}; stop it first (make node-down)")
        os.lseek(fd, 0, os.SEEK_SET)
        os.ftruncate(fd, 0)
        os.write(fd, str(self.state_dir).encode())
        self._lock_fd = fd
        self._owns_host = True
        # Leftovers of a crashed run (same fixed names): clean them before building anew.
        cleanup_host(None, {})

    def _release_machine_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = None

    def _prepare_dirs(self) -> None:
        """A fresh node every time: containerd's and the kubelet's state from an earlier run would hold
        sandboxes and containers that no longer exist (only logs/ survives, truncated per component)."""
        _unmount_under(self.state_dir)
        for sub in ("containerd", "kubelet", "cni", "pod-logs", "images", "pki"):
            shutil.rmtree(self.state_dir / sub, ignore_errors=True)
        for sub in ("logs", "pki", "containerd", "cni/net.d", "cni/ipam", "kubelet", "pod-logs", "images"):
            (self.state_dir / sub).mkdir(parents=True, exist_ok=True)
        for log in self.logs.glob("*.log"):
            log.unlink()

    def _api_endpoint(self) -> tuple[str, int]:
        """The `kubernetes` Service's endpoint: what pods reach through 10.96.0.1 and what the node uses."""
        out = run(
            str(self.binaries.kubectl),
            f"--kubeconfig={self.admin_kubeconfig}",
            "get",
            "endpointslices",
            "-n",
            "default",
            "-l",
            "kubernetes.io/service-name=kubernetes",
            "-o",
            "json",
        )
        for item in json.loads(out)["items"]:
            ports = [p["port"] for p in item.get("ports") or [] if p.get("name") == "https"]
            for ep in item.get("endpoints") or []:
                if ports and ep.get("addresses"):
                    return str(ep["addresses"][0]), int(ports[0])
        raise NodeError("the `kubernetes` Service has no endpoint (API server without a default route?)")

    def _setup_network(self) -> None:
        self.api_endpoint = self._api_endpoint()
        adv_ip, api_port = self.api_endpoint
        run("ip", "netns", "add", NETNS)
        run("ip", "link", "add", HOST_VETH, "type", "veth", "peer", "name", NODE_VETH)
        run("ip", "link", "set", NODE_VETH, "netns", NETNS)
        run("ip", "addr", "add", f"{HOST_LINK_IP}/{LINK_PREFIX}", "dev", HOST_VETH)
        run("ip", "link", "set", HOST_VETH, "up")
        # Per interface, not host-wide: 127.0.0.1 as a DNAT target for packets from the veth.
        _sysctl_path(f"net/ipv4/conf/{HOST_VETH}/route_localnet").write_text("1")
        for cidr in (HARNESS_RANGE, self.cp.SERVICE_CIDR):
            run("ip", "route", "add", cidr, "via", NODE_IP, "dev", HOST_VETH)
        ns = in_netns
        run(*ns("ip", "link", "set", "lo", "up"))
        run(*ns("ip", "addr", "add", f"{NODE_IP}/{LINK_PREFIX}", "dev", NODE_VETH))
        run(*ns("ip", "link", "set", NODE_VETH, "up"))
        run(*ns("ip", "route", "add", f"{adv_ip}/32", "via", HOST_LINK_IP, "dev", NODE_VETH))
        # Inside the node netns only: forwarding between the bridge and the veth, and bridged pod-to-pod
        # traffic through iptables so a Service's DNAT is undone for a backend on the same bridge.
        run(*ns("sysctl", "-q", "-w", "net.ipv4.ip_forward=1"))
        run(*ns("sysctl", "-q", "-w", "net.bridge.bridge-nf-call-iptables=1"), check=False)
        # Host: packets from the veth for the API server's advertise address go to the loopback listener.
        run("iptables", "-t", "nat", "-A", "PREROUTING", *self._dnat_rule(adv_ip, api_port))
        # Host guard (INPUT): from the veth only replies and the API server's DNAT get in (a pod cannot reach
        # other host services); the node ranges are reachable only through lo and the veth; no forwarding.
        run("iptables", "-N", GUARD_CHAIN)
        for rule in (
            ["-i", "lo", "-j", "RETURN"],
            ["-i", HOST_VETH, "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED,DNAT", "-j", "RETURN"],
            ["-i", HOST_VETH, "-j", "DROP"],
            ["-d", HARNESS_RANGE, "-j", "DROP"],
            ["-d", self.cp.SERVICE_CIDR, "-j", "DROP"],
        ):
            run("iptables", "-A", GUARD_CHAIN, *rule)
        run("iptables", "-I", "INPUT", "-j", GUARD_CHAIN)
        for flag in ("-s", "-d"):
            run("iptables", "-I", "FORWARD", flag, HARNESS_RANGE, "-j", "DROP")
        (self.state_dir / "network.json").write_text(json.dumps({"dnat": self._dnat_rule(adv_ip, api_port)}))
        cni = {
            "cniVersion": "1.0.0",
            "name": "shardrec-node",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": BRIDGE,
                    "isGateway": True,
                    "ipMasq": False,  # nothing is NATed off the machine; there is no way off anyway
                    "hairpinMode": True,  # a pod reaching itself through its Service
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": POD_CIDR, "gateway": POD_GATEWAY}]],
                        # No default route: pods reach the harness range and Services, nothing else.
                        "routes": [{"dst": HARNESS_RANGE}, {"dst": self.cp.SERVICE_CIDR}],
                        "dataDir": str(self.state_dir / "cni" / "ipam"),
                    },
                }
            ],
        }
        (self.state_dir / "cni" / "net.d" / "10-shardrec.conflist").write_text(
            json.dumps(cni, indent=2) + "\n"
        )

    @staticmethod
    def _dnat_rule(adv_ip: str, api_port: int) -> list[str]:
        return [
            "-i",
            HOST_VETH,
            "-d",
            adv_ip,
            "-p",
            "tcp",
            "--dport",
            str(api_port),
            "-j",
            "DNAT",
            "--to-destination",
            f"127.0.0.1:{api_port}",
        ]

    def _write_pki_and_kubeconfigs(self) -> None:
        assert self.api_endpoint is not None
        pki_dir, ca = self.state_dir / "pki", self.cp_pki.ca_cert
        server = f"https://{self.api_endpoint[0]}:{self.api_endpoint[1]}"
        # The kubelet's own identity: the Node authorizer and NodeRestriction admit it as this node only.
        crt, key = openssl_sign(
            self.cp_pki, pki_dir, "kubelet-client", f"/O=system:nodes/CN=system:node:{self.name}", client=True
        )
        write_node_kubeconfig(self.state_dir / "kubelet.kubeconfig", server, ca, crt, key)
        # kube-proxy: the bootstrap ClusterRoleBinding system:node-proxier names the user system:kube-proxy.
        crt, key = openssl_sign(self.cp_pki, pki_dir, "kube-proxy", "/CN=system:kube-proxy", client=True)
        write_node_kubeconfig(self.state_dir / "kube-proxy.kubeconfig", server, ca, crt, key)
        openssl_sign(
            self.cp_pki,
            pki_dir,
            "kubelet-serving",
            f"/O=system:nodes/CN=system:node:{self.name}",
            client=False,
            server_ips=[NODE_IP],
        )

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Any:
        """Start argv inside the node netns; state records the binary (what nsenter execs into) as argv[0]."""
        comp = self.cp.Component(name=name, argv=in_netns(*argv), log=self.logs / f"{name}.log", env=env)
        comp.spawn()
        comp.argv = argv  # to_state() -> argv0 = the binary, which is what /proc/<pid>/cmdline shows
        self.components.append(comp)
        return comp

    def _wait(self, what: str, check: Any, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (timeout or self.timeout)
        last = "not checked yet"
        while True:
            for comp in self.components:
                code = comp.exited()
                if code is not None:
                    raise NodeError(
                        f"{comp.name} exited with {code} while waiting for {what}\n{self.log_tails()}"
                    )
            try:
                result = check()
            except (OSError, NodeError, subprocess.SubprocessError, ValueError) as exc:
                result = f"{type(exc).__name__}: {exc}"
            if result is None:
                return
            last = result
            if time.monotonic() >= deadline:
                raise NodeError(f"timed out waiting for {what}; last: {last}\n{self.log_tails()}")
            time.sleep(0.3)

    def _start_containerd(self) -> None:
        d = self.state_dir / "containerd"
        b = self.binaries
        config = f"""version = 3
root = "{d / "root"}"
state = "{d / "state"}"

[grpc]
  address = "{self.sock}"

[plugins."io.containerd.cri.v1.runtime"]
  # No CAP_SYS_RESOURCE here: the kubelet's negative oom_score_adj would be refused by runc.
  restrict_oom_score_adj = true
  enable_selinux = false
  # Pod network namespaces are mounted under the state dir, not /var/run/netns.
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "{b.runc}"
        Root = "{d / "runc"}"
        SystemdCgroup = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["{b.cni_dir}"]
    conf_dir = "{self.state_dir / "cni" / "net.d"}"
    max_conf_num = 1

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{PAUSE_IMAGE}"

[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
"""
        (d / "config.toml").write_text(config)
        env = {**os.environ, "PATH": f"{b.shim.parent}:/usr/sbin:/usr/bin:/sbin:/bin"}
        self._spawn(
            "containerd", [str(b.containerd), "--config", str(d / "config.toml"), "--log-level", "info"], env
        )

        def check() -> str | None:
            if not self.sock.exists():
                return "no socket yet"
            out = run(str(b.ctr), "--address", str(self.sock), "version", check=False, timeout=10)
            return None if "Server:" in out else "ctr version: no server yet"

        self._wait("containerd socket", check, 60)

    def _import_base_images(self) -> None:
        images = self.state_dir / "images"
        pause = busybox_oci_archive(images / "pause.tar", PAUSE_IMAGE, ["/bin/sleep", "2147483647"])
        busybox = busybox_oci_archive(images / "busybox.tar", BUSYBOX_IMAGE, ["/bin/sh"])
        archives = [pause, busybox]
        if self.dns:
            coredns = ["/bin/coredns", "-conf", "/etc/coredns/Corefile"]
            archives.append(
                static_oci_archive(images / "coredns.tar", COREDNS_IMAGE, self.binaries.coredns, coredns)
            )
        for archive in archives:
            self.import_image(archive)

    def _save_sysctls(self) -> None:
        for key in KUBELET_SYSCTLS:
            with contextlib.suppress(OSError):
                self.saved_sysctls[key] = _sysctl_path(key).read_text().strip()
        self.write_state()  # a crash from here on still lets `down` put them back

    def _start_kubelet(self) -> None:
        d, pki = self.state_dir, self.state_dir / "pki"
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "failCgroupV1": False,  # this host is on cgroup v1 (hybrid); kubelet >= 1.35 refuses it otherwise
            "cgroupDriver": "cgroupfs",  # no systemd here
            "containerRuntimeEndpoint": f"unix://{self.sock}",
            "address": NODE_IP,
            "port": 10250,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": 10248,
            "tlsCertFile": str(pki / "kubelet-serving.crt"),
            "tlsPrivateKeyFile": str(pki / "kubelet-serving.key"),
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(self.cp_pki.ca_cert)},
            },
            "authorization": {"mode": "Webhook"},
            "failSwapOn": False,
            "enforceNodeAllocatable": [],
            "evictionHard": {},  # a shared dev machine: never evict test pods for the host's disk or memory
            "imageGCHighThresholdPercent": 100,  # imported images cannot be pulled again: never collect them
            "imageGCLowThresholdPercent": 99,
            "podLogsDir": str(d / "pod-logs"),
            "resolvConf": "",  # pods never get the host's resolvers
            "clusterDNS": [DNS_IP] if self.dns else [],
            "clusterDomain": "cluster.local",
            "podCIDR": POD_CIDR,
            "maxPods": 110,
            "registerNode": True,
            "serializeImagePulls": False,
            "nodeStatusReportFrequency": "10s",
            "syncFrequency": "10s",
            "fileCheckFrequency": "10s",
            "shutdownGracePeriod": "0s",
        }
        (d / "kubelet-config.json").write_text(json.dumps(config, indent=2) + "\n")
        labels = ",".join(f"{k}={v}" for k, v in self.labels.items())
        argv = [
            str(self.binaries.kubelet),
            f"--config={d / 'kubelet-config.json'}",
            f"--kubeconfig={d / 'kubelet.kubeconfig'}",
            f"--root-dir={d / 'kubelet'}",
            f"--hostname-override={self.name}",
            f"--node-ip={NODE_IP}",  # an address inside the node netns: InternalIP, so logs/exec work
            f"--node-labels={labels}",
            f"--v={self.verbosity}",
        ]
        env = {**os.environ, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        self._spawn("kubelet", argv, env)

    def _start_kube_proxy(self) -> None:
        d = self.state_dir
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "mode": "iptables",
            "clientConnection": {"kubeconfig": str(d / "kube-proxy.kubeconfig")},
            "hostnameOverride": self.name,
            "bindAddress": NODE_IP,
            "clusterCIDR": POD_CIDR,  # traffic from outside it (the host) to a Service is masqueraded
            "healthzBindAddress": "127.0.0.1:10256",
            "metricsBindAddress": "127.0.0.1:10249",
            "nodePortAddresses": [
                f"{NODE_IP}/32"
            ],  # never 127.0.0.1: that would need route_localnet=1 for all
            # 0 = leave the kernel's conntrack limits and timeouts alone.
            "conntrack": {
                "maxPerCore": 0,
                "min": 0,
                "tcpEstablishedTimeout": "0s",
                "tcpCloseWaitTimeout": "0s",
            },
            "iptables": {"syncPeriod": "30s", "minSyncPeriod": "1s"},
        }
        (d / "kube-proxy-config.json").write_text(json.dumps(config, indent=2) + "\n")
        argv = [
            str(self.binaries.kube_proxy),
            f"--config={d / 'kube-proxy-config.json'}",
            f"--v={self.verbosity}",
        ]
        env = {**os.environ, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        self._spawn("kube-proxy", argv, env)

    def _kubectl(
        self, *args: str, timeout: float = 30.0, check: bool = True, input: str | None = None
    ) -> str:
        return run(
            str(self.binaries.kubectl),
            f"--kubeconfig={self.admin_kubeconfig}",
            *args,
            timeout=timeout,
            check=check,
            input=input,
        )

    def _wait_node_ready(self) -> None:
        def check() -> str | None:
            out = self._kubectl("get", "node", self.name, "-o", "json", check=False)
            if not out:
                return "not registered yet"
            node = json.loads(out)
            conds = {c["type"]: c["status"] for c in node["status"].get("conditions", [])}
            addrs = {a["type"]: a["address"] for a in node["status"].get("addresses", [])}
            if conds.get("Ready") != "True":
                return f"conditions {conds}"
            if addrs.get("InternalIP") != NODE_IP:
                return f"addresses {addrs}"
            return None

        self._wait(f"node {self.name} Ready", check)

    def _start_dns(self) -> None:
        self._kubectl("apply", "-f", "-", input=json.dumps(dns_manifests()))
        wait = f"--timeout={self.timeout:.0f}s"
        self._kubectl(
            "rollout", "status", "-n", "kube-system", "deployment/coredns", wait, timeout=self.timeout + 10
        )

    # -- stop steps ------------------------------------------------------------------------------------------

    def _drain_pods(self) -> None:
        """Delete every pod on this node and wait (bounded) until the kubelet has stopped them."""
        sel = f"spec.nodeName={self.name}"
        # Cordon first, and remove the DNS add-on: controllers would put replacement pods right back.
        self._kubectl("cordon", self.name, check=False)
        remove_dns(self._kubectl)
        # A short grace period: the node is going away, and test pods (sleep as PID 1) ignore SIGTERM.
        self._kubectl(
            "delete",
            "pods",
            "-A",
            "--field-selector",
            sel,
            "--wait=false",
            f"--grace-period={DRAIN_GRACE}",
            check=False,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            out = self._kubectl("get", "pods", "-A", "--field-selector", sel, "-o", "name", check=False)
            if not out.strip():
                return
            time.sleep(0.5)

    def _kill_leftover_tasks(self) -> None:
        with contextlib.suppress(NodeError, subprocess.SubprocessError):
            for task in self.running_tasks():
                # delete --force kills the task and removes it, so its shim exits as well
                self.ctr("tasks", "delete", "--force", task, timeout=30)


def dns_manifests() -> dict[str, Any]:
    """CoreDNS as a pod on the real node behind the kube-dns Service, with no upstream (nothing leaves)."""
    meta = {"namespace": "kube-system", "labels": {DNS_LABEL: "true"}}
    corefile = """.:53 {
    errors
    health :8080
    ready :8181
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }
    cache 5
}
"""
    watch = ["list", "watch"]
    rules = [
        {"apiGroups": [""], "resources": ["endpoints", "services", "pods", "namespaces"], "verbs": watch},
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": watch},
    ]
    pod_labels = {"k8s-app": "kube-dns"}
    container = {
        "name": "coredns",
        "image": COREDNS_IMAGE,
        "imagePullPolicy": "Never",
        "ports": [
            {"name": "dns", "containerPort": 53, "protocol": "UDP"},
            {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"},
        ],
        "readinessProbe": {"httpGet": {"path": "/ready", "port": 8181}, "periodSeconds": 1},
        "livenessProbe": {"httpGet": {"path": "/health", "port": 8080}, "periodSeconds": 10},
        "volumeMounts": [{"name": "config", "mountPath": "/etc/coredns", "readOnly": True}],
    }
    pod_spec = {
        "serviceAccountName": "coredns",
        "nodeSelector": {"shardrec.io/node": "real"},
        "dnsPolicy": "Default",
        "priorityClassName": "system-cluster-critical",
        "terminationGracePeriodSeconds": 1,
        "containers": [container],
        "volumes": [{"name": "config", "configMap": {"name": "coredns"}}],
    }
    items: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "coredns", **meta}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": "shardrec:coredns", "labels": meta["labels"]}, "rules": rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": "shardrec:coredns", "labels": meta["labels"]},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                     "name": "shardrec:coredns"},
         "subjects": [{"kind": "ServiceAccount", "name": "coredns", "namespace": "kube-system"}]},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "coredns", **meta},
         "data": {"Corefile": corefile}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "coredns", **meta},
         "spec": {"replicas": 1, "selector": {"matchLabels": pod_labels},
                  "template": {"metadata": {"labels": pod_labels}, "spec": pod_spec}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "kube-dns", **meta},
         "spec": {"clusterIP": DNS_IP, "selector": pod_labels,
                  "ports": [{"name": "dns", "port": 53, "protocol": "UDP"},
                            {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]}},
    ]  # fmt: skip
    return {"apiVersion": "v1", "kind": "List", "items": items}


def remove_dns(kubectl: Any) -> None:
    """Delete the DNS add-on's objects (by label); kubectl(*args, check=False) -> str."""
    sel = f"{DNS_LABEL}=true"
    kubectl("delete", "deployment,service,configmap,serviceaccount", "-n", "kube-system", "-l", sel,
            "--ignore-not-found", "--wait=false", check=False)  # fmt: skip
    kubectl("delete", "clusterrole,clusterrolebinding", "-l", sel, "--ignore-not-found", check=False)


def _unmount_under(root: Path) -> None:
    """Unmount everything mounted below root (deepest first): kubelet volumes, rootfs overlays, netns."""
    prefix = str(root).rstrip("/") + "/"
    mounts = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4].replace("\\040", " ")
            if point.startswith(prefix):
                mounts.append(point)
    for point in sorted(set(mounts), key=len, reverse=True):
        if subprocess.run(["umount", point], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def _remove_kubepods_cgroups() -> None:
    """The kubelet's cgroupfs driver leaves kubepods/ in every v1 controller; remove the empty tree."""
    for controller in Path("/sys/fs/cgroup").iterdir():
        top = controller / "kubepods"
        if not top.is_dir():
            continue
        for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                d.rmdir()
        with contextlib.suppress(OSError):
            top.rmdir()


def cleanup_host(state_dir: Path | None, saved_sysctls: dict[str, str]) -> None:
    """Undo everything the node changed on the host; idempotent, also for a crashed run (fixed names)."""
    if state_dir is not None:
        _unmount_under(state_dir)
        net = state_dir / "network.json"
        if net.is_file():
            rule = json.loads(net.read_text())["dnat"]
            run("iptables", "-t", "nat", "-D", "PREROUTING", *rule, check=False)
            net.unlink()
    # The DNAT rule of a crashed run whose state dir is unknown: find it by its veth in the nat table.
    for line in run("iptables", "-t", "nat", "-S", "PREROUTING", check=False).splitlines():
        if f"-i {HOST_VETH} " in line and line.startswith("-A PREROUTING"):
            run(
                "iptables",
                "-t",
                "nat",
                *line.replace("-A PREROUTING", "-D PREROUTING", 1).split(),
                check=False,
            )
    run("iptables", "-D", "INPUT", "-j", GUARD_CHAIN, check=False)
    run("iptables", "-F", GUARD_CHAIN, check=False)
    run("iptables", "-X", GUARD_CHAIN, check=False)
    for flag in ("-s", "-d"):
        run("iptables", "-D", "FORWARD", flag, HARNESS_RANGE, "-j", "DROP", check=False)
    # Deleting the netns removes the bridge, kube-proxy's rules and the node end of the veth (and so the
    # host end and its routes).
    run("ip", "netns", "delete", NETNS, check=False)
    run("ip", "link", "delete", HOST_VETH, check=False)
    _remove_kubepods_cgroups()
    for key, value in saved_sysctls.items():
        with contextlib.suppress(OSError):
            _sysctl_path(key).write_text(value)


# ----------------------------------------------------------------------------------------------------
# CLI


def _load_state(state_dir: Path) -> dict[str, Any] | None:
    path = state_dir / STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def stop_from_state(state_dir: Path) -> bool:
    """Stop a detached node by its recorded PIDs (pods first, while the API server still runs)."""
    cp = cluster_module()
    state = _load_state(state_dir)
    if state is None:
        return False
    comps = state["components"]
    admin = Path(state["cluster_state"]) / "kubeconfig"
    kubectl_bin = str(cp.find_binaries().kubectl)

    def kubectl(*args: str, check: bool = False) -> str:
        return run(kubectl_bin, f"--kubeconfig={admin}", *args, check=check, timeout=90)

    api_up = admin.is_file() and kubectl("get", "--raw", "/readyz").strip() == "ok"
    if api_up and any(c["name"] == "kubelet" and cp._owns(c) for c in comps):
        kubectl("cordon", state["name"])
        remove_dns(kubectl)
        sel = f"spec.nodeName={state['name']}"
        kubectl("delete", "pods", "-A", "--field-selector", sel, f"--grace-period={DRAIN_GRACE}",
                "--wait=true", "--timeout=60s")  # fmt: skip
    cp.terminate([c for c in comps if c["name"] in ("kubelet", "kube-proxy")])
    if api_up:
        kubectl("delete", "node", state["name"], "--ignore-not-found")
    if any(c["name"] == "containerd" and cp._owns(c) for c in comps):
        ctr = [state["ctr"], "--address", state["containerd_socket"], "--namespace", "k8s.io"]
        for line in run(*ctr, "tasks", "ls", check=False).splitlines()[1:]:
            if line.split():
                run(*ctr, "tasks", "delete", "--force", line.split()[0], check=False)
    cp.terminate([c for c in comps if c["name"] == "containerd"])
    cleanup_host(state_dir, state.get("saved_sysctls") or {})
    (state_dir / STATE_FILE).unlink()
    return True


def _cmd_up(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir).resolve()
    state = _load_state(state_dir)
    cp = cluster_module()
    if state and any(cp._owns(c) for c in state["components"]):
        print(f"a node is already running from {state_dir}; run `down` first", file=sys.stderr)
        return 1
    if state:
        stop_from_state(state_dir)
    try:
        node = LocalNode(args.cluster_state, state_dir, timeout=args.timeout, verbosity=args.v)
        node.start()
    except (NodeBinariesNotFoundError, NodeError) as exc:
        print(f"node up failed: {exc}", file=sys.stderr)
        return 1
    node.write_state()
    # The machine lock belongs to this CLI process, which exits now: the state file marks the node instead.
    node._release_machine_lock()
    print(
        f"node {node.name} Ready in {node.startup_seconds:.1f}s: InternalIP {node.node_ip}, "
        f"pods {node.pod_cidr}, DNS {DNS_IP if node.dns else 'off'}, logs {state_dir / 'logs'}\n"
        f"  steps (s): {node.step_seconds}",
        file=sys.stderr,
    )
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir).resolve()
    stopped = stop_from_state(state_dir)
    print("node stopped" if stopped else f"no node state in {state_dir}", file=sys.stderr)
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    state = _load_state(Path(args.state_dir).resolve())
    if state is None:
        print("not running")
        return 1
    cp = cluster_module()
    healthy = True
    for comp in state["components"]:
        alive = cp._owns(comp)
        healthy &= alive
        print(f"{comp['name']:<12} pid={comp['pid']:<8} {'running' if alive else 'DEAD'}")
    return 0 if healthy else 1


def _cmd_import(args: argparse.Namespace) -> int:
    state = _load_state(Path(args.state_dir).resolve())
    if state is None:
        print("no node running", file=sys.stderr)
        return 1
    ctr = [state["ctr"], "--address", state["containerd_socket"], "--namespace", "k8s.io"]
    for archive in args.archives:
        extra = ["--index-name", args.name] if args.name else []
        print(run(*ctr, "images", "import", *extra, archive, timeout=600), end="")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func in (
        ("up", _cmd_up),
        ("down", _cmd_down),
        ("status", _cmd_status),
        ("import-image", _cmd_import),
    ):
        p = sub.add_parser(name)
        p.add_argument("--state-dir", required=True)
        p.set_defaults(func=func)
        if name == "up":
            p.add_argument("--cluster-state", required=True, help="state dir of `cluster.py up`")
            p.add_argument("--timeout", type=float, default=120.0)
            p.add_argument("-v", type=int, default=0)
        if name == "import-image":
            p.add_argument("--name", help="image name for a single-image archive")
            p.add_argument("archives", nargs="+")
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
