"""Scenario 18: a version change with item writes on, carried through a carrier (real API server,
kwok nodes); and a rollback with writes on, carried back into the kept layout.

The operator creates a carrier (ConfigMap + Deployment `recs-carry-<new layout>`) for the new
layout, holds its build Job until the carrier reports the cut, holds the stage and the switch
until it reports `caught_up`, asks for the hand-over on the carrier Deployment and switches only
once the report names that request, asks for the finish once the routers serve the new layout,
and deletes the old layout (its write-log claims with it) only after the carrier reports done.
The rollback (v1 kept with a long rollback window) gets a carrier of v1 marked as a carry back (no
cut, no build Job), the same gates, and v2 goes once its window is over (shortened at the end).

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
        """Play the carrier (into v2, from v1): patch its report onto its pod, as
        `shardrec.serving.carry` does."""
        self.play_carrier(self.seen["new"], self.seen["old"], **fields)

    def play_carrier(self, to_layout: str, from_layout: str, **fields: Any) -> None:
        """Patch the report of the carrier into `to_layout` onto its pod."""
        pods = [
            p
            for p in self.scenario.children(
                kinds.POD, f"app.kubernetes.io/component=carrier,shardrec.io/layout={to_layout}"
            )
            if not p["metadata"].get("deletionTimestamp")
        ]
        assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
        progress = CarryProgress(to_layout=to_layout, from_layout=from_layout, **fields)
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

    def report_done(self) -> None:
        """Play the carrier's last report: cut, caught up, handed over and done."""
        self.report(
            phase="done",
            cut=[4, 6],
            after=[9, 7],
            caught_up=True,
            handed_over=self.seen["request"],
            done=True,
        )

    def done_deletes_the_carrier_and_the_old_layout_with_its_claims(self) -> None:
        self.report_done()
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


