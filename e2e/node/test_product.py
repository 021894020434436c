"""The product as a user runs it, on the real node (issue 13, item 3): no kwok pod anywhere on the path.

1. Only the real node takes pods: the session's kwok nodes get a NoSchedule taint for this test (and lose it
   afterwards), because the operator's own pods (shards, router, build Job) have no nodeSelector.
2. Both images `make images` built (serving + operator OCI archives) are imported into the node's containerd.
3. `helm install` of charts/shardrec-operator (real helm) runs the operator as a pod from its image
   (imagePullPolicy Never: there is no registry), watching the test namespace; it becomes Ready.
4. The index store: a hostPath PersistentVolume on the real node plus a ReadWriteMany claim bound to it. One
   node, so hostPath is an honest store here (every pod that mounts it runs on the node that holds the
   directory); on several nodes this would need a real shared filesystem. The embeddings directory is written
   on the host, owned by UID 10001 (the pods' user: kubelet applies no fsGroup to hostPath volumes).
5. `kubectl apply` of a RecommenderCluster (2 shards x 1 replica, 1 router, source pvc://<claim>/<path>, store
   the same claim): the build Job really builds, shard pods load their partition and pass /readyz, the router
   serves, the cluster turns Ready.
6. A client on this machine queries `/v1/recommend` through the router Service's ClusterIP (the harness routes
   the Service CIDR into the node's netns): by user and by vector, recall@10 against exact search >= 0.95.

Timings are printed (`pytest -s`) and recorded as test properties, never asserted.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shardrec.serving.index.embeddings import write_embeddings_dir

pytestmark = [pytest.mark.node, pytest.mark.integration, pytest.mark.timeout(1200)]

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "shardrec-operator"
IMAGES_SCRIPT = ROOT / "e2e" / "images" / "build.sh"
RUN_AS = 10001  # the UID of every pod of the product (operator/src/shardrec_operator/desired/pods.py)
ITEMS, USERS, DIM, K = 5_000, 200, 32, 10
CLAIM = "shardrec-store"
SOURCE_PATH = "embeddings/test-v1"
CLUSTER = "product"
RELEASE = "shardrec-operator"
KWOK_TAINT = "shardrec.io/real-node-only"


def image_archives() -> dict[str, Path]:
    """target -> OCI archive of the current tree (`build.sh --paths` builds nothing)."""
    out = subprocess.run(
        ["bash", str(IMAGES_SCRIPT), "--paths"], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    return {target: Path(path) for target, path in (line.split(" ", 1) for line in out.split("\n") if line)}


@pytest.fixture(scope="session")
def product_images() -> dict[str, Path]:
    """Requested before real_node, so a missing image skips before any node starts."""
    archives = image_archives()
    missing = [str(path) for path in archives.values() if not path.is_file()]
    if missing:
        pytest.skip(f"image archives of this tree not built: {', '.join(missing)}; run `make images`")
    return archives


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


@pytest.fixture
def only_real_node(product_images: dict[str, Path], real_node: tuple[Any, Any]) -> Iterator[None]:
    """Taint the kwok nodes NoSchedule for this test: the product's pods can only land on the real node.
    (Asks for the images first, so missing images skip before a node starts.)"""
    cp, _ = real_node
    kubectl(cp, "taint", "nodes", "-l", "type=kwok", f"{KWOK_TAINT}=true:NoSchedule", "--overwrite")
    yield
    cp.kubectl("taint", "nodes", "-l", "type=kwok", f"{KWOK_TAINT}-", check=False)


@pytest.fixture
def namespace(real_node: tuple[Any, Any]) -> Iterator[str]:
    cp, _ = real_node
    name = f"product-{uuid.uuid4().hex[:6]}"
    kubectl(cp, "create", "namespace", name)
    wait_for(
        "default ServiceAccount",
        lambda: cp.kubectl("get", "sa", "default", "-n", name, check=False).returncode == 0,
        timeout=60,
    )
    yield name
    cp.kubectl("delete", "namespace", name, "--wait=true", "--timeout=120s", check=False, timeout=150)


@pytest.fixture
def store_dir() -> Iterator[Path]:
    """A host directory for the hostPath volume, traversable and owned by the pods' UID."""
    path = Path(tempfile.mkdtemp(prefix="shardrec-store-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@dataclass(frozen=True)
class TestData:
    __test__ = False  # not a test class
    items: np.ndarray
    item_ids: list[str]
    users: np.ndarray
    user_ids: list[str]


def write_test_data(directory: Path) -> TestData:
    """Seeded random item and user embeddings (no seen pairs), written as an embeddings directory."""
    rng = np.random.default_rng(13)
    items = rng.standard_normal((ITEMS, DIM)).astype(np.float32)
    users = rng.standard_normal((USERS, DIM)).astype(np.float32)
    item_ids = [f"item-{i}" for i in range(ITEMS)]
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


def cluster_manifest(ns: str) -> dict[str, Any]:
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
            "shards": 2,
            "replicasPerShard": 1,
            "imagePullPolicy": "Never",
            "router": {"replicas": 1},
            "index": {
                "version": "v1",
                "source": f"pvc://{CLAIM}/{SOURCE_PATH}",
                "dimension": DIM,
                "metric": "ip",
                "store": {"persistentVolumeClaim": {"claimName": CLAIM}},
            },
        },
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


def create_store(cp: Any, node: Any, ns: str, store_dir: Path) -> TestData:
    """Embeddings written on the host, a hostPath PV on the real node, an RWX claim bound to it."""
    data = write_test_data(store_dir / SOURCE_PATH)
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
    pods = kubectl_json(cp, "get", "pods", "-n", ns)["items"]
    serving = [p for p in pods if p["metadata"]["name"].startswith(f"{CLUSTER}-") and pod_ready(p)]
    names = sorted(p["metadata"]["name"] for p in serving)
    assert len(serving) == 3, names  # 2 shards x 1 replica + 1 router
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
    for _ in range(10):
        vector = rng.standard_normal(DIM).astype(np.float32)
        queries.append(({"vector": [float(x) for x in vector], "k": K}, vector))
    t0 = time.monotonic()
    answers = [post(url, body) for body, _ in queries]
    timings["query_20_requests_s"] = time.monotonic() - t0
    hits = 0
    for answer, (_, vector) in zip(answers, queries, strict=True):
        assert not answer["partial"] and answer["shards"] == {"answered": 2, "total": 2}, answer
        got = {entry["item_id"] for entry in answer["items"]}
        hits += len(got & set(exact_top(data.items, data.item_ids, vector)))
    return hits / (K * len(queries)), url


@pytest.mark.usefixtures("only_real_node")
def test_helm_install_apply_cluster_and_query_through_the_router_service(
    product_images: dict[str, Path],
    real_node: tuple[Any, Any],
    namespace: str,
    store_dir: Path,
    record_property: Any,
) -> None:
    cp, node = real_node
    helm = find_helm()
    timings: dict[str, float] = {}
    try:
        import_images(node, product_images, timings)
        install_operator(cp, node, helm, namespace, timings)
        data = create_store(cp, node, namespace, store_dir)
        apply_cluster(cp, node, namespace, timings)
        recall, url = query_router(cp, namespace, data, timings)
        record_property("recall_at_10", round(recall, 4))
        print(f"\n[product] recall@10 {recall:.3f} over 20 queries through {url}")
        assert recall >= 0.95
    except BaseException:
        print(diagnostics(cp, namespace))
        raise
    finally:
        for key, value in timings.items():
            record_property(key, round(value, 3))
        print(f"\n[product] timings: { {k: round(v, 3) for k, v in timings.items()} }")
        cleanup(cp, helm, namespace)


def find_helm() -> Path:
    """Real helm (tests/ship/tools.py's lookup: $SHARDREC_HELM, the pinned cached build, PATH)."""
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
    found: Path = module.find_tool("helm")
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
