"""The chart and the operator's pods against a real Kubernetes API server (e2e/controlplane):
server-side dry-run of everything the chart renders, the `restricted` Pod Security Standard, the
operator's permission matrix as the API server computes it, and the API-key admission policy.

Skips without the control-plane binaries (`make cluster-build`), fails instead with
SHARDREC_REQUIRE_CONTROLPLANE=1; skips without helm unless SHARDREC_REQUIRE_TOOLS=1.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.ship.rbac import Matrix, format_matrix, matrix_of
from tests.ship.tools import CHART, ROOT, find_tool, helm_template, of_kind, run

pytestmark = [pytest.mark.integration, pytest.mark.controlplane]

RELEASE_NS = "shardrec-system"
SA = "rel-shardrec-operator"  # helm_template's release "rel" + chart name
SA_USER = f"system:serviceaccount:{RELEASE_NS}:{SA}"
WAIT_S = 60.0


def _load_cluster_module() -> ModuleType:
    name = "shardrec_e2e_controlplane_cluster"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "e2e" / "controlplane" / "cluster.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class Kube:
    """kubectl against the local control plane."""

    def __init__(self, kubectl: Path, kubeconfig: Path) -> None:
        self.base: list[str | Path] = [kubectl, "--kubeconfig", kubeconfig]

    def __call__(self, *args: str, stdin: str | None = None, check: bool = True) -> Any:
        if stdin is None:
            return run([*self.base, *args], check=check)
        path = Path(os.environ.get("TMPDIR", "/tmp")) / f"shardrec-ship-{uuid.uuid4().hex}.yaml"
        path.write_text(stdin)
        try:
            return run([*self.base, *args, "-f", path], check=check)
        finally:
            path.unlink()

    def apply(self, docs: list[dict[str, Any]], *extra: str, check: bool = True) -> Any:
        return self(
            "apply", "--server-side", "--field-manager=ship-test", *extra, stdin=_yaml(docs), check=check
        )

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "-o", "json").stdout)


def _yaml(docs: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(docs, sort_keys=False)


def wait_until(what: str, check: Callable[[], Any], timeout: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def kube() -> Iterator[Kube]:
    find_tool("helm")  # skip before starting a control plane we could not use
    cluster = _load_cluster_module()
    try:
        binaries = cluster.find_binaries()
    except cluster.BinariesNotFoundError as exc:
        if os.environ.get("SHARDREC_REQUIRE_CONTROLPLANE"):
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    with cluster.LocalControlPlane(binaries=binaries) as cp:
        print(f"\ncontrol plane up in {cp.startup_seconds:.1f}s at {cp.api_url}")
        k = Kube(binaries.kubectl, cp.kubeconfig)
        for ns in (RELEASE_NS, "team-a", "team-b", "elsewhere"):
            k("create", "namespace", ns)
        yield k


@pytest.fixture(scope="module")
def crd(kube: Kube) -> str:
    """The chart's CRD, installed for real (what `helm install` does with crds/)."""
    kube("apply", "--server-side", "-f", str(CHART / "crds"))
    name = "recommenderclusters.shardrec.io"
    # Polled, not `kubectl wait --for=condition=Established`: that exits 1 at once ("accessor
    # error: <nil> is of the type <nil>") when it reads the CRD before the API server wrote any
    # condition, which a loaded CI machine showed (the same race as e2e/operator/conftest.py).
    path = 'jsonpath={.status.conditions[?(@.type=="Established")].status}'
    wait_until(
        f"the CRD {name} to be Established",
        lambda: kube("get", "crd", name, "-o", path, check=False).stdout.strip() == "True",
        timeout=120,
    )
    return name


def test_chart_crd_installs(crd: str) -> None:
    assert crd == "recommenderclusters.shardrec.io"


def _dry_run(kube: Kube, docs: list[dict[str, Any]]) -> str:
    proc = kube.apply(docs, "--dry-run=server")
    return str(proc.stdout)


@pytest.mark.parametrize("mode", ["cluster-wide", "namespaced"])
def test_rendered_chart_passes_server_side_dry_run(kube: Kube, mode: str) -> None:
    extra = ("--set", "watch.namespaces={team-a,team-b}") if mode == "namespaced" else ()
    docs = helm_template(*extra, "--set", "networkPolicy.enabled=true")
    out = _dry_run(kube, docs)
    print(out)
    assert out.count("(server dry run)") == len(docs)


def _restricted_namespace(kube: Kube) -> str:
    name = f"restricted-{uuid.uuid4().hex[:6]}"
    kube.apply(
        [
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {
                    "name": name,
                    "labels": {
                        "pod-security.kubernetes.io/enforce": "restricted",
                        "pod-security.kubernetes.io/enforce-version": "latest",
                    },
                },
            }
        ]
    )
    wait_until(
        f"default ServiceAccount in {name}",
        lambda: kube("get", "sa", "default", "-n", name, check=False).returncode == 0,
    )
    return name


