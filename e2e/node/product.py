"""The product on the real node, as a user runs it: the steps shared by test_product.py and the scenarios.

Loaded by path (e2e is not a package): the `product_module` fixture of e2e/conftest.py. Steps:

1. Only the real node takes pods: the session's kwok nodes get a NoSchedule taint (and lose it afterwards),
   because the operator's own pods (shards, router, build Job) have no nodeSelector.
2. Both images `make images` built (serving + operator OCI archives) are imported into the node's containerd.
3. `helm install` of charts/shardrec-operator (real helm) runs the operator as a pod from its image
   (imagePullPolicy Never: there is no registry), watching the test namespace; it becomes Ready.
4. The index store: a hostPath PersistentVolume on the real node plus a ReadWriteMany claim bound to it. One
   node, so hostPath is an honest store here (every pod that mounts it runs on the node that holds the
   directory); on several nodes this would need a real shared filesystem. The embeddings directories (v1 and
   v2: other seeds, other item ids) are written on the host, owned by UID 10001 (the pods' user: the kubelet
   applies no fsGroup to hostPath volumes).
5. `kubectl apply` of a RecommenderCluster (2 shards x 2 replicas, 2 routers, source pvc://<claim>/<path>,
   store the same claim): the build Job really builds, shard pods load their partition and pass /readyz, the
   routers serve, the cluster turns Ready.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shardrec.serving.index.embeddings import write_embeddings_dir

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "shardrec-operator"
IMAGES_SCRIPT = ROOT / "e2e" / "images" / "build.sh"
RUN_AS = 10001  # the UID of every pod of the product (operator/src/shardrec_operator/desired/pods.py)
ITEMS, USERS, DIM, K = 5_000, 200, 32, 10
CLAIM = "shardrec-store"
CLUSTER = "product"
RELEASE = "shardrec-operator"
KWOK_TAINT = "shardrec.io/real-node-only"
SHARDS, REPLICAS, ROUTERS = 2, 2, 2  # replicas 2: a dead replica must cost no request (the scenarios)
ROUTER_TIMEOUT_MS = 3000
ROLLBACK_WINDOW_S = 20  # the old layout goes 20 s after the switch, while the scenarios' traffic runs
# index version -> (embeddings dir under the claim, item id prefix, seed)
VERSIONS = {"v1": ("embeddings/test-v1", "item-", 13), "v2": ("embeddings/test-v2", "v2-item-", 14)}


def image_archives() -> dict[str, Path]:
    """target -> OCI archive of the current tree (`build.sh --paths` builds nothing)."""
    out = subprocess.run(
        ["bash", str(IMAGES_SCRIPT), "--paths"], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    return {target: Path(path) for target, path in (line.split(" ", 1) for line in out.split("\n") if line)}


def kubectl(cp: Any, *args: str, input: str | None = None, timeout: float = 60.0) -> str:
    proc = cp.kubectl(*args, input=input, check=False, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}")
    return str(proc.stdout)


def kubectl_json(cp: Any, *args: str) -> Any:
    return json.loads(kubectl(cp, *args, "-o", "json"))


def wait_for(what: str, check: Any, timeout: float) -> Any:
    """Poll check() until it returns something truthy; bounded in time."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(1.0)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")


def pod_ready(pod: dict[str, Any]) -> bool:
    conds = {c["type"]: c["status"] for c in pod.get("status", {}).get("conditions", [])}
    return conds.get("Ready") == "True"


def diagnostics(cp: Any, ns: str) -> str:
    parts = []
    for args in (
        ("get", "nodes", "-o", "wide"),
        ("get", "all,pvc,pv", "-n", ns, "-o", "wide"),
        ("get", "recommenderclusters", "-n", ns, "-o", "yaml"),
        ("get", "events", "-n", ns, "--sort-by=.lastTimestamp"),
        ("logs", "-n", ns, "-l", f"app.kubernetes.io/instance={RELEASE}", "--tail=80"),
        ("logs", "-n", ns, "-l", "app.kubernetes.io/component", "--all-containers", "--tail=30", "--prefix"),
    ):
        proc = cp.kubectl(*args, check=False, timeout=60)
        parts.append(f"$ kubectl {' '.join(args)}\n{proc.stdout}{proc.stderr}")
    return "\n".join(parts)


@dataclass(frozen=True)
class TestData:
    __test__ = False  # not a test class
    items: np.ndarray
    item_ids: list[str]
    users: np.ndarray
    user_ids: list[str]


