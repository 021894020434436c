"""The operator's RBAC, as the chart renders it: no wildcards, nothing it does not use, everything
the operator's code touches, and every permission it grants to the router held by itself."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest

from tests.ship.rbac import Matrix, format_matrix, matrix_of
from tests.ship.tools import helm_template, of_kind

NAMESPACED = ("--set", "watch.namespaces={team-a,team-b}")
# Server-side apply is a PATCH, and also needs `create` when the object does not exist yet.
WRITE = {"get", "list", "create", "patch", "delete"}
# Verbs that would let the operator widen its own power, act as someone else, or overwrite
# whole objects: never needed.
SECRET_VERBS = {"get", "create", "patch"}
DANGEROUS = {"*", "escalate", "bind", "impersonate", "update", "deletecollection"}


def _roles(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return of_kind(docs, "ClusterRole") + of_kind(docs, "Role")


def _all_rules(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [rule for role in _roles(docs) for rule in role["rules"]]


@pytest.mark.parametrize("mode", ["cluster-wide", "namespaced"])
def test_no_wildcards_no_secret_listing_no_escalation(mode: str) -> None:
    docs = helm_template(*(NAMESPACED if mode == "namespaced" else ()))
    for role in _roles(docs):
        name = f"{role['kind']}/{role['metadata']['name']}"
        print(format_matrix(matrix_of(role["rules"]), f"{name} ({mode}):"))
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
                assert "*" not in rule.get(field, []), f"{name}: wildcard in {field}: {rule}"
            assert "nonResourceURLs" not in rule, f"{name}: {rule}"
        matrix = matrix_of(role["rules"])
        # Secrets: by name only (each cluster's shard token); never listed, watched or deleted.
        assert matrix.get(("", "secrets"), set()) <= SECRET_VERBS, f"{name} may enumerate Secrets"
        granted = {(k, v) for k, verbs in matrix.items() for v in verbs if v in DANGEROUS}
        assert not granted, f"{name}: {granted}"


def test_namespaced_mode_has_no_cluster_wide_write_access() -> None:
    docs = helm_template(*NAMESPACED)
    roles = of_kind(docs, "Role")
    # the watched namespaces, and the release's own for the leader-election Lease (leases only)
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["shardrec-system", "team-a", "team-b"]
    (election,) = [r for r in roles if r["metadata"]["namespace"] == "shardrec-system"]
    assert matrix_of(election["rules"]) == {("coordination.k8s.io", "leases"): {"get", "create", "patch"}}
    for cluster_role in of_kind(docs, "ClusterRole"):
        assert matrix_of(cluster_role["rules"]) == {("", "nodes"): {"get", "list"}}
    for binding in of_kind(docs, "RoleBinding"):
        assert binding["roleRef"]["kind"] == "Role"


def _required_by_the_operator() -> Matrix:
    """What the operator's code touches (its resource table), and the verbs it needs on each."""
    if importlib.util.find_spec("shardrec_operator.reconcile.resources") is None:
        pytest.skip("shardrec_operator.reconcile.resources does not exist yet")
    from shardrec_operator.reconcile import resources

    required: Matrix = {}
    for resource in resources.ALL:
        group = resource.api_version.rpartition("/")[0]
        if resource is resources.NODE:
            verbs = {"get", "list"}
        elif resource is resources.POD:
            # patch: granted on to the router's Role (it reports what it serves on its own pod).
            verbs = {"get", "list", "watch", "delete", "patch"}
        elif resource is resources.SECRET:
            verbs = SECRET_VERBS  # the shard token, by name (desired/shard_token.py)
        elif resource is resources.CONFIG_MAP:
            verbs = WRITE | {"watch"}  # watched, and granted on to the router's Role
        elif resource in resources.WATCHED:
            verbs = WRITE | {"watch"}  # a change wakes the cluster's pass
        elif resource is resources.RECOMMENDER_CLUSTER:
            verbs = {"get", "list", "watch", "patch"}
            required[(group, f"{resource.plural}/status")] = {"get", "patch"}
        else:
            verbs = WRITE
        required[(group, resource.plural)] = verbs
    required[("", "events")] = {"create", "patch"}
    # Leader election (shardrec_operator.leader): read, create and merge-patch one Lease.
    required[("coordination.k8s.io", "leases")] = {"get", "create", "patch"}
    return required


@pytest.mark.parametrize("mode", ["cluster-wide", "namespaced"])
def test_rbac_is_exactly_what_the_operator_uses(mode: str) -> None:
    docs = helm_template(*(NAMESPACED if mode == "namespaced" else ()))
    granted = matrix_of(_all_rules(docs))
    required = _required_by_the_operator()
    missing = {k: sorted(v - granted.get(k, set())) for k, v in required.items() if v - granted.get(k, set())}
    extra = {k: sorted(v - required.get(k, set())) for k, v in granted.items() if v - required.get(k, set())}
    assert not missing, f"the operator touches these but the chart does not grant: {missing}"
    assert not extra, f"the chart grants more than the operator uses: {extra}"


def test_operator_holds_every_permission_it_grants_the_router() -> None:
    """RBAC refuses to let anyone create a Role granting more than they hold themselves."""
    if importlib.util.find_spec("shardrec_operator.desired.rbac") is None:
        pytest.skip("shardrec_operator.desired.rbac does not exist yet")
    from shardrec.api import v1alpha1 as api
    from shardrec_operator.desired import rbac

    cluster = api.RecommenderCluster(
        metadata=api.ObjectMeta(name="recs", namespace="team-a", uid="0000"),
        spec=api.RecommenderClusterSpec(index=api.IndexSpec(version="v1", source="/data/emb", dimension=8)),
    )
    router_rules = matrix_of(rbac.build_router_role(cluster)["rules"])
    held = matrix_of(_all_rules(helm_template(*NAMESPACED)))
    for key, verbs in router_rules.items():
        assert verbs <= held.get(key, set()), f"router needs {key} {verbs}; operator holds {held.get(key)}"
