"""Scenario 18: a version change with item writes on, carried through a carrier (real API server,
kwok nodes).

The operator creates a carrier (ConfigMap + Deployment `recs-carry-<new layout>`) for the new
layout, holds its build Job until the carrier reports the cut, holds the stage and the switch
until it reports `caught_up`, asks for the hand-over on the carrier Deployment and switches only
once the report names that request, asks for the finish once the routers serve the new layout,
and deletes the old layout (its write-log claims with it) only after the carrier reports done.

kwok runs no containers, so no carrier process runs here: the test plays the carrier by patching
the carrier pod's `shardrec.io/carry-progress` annotation, exactly as the carrier does on a real
cluster (its own pod, through its ServiceAccount). What this proves is the operator's side on a
real API server: the objects it creates and the admission, RBAC and Pod Security checks they
pass, the annotations it reads and writes, and the order of the steps. The carrier process
itself is tested against real shards elsewhere.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from shardrec.api.carry import (
    CARRY_CONFIG_KEY,
    CARRY_PROGRESS_ANNOTATION,
    FINISH_REQUESTED_ANNOTATION,
    HAND_OVER_REQUESTED_ANNOTATION,
    CarrierConfig,
    CarryProgress,
)
from shardrec_operator.reconcile import resources as kinds

pytestmark = [pytest.mark.controlplane]

CLASS = "e2e-carry-log"
PVC = kinds.Resource("v1", "PersistentVolumeClaim", "persistentvolumeclaims")
WRITES = {"enabled": True, "ack": "majority", "logVolume": {"size": "1Gi", "storageClassName": CLASS}}


@pytest.fixture
def write_log_volumes(kube: Any, namespace: str, harness: Any) -> Iterator[list[str]]:
    """Eight static 1Gi RWO volumes: 2 shards x 2 replicas of the old and of the new layout."""
    with harness.static_rwo_volumes(kube, [f"{namespace}-wlc-{n}" for n in range(8)], CLASS) as names:
        yield names


class CarryScenario:
    """The scenario's steps; the test plays the carrier (`report`)."""

    def __init__(self, scenario: Any, harness: Any) -> None:
        self.scenario = scenario
        self.harness = harness
        self.seen: dict[str, Any] = {}

    def carrier_name(self) -> str:
        return f"recs-carry-{self.seen['new']}"

    def carrier_deployment(self) -> dict[str, Any] | None:
        found: dict[str, Any] | None = self.scenario.kube.get(
            kinds.DEPLOYMENT.path(self.scenario.namespace, self.carrier_name())
        )
        return found

    def report(self, **fields: Any) -> None:
        """Play the carrier: patch its report onto its pod, as `shardrec.serving.carry` does."""
        pods = [
            p
            for p in self.scenario.children(
                kinds.POD, f"app.kubernetes.io/component=carrier,shardrec.io/layout={self.seen['new']}"
            )
            if not p["metadata"].get("deletionTimestamp")
        ]
        assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
        progress = CarryProgress(to_layout=self.seen["new"], from_layout=self.seen["old"], **fields)
        self.scenario.kube.kubectl(
            "-n",
            self.scenario.namespace,
            "annotate",
            "pod",
            pods[0]["metadata"]["name"],
            f"{CARRY_PROGRESS_ANNOTATION}={progress.model_dump_json()}",
            "--overwrite",
        )

    @staticmethod
    def blocked_by(name: str) -> Any:
        return lambda s: any(b["predicate"] == name for b in s.get("blockedBy", []))

    def writes_on_layout_serves(self) -> None:
        self.seen["old"] = self.scenario.wait_ready("v1")["activeLayout"]

    def a_new_version_gets_a_carrier_and_its_build_waits_for_the_cut(self) -> None:
        self.scenario.patch_spec({"index": {"version": "v2"}})
        status = self.scenario.wait_status(
            "the build held for the cut", self.blocked_by("build_after_carry_cut")
        )
        self.seen["new"] = status["targetLayout"]
        assert status["activeLayout"] == self.seen["old"]
        deployment = self.harness.wait_for("the carrier Deployment", self.carrier_deployment)
        assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"
        assert deployment["metadata"]["annotations"]["shardrec.io/carry-from-layout"] == self.seen["old"]
        configmap = self.scenario.kube.get(
            kinds.CONFIG_MAP.path(self.scenario.namespace, self.carrier_name())
        )
        config = CarrierConfig.model_validate_json(configmap["data"][CARRY_CONFIG_KEY])
        assert (config.from_layout, config.to_layout, config.to_shards) == (
            self.seen["old"],
            self.seen["new"],
            2,
        )
        assert config.old_leaders == [
            f"https://recs-{self.seen['old']}-{s}-0.recs-{self.seen['old']}-{s}.{self.scenario.namespace}.svc:8080"
            for s in (0, 1)
        ]
        assert config.carry_store == f"/store/recs/carry/{self.seen['new']}"
        assert "recs-carrier" in self.scenario.names(kinds.SERVICE_ACCOUNT)
        policy = self.scenario.kube.get(kinds.NETWORK_POLICY.path(self.scenario.namespace, "recs-shards"))
        sources = policy["spec"]["ingress"][0]["from"]
        assert {
            "podSelector": {
                "matchLabels": {"app.kubernetes.io/component": "carrier", "shardrec.io/cluster": "recs"}
            }
        } in sources
        self.harness.wait_for(
            "the carrier pod (kwok runs it)",
            lambda: self.scenario.children(
                kinds.POD, f"app.kubernetes.io/component=carrier,shardrec.io/layout={self.seen['new']}"
            ),
        )
        time.sleep(3)  # a few passes: still no build Job
        assert f"recs-{self.seen['new']}-build" not in self.scenario.names(kinds.JOB)

    def the_cut_starts_the_build_with_the_carry_folder_and_traffic_waits_for_caught_up(self) -> None:
        self.report(phase="forwarding", cut=[4, 6], after=[4, 6])
        job = self.harness.wait_for(
            "the build Job",
            lambda: self.scenario.kube.get(
                kinds.JOB.path(self.scenario.namespace, f"recs-{self.seen['new']}-build")
            ),
        )
        command = job["spec"]["template"]["spec"]["containers"][0]["command"]
        assert command[command.index("--carry-dir") + 1] == f"/store/recs/carry/{self.seen['new']}"
        status = self.scenario.wait_status(
            "stage held until caught up", self.blocked_by("traffic_after_carry_caught_up")
        )
        assert status["activeLayout"] == self.seen["old"]

    def caught_up_asks_for_the_hand_over_and_the_switch_waits_for_it(self) -> None:
        self.report(phase="forwarding", cut=[4, 6], after=[9, 6], caught_up=True)

        def requested() -> str | None:
            annotations = ((self.carrier_deployment() or {}).get("metadata") or {}).get("annotations") or {}
            return annotations.get(HAND_OVER_REQUESTED_ANNOTATION)

        self.seen["request"] = self.harness.wait_for("the hand-over request", requested)
        status = self.scenario.wait_status(
            "switch held for the hand-over", self.blocked_by("switch_after_hand_over")
        )
        assert (
            status["activeLayout"] == self.seen["old"] and self.scenario.active_layout() == self.seen["old"]
        )

    def the_hand_over_switches_and_the_old_layout_waits_for_done(self) -> None:
        self.report(
            phase="forwarding", cut=[4, 6], after=[9, 7], caught_up=True, handed_over=self.seen["request"]
        )
        self.scenario.wait_ready("v2")
        assert self.scenario.active_layout() == self.seen["new"]
        self.harness.wait_for(
            "the finish request",
            lambda: (
                FINISH_REQUESTED_ANNOTATION
                in ((self.carrier_deployment() or {}).get("metadata", {}).get("annotations") or {})
            ),
        )
        time.sleep(12)  # past the 8 s rollback window: the old layout stays, its writes still carried
        assert self.seen["old"] in self.scenario.layouts_running()
        assert self.blocked_by("keep_carry_source_until_done")(self.scenario.status())
        carries = self.scenario.status()["carries"]
        assert [(c["layout"], c["fromLayout"], c["fenced"], c["done"]) for c in carries] == [
            (self.seen["new"], self.seen["old"], True, False)
        ]

    def done_deletes_the_carrier_and_the_old_layout_with_its_claims(self) -> None:
        self.report(
            phase="done",
            cut=[4, 6],
            after=[9, 7],
            caught_up=True,
            handed_over=self.seen["request"],
            done=True,
        )
        self.harness.wait_for("the carrier deleted", lambda: self.carrier_deployment() is None)
        self.harness.wait_for(
            "the old layout deleted, its write-log claims with it",
            lambda: (
                self.seen["old"] not in self.scenario.layouts_running()
                and not self.scenario.children(PVC, f"shardrec.io/layout={self.seen['old']}")
            ),
            timeout=120,
        )
        status = self.scenario.wait_status("nothing blocked", lambda s: s.get("blockedBy") == [])
        assert [(c["layout"], c["done"]) for c in status["carries"]] == [(self.seen["new"], True)]
        assert status["activeVersion"] == "v2"


def test_a_version_change_with_writes_on_is_carried_cut_caught_up_hand_over_done(
    scenario: Any, harness: Any, write_log_volumes: list[str]
) -> None:
    steps = CarryScenario(scenario, harness)
    scenario.create(writes=WRITES)
    scenario.run(
        [
            ("writes on: v1 serves", steps.writes_on_layout_serves),
            (
                "v2: a carrier, the build waits for the cut",
                steps.a_new_version_gets_a_carrier_and_its_build_waits_for_the_cut,
            ),
            (
                "cut: the build folds in the carry folder; traffic waits for caught_up",
                steps.the_cut_starts_the_build_with_the_carry_folder_and_traffic_waits_for_caught_up,
            ),
            (
                "caught up: hand-over requested, switch waits",
                steps.caught_up_asks_for_the_hand_over_and_the_switch_waits_for_it,
            ),
            (
                "handed over: switch; old layout waits for done",
                steps.the_hand_over_switches_and_the_old_layout_waits_for_done,
            ),
            (
                "done: carrier and old layout deleted",
                steps.done_deletes_the_carrier_and_the_old_layout_with_its_claims,
            ),
        ]
    )