def _pod_of(template_owner: dict[str, Any], namespace: str) -> dict[str, Any]:
    template = template_owner["spec"]["template"]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"probe-{uuid.uuid4().hex[:6]}",
            "namespace": namespace,
            "labels": template["metadata"].get("labels", {}),
        },
        "spec": template["spec"],
    }


def test_restricted_namespace_admits_the_operator(kube: Kube) -> None:
    ns = _restricted_namespace(kube)
    docs = helm_template("--namespace", ns)
    (deployment,) = of_kind(docs, "Deployment")
    kube.apply(of_kind(docs, "ServiceAccount"))
    # A bare Pod from the same template: Pod Security is enforced on Pods, synchronously.
    _dry_run(kube, [_pod_of(deployment, ns)])
    # And the real thing: the ReplicaSet controller must be allowed to create the pod.
    kube.apply([deployment])
    pods = wait_until(
        "the operator pod in the restricted namespace",
        lambda: kube.json("get", "pods", "-n", ns)["items"],
    )
    assert pods[0]["spec"]["securityContext"]["runAsNonRoot"] is True


def test_pod_security_validator_and_admission_agree_on_a_broken_pod(kube: Kube, crd: str) -> None:
    """A shard pod with a hostPath volume and an unconfined AppArmor annotation: the operator's
    validator names both controls, and the real admission refuses the pod as well."""
    from shardrec_operator.desired.pod_security import restricted_violations

    ns = _restricted_namespace(kube)
    accounts, manifests = _data_plane_manifests(ns, "00000000-0000-4000-8000-000000000000")
    kube.apply(accounts)
    pod = _pod_of(manifests[0], ns)
    pod["spec"]["volumes"].append({"name": "host", "hostPath": {"path": "/var"}})
    pod["metadata"].setdefault("annotations", {})["container.apparmor.security.beta.kubernetes.io/shard"] = (
        "unconfined"
    )
    violations = restricted_violations(pod)
    assert any("hostPath" in v for v in violations) and any("AppArmor" in v for v in violations), violations
    proc = kube.apply([pod], "--dry-run=server", check=False)
    assert proc.returncode != 0 and "violates PodSecurity" in proc.stderr, proc.stderr
    assert "hostPath" in proc.stderr and "unconfined" in proc.stderr, proc.stderr


def test_restricted_namespace_refuses_a_privileged_pod(kube: Kube) -> None:
    """The control: the namespace label really enforces, so the admissions above mean something."""
    ns = _restricted_namespace(kube)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "root", "namespace": ns},
        "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]},
    }
    proc = kube.apply([pod], "--dry-run=server", check=False)
    assert proc.returncode != 0 and "violates PodSecurity" in proc.stderr, proc.stderr