def write_test_data(directory: Path, seed: int = 13, item_prefix: str = "item-") -> TestData:
    """Seeded random item and user embeddings (no seen pairs), written as an embeddings directory.
    Every version has the same user ids and its own item ids (so an answer's items name its version)."""
    rng = np.random.default_rng(seed)
    items = rng.standard_normal((ITEMS, DIM)).astype(np.float32)
    users = rng.standard_normal((USERS, DIM)).astype(np.float32)
    item_ids = [f"{item_prefix}{i}" for i in range(ITEMS)]
    user_ids = [f"user-{u}" for u in range(USERS)]
    write_embeddings_dir(directory, items, item_ids, users=users, user_ids=user_ids)
    return TestData(items, item_ids, users, user_ids)


def chown_tree(root: Path, uid: int) -> None:
    for path in [root, *root.rglob("*")]:
        os.chown(path, uid, uid)


def exact_top(items: np.ndarray, item_ids: list[str], query: np.ndarray) -> list[str]:
    scores = items @ query
    return [item_ids[i] for i in np.argsort(-scores, kind="stable")[:K]]


def store_manifests(ns: str, node_name: str, path: Path) -> list[dict[str, Any]]:
    pv_name = f"{ns}-store"
    return [
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": pv_name},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteMany"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": "",
                "hostPath": {"path": str(path), "type": "Directory"},
                "claimRef": {"namespace": ns, "name": CLAIM},
                "nodeAffinity": {
                    "required": {
                        "nodeSelectorTerms": [
                            {
                                "matchExpressions": [
                                    {"key": "kubernetes.io/hostname", "operator": "In", "values": [node_name]}
                                ]
                            }
                        ]
                    }
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": CLAIM, "namespace": ns},
            "spec": {
                "accessModes": ["ReadWriteMany"],
                "storageClassName": "",
                "volumeName": pv_name,
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
    ]


def cluster_manifest(ns: str, version: str = "v1", shards: int = SHARDS) -> dict[str, Any]:
    return {
        "apiVersion": "shardrec.io/v1alpha1",
        "kind": "RecommenderCluster",
        "metadata": {
            "name": CLUSTER,
            "namespace": ns,
            # The chart's admission policy refuses clusters without API keys unless they opt out.
            "annotations": {"shardrec.io/allow-unauthenticated": "true"},
        },
        "spec": {
            "shards": shards,
            "replicasPerShard": REPLICAS,
            "imagePullPolicy": "Never",
            # timeoutMs 3000, not the default 1000: on this 2-core machine the build Job, the control plane,
            # the clients and every pod share the CPUs, and with 1000 ms 4-5 of ~4,400 requests of the
            # rollout scenario ran past the deadline (503 "shard N (deadline)") while the build Job started.
            "router": {"replicas": ROUTERS, "consistency": "strict", "timeoutMs": ROUTER_TIMEOUT_MS},
            "rollout": {"rollbackWindowSeconds": ROLLBACK_WINDOW_S},
            "index": index_spec(version),
        },
    }


def index_spec(version: str) -> dict[str, Any]:
    return {
        "version": version,
        "source": f"pvc://{CLAIM}/{VERSIONS[version][0]}",
        "dimension": DIM,
        "metric": "ip",
        "store": {"persistentVolumeClaim": {"claimName": CLAIM}},
    }


def post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        result: dict[str, Any] = json.loads(response.read())
    return result


def import_images(node: Any, archives: dict[str, Path], timings: dict[str, float]) -> None:
    t0 = time.monotonic()
    imported = [name for archive in archives.values() for name in node.import_image(archive)]
    timings["image_import_s"] = time.monotonic() - t0
    names = node.image_names()
    for name in imported:
        assert name in names


def install_operator(cp: Any, node: Any, helm: Path, ns: str, timings: dict[str, float]) -> dict[str, Any]:
    """`helm install` with the imported image (never pulled), watching `ns`; the operator pod Ready."""
    t0 = time.monotonic()
    argv = [str(helm), "install", RELEASE, str(CHART), "--namespace", ns, f"--kubeconfig={cp.kubeconfig}"]
    argv += ["--set", "image.pullPolicy=Never", "--set", f"watch.namespaces={{{ns}}}"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, f"helm install exited {proc.returncode}: {proc.stderr}"
    selector = f"app.kubernetes.io/instance={RELEASE}"

    def operator_ready() -> dict[str, Any] | None:
        pods = kubectl_json(cp, "get", "pods", "-n", ns, "-l", selector)["items"]
        return next((p for p in pods if pod_ready(p)), None)

    pod: dict[str, Any] = wait_for("the operator pod Ready", operator_ready, timeout=180)
    timings["helm_install_to_operator_ready_s"] = time.monotonic() - t0
    assert pod["spec"]["nodeName"] == node.name
    image = pod["spec"]["containers"][0]["image"]
    assert image.startswith("ghcr.io/shardrec/shardrec-operator:"), image
    container_id = pod["status"]["containerStatuses"][0]["containerID"].split("://", 1)[1]
    assert node.running_tasks().get(container_id) == "RUNNING"
    return pod


def create_store(cp: Any, node: Any, ns: str, store_dir: Path) -> dict[str, TestData]:
    """Embeddings (every version) written on the host; a hostPath PV on the real node; an RWX claim on it."""
    data = {
        version: write_test_data(store_dir / path, seed, prefix)
        for version, (path, prefix, seed) in VERSIONS.items()
    }
    chown_tree(store_dir, RUN_AS)
    for manifest in store_manifests(ns, node.name, store_dir):
        kubectl(cp, "apply", "-f", "-", input=json.dumps(manifest))
    wait_for(
        "the store claim Bound",
        lambda: kubectl_json(cp, "get", "pvc", CLAIM, "-n", ns)["status"].get("phase") == "Bound",
        timeout=60,
    )
    return data


def apply_cluster(cp: Any, node: Any, ns: str, timings: dict[str, float]) -> None:
    """The RecommenderCluster: a real build Job, real shard and router pods, Ready."""
    t0 = time.monotonic()
    kubectl(cp, "apply", "-f", "-", input=json.dumps(cluster_manifest(ns)))

    build_logs: dict[str, str] = {}  # the operator deletes a failed build Job (and its pods' logs) at once

    def cluster_ready() -> dict[str, Any] | None:
        for pod in kubectl_json(cp, "get", "pods", "-n", ns)["items"]:
            name = pod["metadata"]["name"]
            if "-build-" in name and pod["status"].get("phase") in {"Failed", "Succeeded"}:
                build_logs.setdefault(name, cp.kubectl("logs", "-n", ns, name, check=False).stdout[-3000:])
        got: dict[str, Any] = kubectl_json(cp, "get", "recommendercluster", CLUSTER, "-n", ns)
        status = got.get("status", {})
        if status.get("phase"):  # the operator's first pass over the cluster
            timings.setdefault("cr_apply_to_first_status_s", time.monotonic() - t0)
        if status.get("phase") == "Failed":
            raise AssertionError(f"cluster Failed: {status.get('layouts')}\nbuild pods' logs: {build_logs}")
        conds = {c["type"]: c["status"] for c in status.get("conditions", [])}
        return got if conds.get("Ready") == "True" else None

    wait_for(f"RecommenderCluster {ns}/{CLUSTER} Ready", cluster_ready, timeout=420)
    timings["cr_apply_to_ready_s"] = time.monotonic() - t0

    jobs = kubectl_json(cp, "get", "jobs", "-n", ns)["items"]
    assert jobs, "a build Job ran"
    assert all(j["status"].get("succeeded", 0) >= 1 for j in jobs), [j["status"] for j in jobs]

    def serving_pods() -> list[dict[str, Any]]:
        pods = kubectl_json(cp, "get", "pods", "-n", ns)["items"]
        return [p for p in pods if p["metadata"]["name"].startswith(f"{CLUSTER}-") and pod_ready(p)]

    # Ready needs one router, not both: the second can still be mounting its volumes (seen once: the
    # kubelet's "failed to sync secret cache" retry), so wait for it, bounded.
    serving: list[dict[str, Any]] = wait_for(
        f"{SHARDS * REPLICAS} shard pods and {ROUTERS} routers Ready",
        lambda: got if len(got := serving_pods()) == SHARDS * REPLICAS + ROUTERS else None,
        timeout=90,
    )
    tasks = node.running_tasks()
    for pod in serving:
        assert pod["spec"]["nodeName"] == node.name
        for status in pod["status"]["containerStatuses"]:
            assert tasks.get(status["containerID"].split("://", 1)[1]) == "RUNNING", pod["metadata"]["name"]


def query_router(cp: Any, ns: str, data: TestData, timings: dict[str, float]) -> tuple[float, str]:
    """By user and by vector through the router Service's ClusterIP; recall@10 against exact search."""
    service = kubectl_json(cp, "get", "service", f"{CLUSTER}-router", "-n", ns)
    url = f"http://{service['spec']['clusterIP']}:{service['spec']['ports'][0]['port']}/v1/recommend"
    rng = np.random.default_rng(31)
    queries: list[tuple[dict[str, Any], np.ndarray]] = [
        ({"user_id": data.user_ids[u], "k": K}, data.users[u]) for u in range(0, USERS, 20)
    ]
    for n in range(10):
        vector = rng.standard_normal(DIM).astype(np.float32)
        # Half of them as vector_b64 (base64 of little-endian float32): the other form of a vector.
        encoded = base64.b64encode(vector.astype("<f4").tobytes()).decode()
        queries.append(
            ({"vector_b64": encoded, "k": K} if n % 2 else {"vector": vector.tolist(), "k": K}, vector)
        )
    t0 = time.monotonic()
    answers = [post(url, body) for body, _ in queries]
    timings["query_20_requests_s"] = time.monotonic() - t0
    as_numbers = post(url, {"vector": queries[-1][1].tolist(), "k": K})
    assert as_numbers["items"] == answers[-1]["items"], "vector_b64 and its numbers are one query"
    hits = 0
    for answer, (_, vector) in zip(answers, queries, strict=True):
        assert not answer["partial"] and answer["shards"] == {"answered": SHARDS, "total": SHARDS}, answer
        got = {entry["item_id"] for entry in answer["items"]}
        hits += len(got & set(exact_top(data.items, data.item_ids, vector)))
    return hits / (K * len(queries)), url


def find_helm() -> Path:
    return find_tool("helm")


def find_prometheus() -> Path:
    """Prometheus with kubernetes_sd_configs: $SHARDREC_PROMETHEUS, else e2e/tools/build-prometheus.sh's build
    (Debian's prometheus has no Kubernetes discovery). AssertionError naming the build script when missing."""
    explicit = os.environ.get("SHARDREC_PROMETHEUS")
    if explicit:
        return Path(explicit)
    out = subprocess.run(
        ["bash", str(ROOT / "e2e" / "tools" / "build-prometheus.sh"), "--path"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    ).stdout.strip()
    path = Path(out) if out else None
    if path is None or not path.is_file():
        raise AssertionError(
            "no Prometheus with Kubernetes discovery; run `bash e2e/tools/build-prometheus.sh`"
        )
    return path


def find_tool(tool: str) -> Path:
    """tests/ship/tools.py's lookup (helm: $SHARDREC_HELM, the pinned cached build, PATH; others: PATH)."""
    import importlib.util
    import sys

    name = "shardrec_ship_tools"
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, ROOT / "tests" / "ship" / "tools.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    found: Path = module.find_tool(tool)
    return found


def cleanup(cp: Any, helm: Path, ns: str) -> None:
    """The cluster first (the operator removes its finalizer), then the release, then the PV."""
    cp.kubectl(
        "delete",
        "recommendercluster",
        CLUSTER,
        "-n",
        ns,
        "--ignore-not-found",
        "--wait=true",
        "--timeout=120s",
        check=False,
        timeout=150,
    )
    subprocess.run(
        [
            str(helm),
            "uninstall",
            RELEASE,
            "--namespace",
            ns,
            f"--kubeconfig={cp.kubeconfig}",
            "--wait",
            "--timeout",
            "120s",
        ],
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    cp.kubectl("delete", "pvc", CLAIM, "-n", ns, "--ignore-not-found", "--wait=false", check=False)
    cp.kubectl("delete", "pv", f"{ns}-store", "--ignore-not-found", "--wait=false", check=False)


def status(cp: Any, ns: str) -> dict[str, Any]:
    got: dict[str, Any] = kubectl_json(cp, "get", "recommendercluster", CLUSTER, "-n", ns)
    return dict(got.get("status") or {})


def patch_spec(cp: Any, ns: str, spec: dict[str, Any]) -> None:
    """A merge patch of the RecommenderCluster's spec (what `kubectl patch --type merge` does for a user)."""
    kubectl(
        cp,
        "patch",
        "recommendercluster",
        CLUSTER,
        "-n",
        ns,
        "--type",
        "merge",
        "-p",
        json.dumps({"spec": spec}),
    )


def router_url(cp: Any, ns: str) -> str:
    service = kubectl_json(cp, "get", "service", f"{CLUSTER}-router", "-n", ns)
    return f"http://{service['spec']['clusterIP']}:{service['spec']['ports'][0]['port']}/v1/recommend"


def pods(cp: Any, ns: str, selector: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = kubectl_json(cp, "get", "pods", "-n", ns, "-l", selector)["items"]
    return found


def shard_selector(layout: str | None = None, shard: int | None = None) -> str:
    parts = [f"shardrec.io/cluster={CLUSTER}", "app.kubernetes.io/component=shard"]
    if layout is not None:
        parts.append(f"shardrec.io/layout={layout}")
    if shard is not None:
        parts.append(f"shardrec.io/shard={shard}")
    return ",".join(parts)


def operator_selector() -> str:
    return f"app.kubernetes.io/instance={RELEASE}"


def container_pid(node: Any, pod: dict[str, Any]) -> int:
    """Host PID of the pod's (first) container's main process, from the node's containerd (`ctr tasks ls`)."""
    container_id = pod["status"]["containerStatuses"][0]["containerID"].split("://", 1)[1]
    for line in node.ctr("tasks", "ls").splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 3 and parts[0] == container_id and parts[2] == "RUNNING":
            return int(parts[1])
    raise AssertionError(f"no RUNNING task for container {container_id} of {pod['metadata']['name']}")


def pod_netns_argv(node: Any, pod: dict[str, Any], *argv: str) -> list[str]:
    """argv run inside the pod's network namespace (the one its eth0 lives in), entered through its first
    container's host PID; nsenter execs, so a started process's PID is the command's own."""
    return ["nsenter", f"--net=/proc/{container_pid(node, pod)}/ns/net", "--", *argv]


def router_metrics(cp: Any, ns: str, names: tuple[str, ...]) -> dict[str, float]:
    """Each metric in `names` summed over every label set and every router pod, scraped at the pods' IPs
    where their prometheus.io annotations say (plain HTTP only: the product's routers serve no TLS)."""
    totals = dict.fromkeys(names, 0.0)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    for pod in pods(cp, ns, f"shardrec.io/cluster={CLUSTER},app.kubernetes.io/component=router"):
        notes = pod["metadata"].get("annotations", {})
        port, path = notes.get("prometheus.io/port"), notes.get("prometheus.io/path", "/metrics")
        if not port or notes.get("prometheus.io/scheme", "http") != "http" or not pod["status"].get("podIP"):
            continue
        try:
            with opener.open(f"http://{pod['status']['podIP']}:{port}{path}", timeout=5) as response:
                text = response.read().decode()
        except OSError as error:  # counted as nothing: these numbers are printed, never asserted
            print(f"[metrics] {pod['metadata']['name']}: {error}")
            continue
        for line in text.splitlines():
            name = line.split("{", 1)[0].split(" ", 1)[0]
            if name in totals:
                totals[name] += float(line.rsplit(" ", 1)[1])
    return totals


def all_ready(cp: Any, ns: str, shards: int, layout: str) -> bool:
    """Every replica of every shard of `layout`, and every router, Ready."""
    shard_pods = [p for p in pods(cp, ns, shard_selector(layout)) if pod_ready(p)]
    routers = [
        p
        for p in pods(cp, ns, f"shardrec.io/cluster={CLUSTER},app.kubernetes.io/component=router")
        if pod_ready(p)
    ]
    return len(shard_pods) == shards * REPLICAS and len(routers) == ROUTERS


@dataclass
class Product:
    """A deployed product: the control plane, the node, the namespace, the test data per version."""

    cp: Any
    node: Any
    ns: str
    helm: Path
    data: dict[str, TestData]
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return router_url(self.cp, self.ns)

    def status(self) -> dict[str, Any]:
        return status(self.cp, self.ns)


def deploy(cp: Any, node: Any, archives: dict[str, Path], ns: str, store_dir: Path) -> Product:
    """Images, helm install, store, RecommenderCluster Ready (timings in Product.timings)."""
    product = Product(cp, node, ns, find_helm(), {})
    import_images(node, archives, product.timings)
    install_operator(cp, node, product.helm, ns, product.timings)
    product.data = create_store(cp, node, ns, store_dir)
    apply_cluster(cp, node, ns, product.timings)
    return product
