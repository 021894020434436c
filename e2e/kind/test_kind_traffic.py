"""Real traffic on a real cluster: the chart's operator serves a RecommenderCluster whose pods run
the data-plane image, and every request of a bounded burst of /v1/recommend through the router
Service succeeds.

Needs what e2e/kind/run.sh prepares: an external cluster (SHARDREC_E2E_KUBECONFIG, guarded by
SHARDREC_E2E_CONTEXT), the chart installed with watch.namespaces=[SHARDREC_E2E_TRAFFIC_NAMESPACE]
(an existing namespace enforcing the restricted Pod Security Standard), and SHARDREC_E2E_IMAGE
on the nodes. The index store is a PVC of the default StorageClass (on kind: local-path,
ReadWriteOnce, so every pod mounting it lands on one node), seeded in-cluster by a Job that
writes a small synthetic embeddings directory with the image's own numpy.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import selectors
import signal
import subprocess
import time
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest

from shardrec.api import v1alpha1 as api
from shardrec_operator.reconcile import resources as kinds

pytestmark = [
    pytest.mark.kind,
    pytest.mark.skipif(
        not os.environ.get("SHARDREC_E2E_KUBECONFIG"),
        reason="needs a real cluster: SHARDREC_E2E_KUBECONFIG + SHARDREC_E2E_CONTEXT (make e2e-kind)",
    ),
]

NAMESPACE = os.environ.get("SHARDREC_E2E_TRAFFIC_NAMESPACE", "shardrec-traffic")
OPERATOR_NAMESPACE = os.environ.get("SHARDREC_E2E_OPERATOR_NAMESPACE", "shardrec-system")
OPERATOR_DEPLOYMENT = os.environ.get("SHARDREC_E2E_OPERATOR_DEPLOYMENT", "shardrec-operator")
NAME = "traffic"
CLAIM = "traffic-store"
SECRET = "traffic-api-keys"
SEED_JOB = "traffic-seed"
SOURCE = "/embeddings/traffic"
DIMENSION = 32
ITEMS, USERS, K = 2000, 200, 10
REQUESTS, CONCURRENCY, REQUEST_TIMEOUT = 400, 8, 10.0
UID = 10001  # the image's user; the restricted Pod Security Standard wants it explicit

SEED_SCRIPT = f"""
from pathlib import Path
from shardrec.serving.index.embeddings import write_embeddings_dir
from shardrec.serving.index.synthetic import clustered
items, users = clustered({ITEMS}, {DIMENSION}, seed=7), clustered({USERS}, {DIMENSION}, seed=8)
item_ids = [f"item-{{i}}" for i in range({ITEMS})]
user_ids = [f"user-{{u}}" for u in range({USERS})]
seen = [(user_ids[u], item_ids[(u * 13) % {ITEMS}]) for u in range({USERS})]
out = write_embeddings_dir(Path("/store{SOURCE}"), items, item_ids, users=users, user_ids=user_ids, seen=seen)
print("wrote", out)
"""


def _store_claim() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": CLAIM, "namespace": NAMESPACE},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }


def _seed_job(image: str) -> dict[str, Any]:
    container = {
        "name": "seed",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["python", "-c", SEED_SCRIPT],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "store", "mountPath": "/store"}, {"name": "tmp", "mountPath": "/tmp"}],
    }
    pod = {
        "restartPolicy": "Never",
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": UID,
            "runAsGroup": UID,
            "fsGroup": UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [
            {"name": "store", "persistentVolumeClaim": {"claimName": CLAIM}},
            {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
        ],
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": SEED_JOB, "namespace": NAMESPACE},
        "spec": {"backoffLimit": 1, "activeDeadlineSeconds": 300, "template": {"spec": pod}},
    }


def _api_keys(key: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": SECRET, "namespace": NAMESPACE},
        "type": "Opaque",
        "data": {"api-keys": base64.b64encode(f"e2e:{key}\n".encode()).decode()},
    }


def _cluster(image: str, *, with_keys: bool = True) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "shards": 2,
        "replicasPerShard": 2,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "index": {
            "version": "v1",
            "source": SOURCE,
            "dimension": DIMENSION,
            "store": {"persistentVolumeClaim": {"claimName": CLAIM}},
        },
        "router": {"replicas": 2},
        "rollout": {"timeoutSeconds": 600},
    }
    if with_keys:
        spec["auth"] = {"apiKeysSecretRef": {"name": SECRET}}
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": NAME, "namespace": NAMESPACE},
        "spec": spec,
    }


def _problem(answer: Any) -> str | None:
    """Why a 200 answer to a keyed user query is not a full, correct one (None: it is)."""
    shards = answer.body.get("shards", {})
    if answer.partial or shards.get("answered") != shards.get("total") or shards.get("total") != 2:
        return f"partial answer: {shards}"
    if answer.version != "v1" or len(answer.body.get("items", [])) != K:
        return f"wrong answer: version {answer.version!r}, {len(answer.body.get('items', []))} items"
    return None


@pytest.fixture
def port_forward(real_cluster: Any, harness: Any) -> Iterator[Any]:
    """`kubectl port-forward` to a Service; yields a function (service, port) -> local port."""
    started: list[subprocess.Popen[str]] = []

    def forward(service: str, port: int) -> int:
        argv = real_cluster.kubectl_command(
            "-n", NAMESPACE, "port-forward", "--address=127.0.0.1", f"svc/{service}", f":{port}"
        )
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        started.append(proc)
        assert proc.stdout is not None
        selector = selectors.DefaultSelector()
        selector.register(proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + 30 * harness.TIMEOUT_SCALE
        seen: list[str] = []
        while time.monotonic() < deadline and proc.poll() is None:
            if selector.select(timeout=1):
                line = proc.stdout.readline()
                seen.append(line.strip())
                match = re.search(r"Forwarding from 127\.0\.0\.1:(\d+) ->", line)
                if match:
                    return int(match.group(1))
        raise AssertionError(f"kubectl port-forward to svc/{service} did not start: {seen}")

    yield forward
    for proc in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # its own session: we started it with start_new_session
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)


def _dump(cluster: Any, kube: Any) -> str:
    parts = [f"===== {api.KIND} status ====="]
    found = kube.get(kinds.RECOMMENDER_CLUSTER.path(NAMESPACE, NAME))
    parts.append(json.dumps((found or {}).get("status"), indent=1)[:4000])
    for args in (
        ("-n", NAMESPACE, "get", "pods,jobs,pvc", "-o", "wide"),
        ("-n", NAMESPACE, "get", "events", "--sort-by=.lastTimestamp"),
        ("-n", OPERATOR_NAMESPACE, "logs", f"deployment/{OPERATOR_DEPLOYMENT}", "--tail=150"),
        ("-n", NAMESPACE, "logs", f"deployment/{NAME}-router", "--tail=60"),
    ):
        result = cluster.kubectl(*args, check=False)
        parts += [f"===== kubectl {' '.join(args)} =====", (result.stdout + result.stderr)[-6000:]]
    return "\n".join(parts)


def _ready(pod: dict[str, Any]) -> bool:
    statuses = pod.get("status", {}).get("containerStatuses") or []
    return bool(statuses) and all(s.get("ready") and "running" in s.get("state", {}) for s in statuses)


def test_router_serves_a_burst_of_real_requests_without_a_failure(
    real_cluster: Any, harness: Any, port_forward: Any, traffic_module: ModuleType
) -> None:
    kube = harness.Kube(real_cluster)
    image = os.environ["SHARDREC_E2E_IMAGE"]
    key = secrets.token_urlsafe(24)
    namespace = kube.get(f"/api/v1/namespaces/{NAMESPACE}")
    assert namespace is not None, (
        f"namespace {NAMESPACE} does not exist: create it and install the chart watching it (e2e/kind/run.sh)"
    )

    def leftovers_of_an_earlier_run_are_gone() -> None:
        stale = (f"{api.PLURAL}/{NAME}", f"job/{SEED_JOB}", f"secret/{SECRET}")
        kube.kubectl("-n", NAMESPACE, "delete", *stale, "--ignore-not-found", "--timeout=120s")
        harness.wait_for(
            "the earlier run's pods to go",
            lambda: not kube.list(kinds.POD, NAMESPACE, f"shardrec.io/cluster={NAME}"),
            timeout=120,
        )

    def store_is_seeded_in_cluster() -> None:
        kube.apply(_store_claim(), _seed_job(image), _api_keys(key))
        harness.wait_for(
            "the seed Job to complete",
            lambda: any(
                c["type"] == "Complete" and c["status"] == "True"
                for c in (kube.get(kinds.JOB.path(NAMESPACE, SEED_JOB)) or {})
                .get("status", {})
                .get("conditions", [])
            ),
            timeout=300,
        )

    def the_chart_refuses_an_open_router() -> None:
        # Server-side dry run: admission (the chart's ValidatingAdmissionPolicy) runs, nothing is stored.
        def refused() -> str | None:
            result = kube.kubectl(
                "apply",
                "--dry-run=server",
                "-f",
                "-",
                stdin=json.dumps(_cluster(image, with_keys=False)),
                check=False,
            )
            return (
                result.stderr
                if result.returncode != 0 and "apiKeysSecretRef is required" in result.stderr
                else None
            )

        harness.wait_for("the ValidatingAdmissionPolicy to refuse a keyless router", refused, timeout=60)

    def status() -> dict[str, Any]:
        return dict((kube.get(kinds.RECOMMENDER_CLUSTER.path(NAMESPACE, NAME)) or {}).get("status") or {})

    def the_in_cluster_operator_makes_it_ready() -> None:
        kube.apply(_cluster(image))
        harness.wait_for(
            f"{NAME} Ready on v1",
            lambda: (status().get("phase"), status().get("activeVersion")) == ("Ready", "v1"),
            timeout=300,
        )
        pods = kube.list(
            kinds.POD, NAMESPACE, f"shardrec.io/cluster={NAME},app.kubernetes.io/component=shard"
        )
        assert len(pods) == 4 and all(_ready(p) for p in pods), [p["metadata"]["name"] for p in pods]
        router = kube.get(kinds.DEPLOYMENT.path(NAMESPACE, f"{NAME}-router"))
        assert router is not None and router.get("status", {}).get("readyReplicas") == 2

    def a_burst_through_the_router_has_no_failure() -> None:
        port = port_forward(f"{NAME}-router", int(status()["routerEndpoint"].rsplit(":", 1)[1]))
        url, user, keyed = (
            f"http://127.0.0.1:{port}/v1/recommend",
            {"user_id": "user-0", "k": K},
            {"X-API-Key": key},
        )
        harness.wait_for(
            "the router to answer through the port-forward",
            lambda: traffic_module.post(url, user, keyed).status == 200,
            60,
        )
        assert traffic_module.post(url, user).status == 401, "no key: unauthenticated"
        assert traffic_module.post(url, user, {"X-API-Key": key + "x"}).status == 403, (
            "a wrong key: forbidden"
        )
        bodies = [{"user_id": f"user-{i % USERS}", "k": K} for i in range(REQUESTS)]
        counts, problems = traffic_module.burst(
            url, bodies, concurrency=CONCURRENCY, check=_problem, headers=keyed, timeout=REQUEST_TIMEOUT
        )
        print(f"[kind traffic] {counts}")
        assert counts.ok == REQUESTS and counts.wrong == 0, f"{counts}; first problems: {problems[:5]}"

    scenario = [
        ("leftovers of an earlier run are gone", leftovers_of_an_earlier_run_are_gone),
        ("a PVC is seeded with embeddings by an in-cluster Job", store_is_seeded_in_cluster),
        ("the chart's admission policy refuses a router without API keys", the_chart_refuses_an_open_router),
        (
            "the in-cluster operator makes the cluster Ready with real pods",
            the_in_cluster_operator_makes_it_ready,
        ),
        (
            f"{REQUESTS} requests, {CONCURRENCY} at a time, all succeed",
            a_burst_through_the_router_has_no_failure,
        ),
    ]
    try:
        for number, (description, step) in enumerate(scenario, 1):
            try:
                step()
            except AssertionError as error:
                raise harness.StepError(f"step {number} ({description}) failed: {error}") from error
    except BaseException:
        print(_dump(real_cluster, kube))
        raise
    finally:
        kube.kubectl(
            "-n", NAMESPACE, "delete", api.PLURAL, NAME, "--ignore-not-found", "--wait=false", check=False
        )
