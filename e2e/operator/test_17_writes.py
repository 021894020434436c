"""Scenario 17: item writes on a real API server (kwok nodes).

Turning writes on for a running cluster makes a new layout whose shard StatefulSets carry a
ReadWriteOnce write-log claim per replica (a claim template cannot be added to an existing
StatefulSet: the API server refuses it); a recreated pod gets its claim back; a new version with
writes turned off in the same change rolls out without a carry, and the write-log layout's claims
go with it. (A version change with writes on is carried: test_18_writes_carry.py.)

kwok runs no containers, so nothing here writes a log record: this proves the shape the API
server and the StatefulSet controller accept and act on, not the data plane (tests/serving and
tests/local do that). No provisioner exists without a kubelet, so the claims bind to statically
created PersistentVolumes of a StorageClass name that has no StorageClass object.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from shardrec_operator.reconcile import resources as kinds

pytestmark = [pytest.mark.controlplane]

CLASS = "e2e-write-log"
PVC = kinds.Resource("v1", "PersistentVolumeClaim", "persistentvolumeclaims")
WRITES = {"enabled": True, "ack": "majority", "logVolume": {"size": "1Gi", "storageClassName": CLASS}}


@pytest.fixture
def write_log_volumes(kube: Any, namespace: str, harness: Any) -> Iterator[list[str]]:
    """Four static 1Gi RWO volumes (2 shards x 2 replicas) the write-log claims bind to."""
    with harness.static_rwo_volumes(kube, [f"{namespace}-wl-{n}" for n in range(4)], CLASS) as names:
        yield names


def _container(statefulset: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = next(
        c for c in statefulset["spec"]["template"]["spec"]["containers"] if c["name"] == "shard"
    )
    return found


def _assert_claimed(scenario: Any, layout: str) -> None:
    """Every shard StatefulSet of `layout` has its RWO write-log claim template, the retention
    policy and --write-log-dir, and the StatefulSet controller made one bound claim per replica."""
    for shard in (0, 1):
        statefulset = scenario.kube.get(kinds.STATEFUL_SET.path(scenario.namespace, f"recs-{layout}-{shard}"))
        assert statefulset is not None
        (claim,) = statefulset["spec"]["volumeClaimTemplates"]
        assert claim["metadata"]["name"] == "write-log"
        assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
        assert claim["spec"]["storageClassName"] == CLASS
        assert statefulset["spec"]["persistentVolumeClaimRetentionPolicy"] == {
            "whenDeleted": "Delete",
            "whenScaled": "Delete",
        }
        command = _container(statefulset)["command"]
        assert command[command.index("--write-log-dir") + 1] == "/var/lib/shardrec/write-log"
    claims = scenario.children(PVC, f"shardrec.io/layout={layout}")
    assert sorted(c["metadata"]["name"] for c in claims) == [
        f"write-log-recs-{layout}-{shard}-{ordinal}" for shard in (0, 1) for ordinal in (0, 1)
    ]
    assert {c["status"]["phase"] for c in claims} == {"Bound"}


def _assert_settled(scenario: Any) -> None:
    """The API server fills in claim-template fields the builder leaves out (volumeMode, status):
    not drift, so settled passes change no StatefulSet and report no DriftCorrected."""

    def versions() -> dict[str, str]:
        return {
            s["metadata"]["name"]: s["metadata"]["resourceVersion"]
            for s in scenario.children(kinds.STATEFUL_SET)
        }

    before = versions()
    time.sleep(5)  # a few timer passes (0.5 s) and resyncs (2 s)
    assert versions() == before
    assert scenario.events("DriftCorrected") == []


def test_writes_on_makes_a_claimed_layout_and_a_version_change_is_refused_until_writes_are_off(
    scenario: Any, harness: Any, write_log_volumes: list[str]
) -> None:
    seen: dict[str, Any] = {}

    def writes_off_layout_serves() -> None:
        seen["plain"] = scenario.wait_ready("v1")["activeLayout"]
        for statefulset in scenario.children(kinds.STATEFUL_SET):
            assert "volumeClaimTemplates" not in statefulset["spec"]
        assert scenario.children(PVC, "app.kubernetes.io/component=shard") == []

    def turning_writes_on_rolls_a_new_layout_with_claims() -> None:
        scenario.patch_spec({"writes": WRITES})
        status = scenario.wait_status(
            "a new layout serving with writes",
            lambda s: (
                s.get("phase") == "Ready"
                and s.get("activeLayout") not in (None, "", seen["plain"])
                and s.get("observedGeneration") == scenario.body()["metadata"]["generation"]
            ),
        )
        layout = seen["writes"] = status["activeLayout"]
        _assert_claimed(scenario, layout)
        config = scenario.kube.get(kinds.CONFIG_MAP.path(scenario.namespace, "recs-router-config"))
        assert json.loads(config["data"]["router.json"])["writes"] == {"ack": "majority"}
        _assert_settled(scenario)

    def a_recreated_replica_gets_its_own_claim_back() -> None:
        layout = seen["writes"]
        claim_path = PVC.path(scenario.namespace, f"write-log-recs-{layout}-0-0")
        before = scenario.kube.get(claim_path)["metadata"]["uid"]
        pod = f"recs-{layout}-0-0"
        old_uid = scenario.kube.get(kinds.POD.path(scenario.namespace, pod))["metadata"]["uid"]
        scenario.kube.kubectl("-n", scenario.namespace, "delete", "pod", pod, "--wait=false")

        def recreated() -> dict[str, Any] | None:
            found = scenario.kube.get(kinds.POD.path(scenario.namespace, pod))
            return found if found and found["metadata"]["uid"] != old_uid else None

        new_pod = harness.wait_for("the replica recreated", recreated)
        volumes = {v["name"]: v for v in new_pod["spec"]["volumes"]}
        assert volumes["write-log"]["persistentVolumeClaim"]["claimName"] == f"write-log-recs-{layout}-0-0"
        assert scenario.kube.get(claim_path)["metadata"]["uid"] == before, "the same claim, not a new one"
        scenario.wait_ready("v1")

    def writes_off_with_v2_rolls_out_and_the_claims_go_with_their_layout() -> None:
        scenario.patch_spec({"writes": {"enabled": False}, "index": {"version": "v2"}})
        status = scenario.wait_ready("v2")
        assert scenario.children(kinds.DEPLOYMENT, "app.kubernetes.io/component=carrier") == []
        assert status["activeLayout"] not in (seen["plain"], seen["writes"])
        layout = seen["writes"]
        harness.wait_for(
            "the write-log layout deleted after its rollback window, its claims with it",
            lambda: (
                not scenario.children(PVC, f"shardrec.io/layout={layout}")
                and layout not in scenario.layouts_running()
            ),
            timeout=120,
        )

    scenario.create()
    scenario.run(
        [
            ("writes off: no claims", writes_off_layout_serves),
            (
                "writes on: a new layout with a RWO claim per replica",
                turning_writes_on_rolls_a_new_layout_with_claims,
            ),
            ("a deleted replica comes back on its claim", a_recreated_replica_gets_its_own_claim_back),
            (
                "writes off with v2: it rolls out uncarried, the old claims go",
                writes_off_with_v2_rolls_out_and_the_claims_go_with_their_layout,
            ),
        ]
    )
