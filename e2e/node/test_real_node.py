"""A real pod on a real node of the local control plane: it runs in containerd (not kwok), `kubectl logs` and
`kubectl exec` reach it through the kubelet, a ClusterIP Service in front of an HTTP server pod answers from
this machine (host -> Service) and from another pod (pod -> Service), and a deleted pod is gone from
containerd too.

Timings (node start, pod start) are printed (`pytest -s`) and recorded as test properties, never asserted.
"""

from __future__ import annotations

import ipaddress
import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

pytestmark = [pytest.mark.node, pytest.mark.integration, pytest.mark.timeout(600)]


def kubectl_json(cp: Any, *args: str) -> Any:
    return json.loads(cp.kubectl(*args, "-o", "json").stdout)


def wait_for(what: str, check: Any, timeout: float = 90.0) -> Any:
    """Poll check() until it returns something truthy; bounded in time."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")


@pytest.fixture
def namespace(real_node: tuple[Any, Any]) -> Iterator[str]:
    cp, _ = real_node
    name = f"node-{uuid.uuid4().hex[:6]}"
    cp.kubectl("create", "namespace", name)
    wait_for(
        "default ServiceAccount",
        lambda: cp.kubectl("get", "sa", "default", "-n", name, check=False).returncode == 0,
    )
    yield name
    cp.kubectl("delete", "namespace", name, "--wait=true", "--timeout=90s", check=False, timeout=120)


def run_pod(
    cp: Any, node_module: Any, ns: str, name: str, command: list[str], *, labels: dict[str, str] | None = None
) -> tuple[dict[str, Any], float]:
    """Create a pod on the real node, wait until it is Ready; returns (pod, seconds from create to Ready)."""
    manifest = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels or {}},
        "spec": {
            "nodeSelector": {"shardrec.io/node": "real"},
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "main",
                    "image": node_module.BUSYBOX_IMAGE,
                    "imagePullPolicy": "Never",  # imported into containerd; there is no registry
                    "command": command,
                }
            ],
        },
    }
    t0 = time.monotonic()
    cp.kubectl("apply", "-f", "-", input=json.dumps(manifest))

    def ready() -> dict[str, Any] | None:
        pod: dict[str, Any] = kubectl_json(cp, "get", "pod", name, "-n", ns)
        conds = {c["type"]: c["status"] for c in pod["status"].get("conditions", [])}
        return pod if conds.get("Ready") == "True" else None

    pod = wait_for(f"pod {ns}/{name} Ready", ready, timeout=120)
    return pod, time.monotonic() - t0


def test_node_registered_with_an_internal_ip_and_not_managed_by_kwok(
    real_node: tuple[Any, Any], node_module: Any
) -> None:
    cp, node = real_node
    got = kubectl_json(cp, "get", "node", node.name)
    addresses = {a["type"]: a["address"] for a in got["status"]["addresses"]}
    assert addresses["InternalIP"] == node_module.NODE_IP
    assert "kwok.x-k8s.io/node" not in got["metadata"].get("annotations", {})
    assert got["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")
    assert got["status"]["nodeInfo"]["kubeletVersion"] == node.cp.read_versions()["K8S_VERSION"]
    kwok_nodes = kubectl_json(cp, "get", "nodes", "-l", "type=kwok")["items"]
    assert kwok_nodes, "the kwok nodes stay beside the real one"


def test_pod_runs_in_containerd_and_logs_and_exec_work(
    real_node: tuple[Any, Any], node_module: Any, namespace: str, record_property: Any
) -> None:
    cp, node = real_node
    marker = f"hello-from-{uuid.uuid4().hex[:8]}"
    pod, seconds = run_pod(
        cp, node_module, namespace, "echo", ["sh", "-c", f"echo {marker}; exec sleep 3600"]
    )
    record_property("pod_start_seconds", round(seconds, 2))
    print(f"\n[node] pod create -> Ready: {seconds:.2f}s")

    # Really running: the container ID the kubelet reports is a RUNNING task in the node's containerd.
    status = pod["status"]["containerStatuses"][0]
    runtime, container_id = status["containerID"].split("://", 1)
    assert runtime == "containerd"
    assert node.running_tasks().get(container_id) == "RUNNING"
    assert ipaddress.ip_address(pod["status"]["podIP"]) in ipaddress.ip_network(node.pod_cidr)

    logs = cp.kubectl("logs", "-n", namespace, "echo").stdout
    assert logs.strip() == marker
    # exec: the pod's own hostname and its PID 1 (sleep), seen from inside the container.
    assert cp.kubectl("exec", "-n", namespace, "echo", "--", "hostname").stdout.strip() == "echo"
    assert cp.kubectl("exec", "-n", namespace, "echo", "--", "cat", "/proc/1/cmdline").stdout.startswith(
        "sleep"
    )


def test_cluster_ip_service_answers_from_the_host_and_from_a_pod(
    real_node: tuple[Any, Any], node_module: Any, namespace: str
) -> None:
    cp, node = real_node
    server = "mkdir -p /www && echo served-by-$(hostname) > /www/index.html && exec httpd -f -p 8080 -h /www"
    run_pod(cp, node_module, namespace, "web", ["sh", "-c", server], labels={"app": "web"})
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": namespace},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }
    cp.kubectl("apply", "-f", "-", input=json.dumps(service))
    cluster_ip = kubectl_json(cp, "get", "service", "web", "-n", namespace)["spec"]["clusterIP"]
    assert ipaddress.ip_address(cluster_ip) in ipaddress.ip_network(node.cp.SERVICE_CIDR)

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def from_host() -> str | None:
        try:
            with opener.open(f"http://{cluster_ip}/", timeout=3) as resp:
                return str(resp.read().decode())
        except (urllib.error.URLError, OSError):
            return None  # kube-proxy has not synced the new Service yet

    body = wait_for("the Service from the host", from_host, timeout=60)
    assert body.strip() == "served-by-web"

    run_pod(cp, node_module, namespace, "client", ["sleep", "3600"])
    # busybox nc, not wget: Debian's static busybox wget prints the body and then segfaults on exit.
    request = f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {cluster_ip} 80"
    out = cp.kubectl("exec", "-n", namespace, "client", "--", "sh", "-c", request).stdout
    assert out.startswith("HTTP/1.") and " 200 " in out.splitlines()[0]
    assert out.rstrip().endswith("served-by-web")
    # Cluster DNS: the Service's name resolves to its ClusterIP in a pod. CoreDNS runs as a pod on this node
    # and learns Services from the API server through the `kubernetes` Service (TLS, its token, RBAC).
    lookup = cp.kubectl(
        "exec", "-n", namespace, "client", "--", "nslookup", f"web.{namespace}.svc.cluster.local"
    )
    assert cluster_ip in lookup.stdout
    by_name = cp.kubectl(
        "exec", "-n", namespace, "client", "--", "sh", "-c", request.replace(cluster_ip, "web")
    )
    assert by_name.stdout.rstrip().endswith("served-by-web")
    # The pod reaches the API server through the `kubernetes` Service (what in-cluster clients use).
    api_ip = kubectl_json(cp, "get", "service", "kubernetes", "-n", "default")["spec"]["clusterIP"]
    api = f"echo | nc -w 5 {api_ip} 443 && echo connected"
    assert cp.kubectl("exec", "-n", namespace, "client", "--", "sh", "-c", api).stdout.strip() == "connected"


def test_deleted_pod_is_gone_from_containerd(
    real_node: tuple[Any, Any], node_module: Any, namespace: str
) -> None:
    cp, node = real_node
    pod, _ = run_pod(cp, node_module, namespace, "doomed", ["sleep", "3600"])
    container_id = pod["status"]["containerStatuses"][0]["containerID"].split("://", 1)[1]
    assert container_id in node.running_tasks()
    cp.kubectl("delete", "pod", "doomed", "-n", namespace, "--wait=true", "--timeout=60s", timeout=90)
    wait_for("the container's task to be gone", lambda: container_id not in node.running_tasks(), timeout=60)
    pods = kubectl_json(cp, "get", "pods", "-n", namespace)["items"]
    assert pods == []