class CarryBackScenario(CarryScenario):
    """Then the rollback: v2's writes carried back into the kept v1 (the test plays both carriers)."""

    def report_back(self, **fields: Any) -> None:
        """Play the carrier of the carry back (into v1, from v2)."""
        self.play_carrier(self.seen["old"], self.seen["new"], **fields)

    def back_carrier_deployment(self) -> dict[str, Any] | None:
        found: dict[str, Any] | None = self.scenario.kube.get(
            kinds.DEPLOYMENT.path(self.scenario.namespace, f"recs-carry-{self.seen['old']}")
        )
        return found

    def back_annotations(self) -> dict[str, str]:
        found: dict[str, str] = ((self.back_carrier_deployment() or {}).get("metadata") or {}).get(
            "annotations"
        ) or {}
        return found

    def the_hand_over_switches_to_v2(self) -> None:
        self.report(
            phase="forwarding", cut=[4, 6], after=[9, 7], caught_up=True, handed_over=self.seen["request"]
        )
        self.scenario.wait_ready("v2")
        assert self.scenario.active_layout() == self.seen["new"]

    def done_deletes_the_carrier_and_keeps_v1(self) -> None:
        self.report_done()
        self.harness.wait_for("the carrier deleted", lambda: self.carrier_deployment() is None)
        assert self.seen["old"] in self.scenario.layouts_running(), "v1 is kept for its rollback window"

    def the_rollback_gets_a_back_carrier_and_waits_for_caught_up(self) -> None:
        jobs = self.scenario.names(kinds.JOB)
        self.scenario.patch_spec({"index": {"version": "v1"}})
        status = self.scenario.wait_status(
            "the switch back held until caught up", self.blocked_by("traffic_after_carry_caught_up")
        )
        assert status["targetLayout"] == self.seen["old"] and status["activeLayout"] == self.seen["new"]
        assert not self.blocked_by("writes_carried_to_new_layout")(status)
        deployment = self.harness.wait_for("the back carrier Deployment", self.back_carrier_deployment)
        annotations = deployment["metadata"]["annotations"]
        assert annotations["shardrec.io/carry-back"] == "true"
        assert annotations["shardrec.io/carry-from-layout"] == self.seen["new"]
        configmap = self.scenario.kube.get(
            kinds.CONFIG_MAP.path(self.scenario.namespace, f"recs-carry-{self.seen['old']}")
        )
        config = CarrierConfig.model_validate_json(configmap["data"][CARRY_CONFIG_KEY])
        assert (config.from_layout, config.to_layout, config.back, config.prior_carry) == (
            self.seen["new"],
            self.seen["old"],
            True,
            None,
        )
        assert config.carry_store == f"/store/recs/carry-back/{self.seen['old']}/{self.seen['new']}"
        back = [c for c in status.get("carries", []) if c.get("back")]
        assert [(c["layout"], c["fromLayout"]) for c in back] == [(self.seen["old"], self.seen["new"])]
        self.harness.wait_for(
            "the back carrier pod (kwok runs it)",
            lambda: self.scenario.children(
                kinds.POD, f"app.kubernetes.io/component=carrier,shardrec.io/layout={self.seen['old']}"
            ),
        )
        progressing = self.scenario.condition("Progressing")
        assert progressing.get("reason") == "CarryingWritesBack", progressing
        assert self.scenario.events("CarryingWritesBack")
        assert self.scenario.names(kinds.JOB) == jobs, "a carry back builds nothing"

    def caught_up_asks_for_the_hand_over_back(self) -> None:
        self.report_back(phase="forwarding", after=[9, 7], caught_up=True)
        self.seen["back_request"] = self.harness.wait_for(
            "the hand-over request of the carry back",
            lambda: self.back_annotations().get(HAND_OVER_REQUESTED_ANNOTATION),
        )
        status = self.scenario.wait_status(
            "switch back held for the hand-over", self.blocked_by("switch_after_hand_over")
        )
        assert status["activeLayout"] == self.seen["new"]

    def the_hand_over_switches_back_to_v1_and_done_deletes_the_carrier(self) -> None:
        request = self.seen["back_request"]
        self.report_back(phase="forwarding", after=[9, 8], caught_up=True, handed_over=request)
        self.scenario.wait_ready("v1")
        assert self.scenario.active_layout() == self.seen["old"]
        self.harness.wait_for(
            "the finish request of the carry back",
            lambda: FINISH_REQUESTED_ANNOTATION in self.back_annotations(),
        )
        assert self.seen["new"] in self.scenario.layouts_running()
        self.report_back(phase="done", after=[9, 8], caught_up=True, handed_over=request, done=True)
        self.harness.wait_for("the back carrier deleted", lambda: self.back_carrier_deployment() is None)
        assert self.scenario.events("WritesCarriedBack")

    def v2_goes_after_its_window_with_its_claims(self) -> None:
        self.scenario.patch_spec({"rollout": {"rollbackWindowSeconds": 8}})
        self.harness.wait_for(
            "v2 deleted, its write-log claims with it",
            lambda: (
                self.seen["new"] not in self.scenario.layouts_running()
                and not self.scenario.children(PVC, f"shardrec.io/layout={self.seen['new']}")
            ),
            timeout=120,
        )
        status = self.scenario.wait_status(
            "nothing blocked, v2 forgotten",
            lambda s: (
                s.get("blockedBy") == []
                and all(c["layout"] != self.seen["new"] for c in s.get("carries", []))
            ),
        )
        assert [(c["layout"], c["back"], c["done"]) for c in status["carries"]] == [
            (self.seen["old"], True, True)
        ]
        assert status["activeVersion"] == "v1"
        assert self.scenario.children(PVC, f"shardrec.io/layout={self.seen['old']}"), "v1 kept its claims"


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


def test_a_rollback_with_writes_on_is_carried_back_into_the_kept_layout(
    scenario: Any, harness: Any, write_log_volumes: list[str]
) -> None:
    steps = CarryBackScenario(scenario, harness)
    scenario.create(writes=WRITES, rollout={"rollbackWindowSeconds": 600})  # v1 stays kept after v2
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
                "caught up: hand-over requested",
                steps.caught_up_asks_for_the_hand_over_and_the_switch_waits_for_it,
            ),
            ("handed over: v2 serves", steps.the_hand_over_switches_to_v2),
            ("done: the carrier goes, v1 is kept", steps.done_deletes_the_carrier_and_keeps_v1),
            (
                "back to v1: a back carrier, no build, waits for caught_up",
                steps.the_rollback_gets_a_back_carrier_and_waits_for_caught_up,
            ),
            ("caught up: hand-over of v2 requested", steps.caught_up_asks_for_the_hand_over_back),
            (
                "handed over: v1 serves, done",
                steps.the_hand_over_switches_back_to_v1_and_done_deletes_the_carrier,
            ),
            ("v2 deleted after its window", steps.v2_goes_after_its_window_with_its_claims),
        ]
    )
