"""Scenario 2: a valid RecommenderCluster becomes every child the spec asks for, and Ready."""

from __future__ import annotations

from typing import Any

import pytest

from shardrec_operator.reconcile import resources as kinds

pytestmark = [pytest.mark.controlplane]


def _zones_of(scenario: Any, pods: list[dict[str, Any]]) -> set[str]:
    zones = set()
    for pod in pods:
        node = scenario.kube.get(f"/api/v1/nodes/{pod['spec']['nodeName']}")
        zones.add(node["metadata"]["labels"]["topology.kubernetes.io/zone"])
    return zones


def test_valid_cluster_creates_its_children_and_reaches_ready(scenario: Any, harness: Any) -> None:
    seen: dict[str, Any] = {}

    def build_job_completes() -> None:
        jobs = harness.wait_for("the index build Job", lambda: scenario.children(kinds.JOB))
        assert (
            len(jobs) == 1 and jobs[0]["metadata"]["labels"]["app.kubernetes.io/component"] == "index-build"
        )
        harness.wait_for(
            "the build Job to complete (kwok completes its pod)",
            lambda: any(
                c["type"] == "Complete" and c["status"] == "True"
                for c in (
                    scenario.kube.get(kinds.JOB.path(scenario.namespace, jobs[0]["metadata"]["name"])) or {}
                )
                .get("status", {})
                .get("conditions", [])
            ),
        )

    def shard_workloads_exist() -> None:
        layout = scenario.status()["targetLayout"]
        seen["layout"] = layout
        expected = [f"recs-{layout}-{shard}" for shard in (0, 1)]
        harness.wait_for("2 shard StatefulSets", lambda: scenario.names(kinds.STATEFUL_SET) == expected)
        assert scenario.names(kinds.PDB, "app.kubernetes.io/component=shard") == expected
        assert scenario.names(kinds.PDB, "app.kubernetes.io/component=router") == ["recs-router"]
        for pdb in scenario.children(kinds.PDB):
            assert pdb["spec"]["maxUnavailable"] == 1
        headless = [s for s in scenario.children(kinds.SERVICE) if s["spec"].get("clusterIP") == "None"]
        assert sorted(s["metadata"]["name"] for s in headless) == expected

    def router_rbac_and_policy_exist() -> None:
        assert scenario.names(kinds.DEPLOYMENT) == ["recs-router"]
        assert "recs-router" in scenario.names(kinds.SERVICE)
        assert scenario.names(kinds.SERVICE_ACCOUNT) == ["recs-router", "recs-shard"]
        (role,) = scenario.children(kinds.ROLE)
        assert role["rules"] == [
            {
                "apiGroups": [""],
                "resources": ["configmaps"],
                "resourceNames": ["recs-topology"],
                "verbs": ["get", "list", "watch"],
            },
            # A router reports what it serves in its own pod's annotation.
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "patch"]},
        ]
        assert scenario.names(kinds.ROLE_BINDING) == ["recs-router"]
        assert scenario.names(kinds.NETWORK_POLICY) == ["recs-shards"]
        can = scenario.kube.kubectl(
            "auth",
            "can-i",
            "watch",
            "configmaps/recs-topology",
            "-n",
            scenario.namespace,
            f"--as=system:serviceaccount:{scenario.namespace}:recs-router",
            check=False,
        )
        assert can.stdout.strip() == "yes", can.stderr
        cannot = scenario.kube.kubectl(
            "auth",
            "can-i",
            "get",
            "configmaps/recs-router-config",
            "-n",
            scenario.namespace,
            f"--as=system:serviceaccount:{scenario.namespace}:recs-router",
            check=False,
        )
        assert cannot.stdout.strip() == "no"
        for verb, allowed in (("patch", "yes"), ("delete", "no"), ("create", "no")):
            answer = scenario.kube.kubectl(
                "auth",
                "can-i",
                verb,
                "pods",
                "-n",
                scenario.namespace,
                f"--as=system:serviceaccount:{scenario.namespace}:recs-router",
                check=False,
            )
            assert answer.stdout.strip() == allowed, (verb, answer.stdout, answer.stderr)

    def shard_pods_run_restricted_and_spread_across_zones() -> None:
        pods = harness.wait_for(
            "4 ready shard pods",
            lambda: (
                [p for p in scenario.children(kinds.POD, "app.kubernetes.io/component=shard") if _ready(p)]
                if len(
                    [
                        p
                        for p in scenario.children(kinds.POD, "app.kubernetes.io/component=shard")
                        if _ready(p)
                    ]
                )
                == 4
                else None
            ),
        )
        assert all(p["spec"]["nodeName"].startswith("kwok-") for p in pods)
        assert _zones_of(scenario, pods) == {"zone-a", "zone-b"}
        for shard in ("0", "1"):
            replicas = [p for p in pods if p["metadata"]["labels"]["shardrec.io/shard"] == shard]
            assert len({p["spec"]["nodeName"] for p in replicas}) == 2, "replicas of a shard share a node"

    def cluster_is_ready_with_printer_columns() -> None:
        status = scenario.wait_ready("v1")
        assert (status["readyReplicas"], status["replicas"]) == (4, 4)
        assert status["routerEndpoint"] == f"http://recs-router.{scenario.namespace}.svc:8080"
        assert scenario.condition("Ready")["status"] == "True"
        assert scenario.condition("Progressing")["status"] == "False"
        assert scenario.condition("Degraded")["status"] == "False"
        assert scenario.active_layout() == seen["layout"]
        table = scenario.kube.kubectl(
            "-n", scenario.namespace, "get", "recc", "recs", "--no-headers"
        ).stdout.split()
        assert table[:7] == ["recs", "2", "2", "4", "v1", "Ready", "True"], table

    scenario.create()
    scenario.run(
        [
            ("the index build Job runs and completes", build_job_completes),
            ("shard StatefulSets, headless Services and PDBs exist", shard_workloads_exist),
            ("router, RBAC and NetworkPolicy exist", router_rbac_and_policy_exist),
            (
                "shard pods pass restricted PSS and spread over zones",
                shard_pods_run_restricted_and_spread_across_zones,
            ),
            ("the cluster is Ready with correct columns", cluster_is_ready_with_printer_columns),
        ]
    )


def _ready(pod: dict[str, Any]) -> bool:
    return any(
        c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", [])
    )