def _data_plane_manifests(
    namespace: str, uid: str, **spec: Any
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The operator's own builders: (ServiceAccounts, [shard StatefulSet, router Deployment, index Job])."""
    for module in ("shardrec_operator.desired.shard", "shardrec_operator.desired.router"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} does not exist yet")
    from shardrec.api import v1alpha1 as api
    from shardrec.planning import LayoutSpec
    from shardrec_operator.desired import index_build, rbac, router, shard
    from shardrec_operator.desired.validation import kubernetes_spec_errors

    document = _cluster_document(namespace, **spec)
    document["metadata"]["uid"] = uid
    cluster = api.RecommenderCluster.model_validate(document)
    assert kubernetes_spec_errors(cluster) == [], "the operator accepts what the test applies"
    layout = LayoutSpec.from_spec(cluster.spec)
    accounts = [rbac.build_shard_service_account(cluster), rbac.build_router_service_account(cluster)]
    workloads = [
        shard.build_shard_statefulset(cluster, layout, 0, 1),
        router.build_router_deployment(cluster),
        index_build.build_index_job(cluster, layout, "1"),
    ]
    return accounts, workloads


def _cluster_document(namespace: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "shardrec.io/v1alpha1",
        "kind": "RecommenderCluster",
        "metadata": {"name": "recs", "namespace": namespace},
        "spec": {
            "shards": 1,
            "replicasPerShard": 1,
            "index": {
                "version": "v1",
                "source": "/embeddings/v1",
                "dimension": 8,
                "store": {"persistentVolumeClaim": {"claimName": "index-store"}},
            },
            "auth": {"apiKeysSecretRef": {"name": "recs-api-keys"}},
            **spec,
        },
    }


POD_TEMPLATE: dict[str, Any] = {
    "metadata": {"labels": {"team": "recs"}, "annotations": {"example.com/owner": "recs"}},
    "nodeSelector": {"type": "kwok"},
    "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}],
    "imagePullSecrets": [{"name": "registry"}],
    "env": [{"name": "MALLOC_ARENA_MAX", "value": "2"}],
    "volumes": [
        {"name": "extra", "emptyDir": {"sizeLimit": "64Mi"}},
        {"name": "ca", "projected": {"sources": [{"configMap": {"name": "kube-root-ca.crt"}}]}},
    ],
    "volumeMounts": [{"name": "extra", "mountPath": "/extra"}, {"name": "ca", "mountPath": "/etc/ca"}],
}
POD_TEMPLATES = {
    "shard": {**POD_TEMPLATE, "zoneSpread": "Hard"},
    "router": {**POD_TEMPLATE, "zoneSpread": "Hard"},
    "build": POD_TEMPLATE,
}


@pytest.mark.parametrize("templates", [None, POD_TEMPLATES], ids=["defaults", "pod-templates"])
def test_restricted_namespace_admits_every_pod_the_operator_creates(
    kube: Kube, crd: str, templates: dict[str, Any] | None
) -> None:
    """The operator's pods, and with `spec.podTemplates` merged over them (volumes, env, metadata,
    placement): the real PodSecurity admission agrees with `pod_security.restricted_violations`."""
    ns = _restricted_namespace(kube)
    spec = {"podTemplates": templates} if templates else {}
    created = kube.apply([_cluster_document(ns, **spec)], "-o", "json")
    uid = json.loads(created.stdout)["metadata"]["uid"]
    accounts, manifests = _data_plane_manifests(ns, uid, **spec)
    kube.apply(accounts)
    _dry_run(kube, [_pod_of(m, ns) for m in manifests])
    kube.apply(manifests)
    for manifest in manifests:
        kind, name = manifest["kind"], manifest["metadata"]["name"]
        selector = ",".join(f"{k}={v}" for k, v in _selector_of(manifest).items())
        # Created by the StatefulSet/ReplicaSet/Job controllers, so Pod Security let them in.
        # (They stay Pending: the index store PVC does not exist here, which is fine.)
        wait_until(f"a pod of {kind}/{name}", _pods_matching(kube, ns, selector))


def _pods_matching(kube: Kube, namespace: str, selector: str) -> Callable[[], list[Any]]:
    def pods() -> list[Any]:
        items: list[Any] = kube.json("get", "pods", "-n", namespace, "-l", selector)["items"]
        return items

    return pods


def _selector_of(manifest: dict[str, Any]) -> dict[str, str]:
    if manifest["kind"] == "Job":
        return {"job-name": manifest["metadata"]["name"]}
    selector: dict[str, str] = manifest["spec"]["selector"]["matchLabels"]
    return selector


_CAN_I_ROW = re.compile(
    r"^(?P<resource>\S+)\s+\[(?P<urls>[^\]]*)\]\s+\[(?P<names>[^\]]*)\]\s+\[(?P<verbs>[^\]]*)\]\s*$"
)


def _can_i_list(kube: Kube, namespace: str, user: str) -> Matrix:
    """`kubectl auth can-i --list` as a matrix (non-resource URLs dropped)."""
    out = kube("auth", "can-i", "--list", f"--as={user}", "-n", namespace).stdout
    rules = []
    for line in out.splitlines()[1:]:
        match = _CAN_I_ROW.match(line)
        if match is None:  # non-resource URL rows start with blanks
            continue
        resource, _, subresource = match["resource"].partition("/")
        plural, _, group = resource.partition(".")
        name = f"{plural}/{subresource}" if subresource else plural
        rules.append({"apiGroups": [group], "resources": [name], "verbs": match["verbs"].split()})
    return matrix_of(rules)


@pytest.mark.parametrize("mode", ["cluster-wide", "namespaced"])
def test_permission_matrix_on_the_api_server(kube: Kube, mode: str) -> None:
    extra = ("--set", "watch.namespaces={team-a,team-b}") if mode == "namespaced" else ()
    docs = [
        d
        for d in helm_template(*extra)
        if d["kind"] in {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
    ]
    kube.apply(docs)
    try:
        baseline = _can_i_list(kube, "team-a", f"system:serviceaccount:{RELEASE_NS}:default")
        granted = _can_i_list(kube, "team-a", SA_USER)
        own = {k: v - baseline.get(k, set()) for k, v in granted.items() if v - baseline.get(k, set())}
        print(format_matrix(own, f"{SA_USER} in team-a ({mode}), beyond every authenticated user:"))
        assert not [k for k, v in own.items() if "*" in v or "*" in k[1]], own
        # The leader-election Role lives in the release namespace, not in the watched one.
        roles = of_kind(docs, "ClusterRole") + [
            role for role in of_kind(docs, "Role") if role["metadata"]["namespace"] != RELEASE_NS
        ]
        chart_rules = [r for role in roles for r in role["rules"]]
        assert own == matrix_of(chart_rules), "the API server grants something other than the chart's rules"
        lease = f"leases.coordination.k8s.io/{SA}"
        for namespace, allowed in ((RELEASE_NS, "yes"), ("team-a", "no")):
            answer = kube("auth", "can-i", "patch", lease, f"--as={SA_USER}", "-n", namespace, check=False)
            assert answer.stdout.strip() == allowed, f"patch {lease} in {namespace}"
        # Secrets: the per-cluster shard token and TLS Secrets it creates and reads by name; never
        # list, watch or delete (so it cannot read or remove Secrets it does not know of).
        for verb, allowed in (("get", "yes"), ("create", "yes"), ("patch", "yes"), ("list", "no"),
                              ("watch", "no"), ("delete", "no")):  # fmt: skip
            answer = kube("auth", "can-i", verb, "secrets", f"--as={SA_USER}", "-n", "team-a", check=False)
            assert answer.stdout.strip() == allowed, f"{verb} secrets"
        elsewhere = kube(
            "auth", "can-i", "patch", "statefulsets.apps", f"--as={SA_USER}", "-n", "elsewhere", check=False
        )
        assert elsewhere.stdout.strip() == ("no" if mode == "namespaced" else "yes")
    finally:
        kube("delete", "--ignore-not-found", "--wait=false", stdin=_yaml(docs), check=False)


def test_operator_rights_suffice_to_server_side_apply_its_children(kube: Kube) -> None:
    """Server-side apply is a PATCH: it creates objects without the `create` verb. Proven here by
    applying the operator's own manifests as its ServiceAccount (dry-run)."""
    docs = [
        d for d in helm_template() if d["kind"] in {"ServiceAccount", "ClusterRole", "ClusterRoleBinding"}
    ]
    kube.apply(docs)
    accounts, workloads = _data_plane_manifests("team-a", str(uuid.uuid4()))
    manifests = accounts + workloads
    proc = kube.apply(manifests, "--dry-run=server", f"--as={SA_USER}", "--field-manager=shardrec-operator")
    assert proc.stdout.count("(server dry run)") == len(manifests), proc.stdout


def test_api_keys_are_required_by_the_admission_policy(kube: Kube, crd: str) -> None:
    policy = [d for d in helm_template() if d["kind"].startswith("ValidatingAdmissionPolicy")]
    kube.apply(policy)
    open_cluster = _cluster_document("team-b")
    del open_cluster["spec"]["auth"]

    def refused() -> str:
        proc = kube.apply([open_cluster], "--dry-run=server", check=False)
        return str(proc.stderr) if proc.returncode != 0 else ""

    # Policies take a moment to reach the admission plugin.
    message = wait_until("the API-key policy to refuse an open RecommenderCluster", refused)
    assert "spec.auth.apiKeysSecretRef is required" in message
    _dry_run(kube, [_cluster_document("team-b")])
    opted_out = _cluster_document("team-b")
    del opted_out["spec"]["auth"]
    opted_out["metadata"]["annotations"] = {"shardrec.io/allow-unauthenticated": "true"}
    _dry_run(kube, [opted_out])


@pytest.fixture(scope="module")
def chart_admission_policy(kube: Kube, crd: str) -> None:
    """The chart's admission policies as `helm install` with default values creates them, in force:
    a RecommenderCluster with no API keys and no opt-out annotation is refused."""
    docs = helm_template()
    kube.apply(of_kind(docs, "ValidatingAdmissionPolicy") + of_kind(docs, "ValidatingAdmissionPolicyBinding"))
    open_cluster = _cluster_document("team-a")
    open_cluster["spec"].pop("auth")

    def refused() -> bool:
        proc = kube.apply([open_cluster], "--dry-run=server", check=False)
        return proc.returncode != 0 and "require-api-keys" in proc.stderr

    wait_until("the chart's require-api-keys policy to be in force", refused)


@pytest.mark.parametrize("example", sorted(p.name for p in (ROOT / "examples").glob("*.yaml")))
def test_every_example_passes_server_side_dry_run(
    kube: Kube, crd: str, chart_admission_policy: None, example: str
) -> None:
    """What a user does with examples/ after `helm install` with default values: `kubectl apply -f`
    as it is. The API server checks the CRD's schema and CEL rules, the chart's admission policies
    (API keys required unless opted out), and the PVC's own schema for store-pvc.yaml."""
    proc = kube("apply", "--dry-run=server", "-n", "team-a", "-f", str(ROOT / "examples" / example))
    assert "(server dry run)" in proc.stdout, proc.stdout
