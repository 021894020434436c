"""Scenario 12: hand edits of fields the operator owns are put back (drift correction).

`kubectl scale sts --replicas=0` on a shard StatefulSet and a `kubectl patch` (what `kubectl
edit` sends) of an owned label or env entry leave the `shardrec.io/applied-hash` annotation as it
was; the operator compares the live object's owned fields with its manifest, re-applies, and
posts a `DriftCorrected` Event naming the object and the fields.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from shardrec_operator.reconcile import resources as kinds

pytestmark = [pytest.mark.controlplane]


def test_scaled_and_edited_children_are_restored(scenario: Any, harness: Any) -> None:
    seen: dict[str, str] = {}

    def scale_a_shard_statefulset_to_zero() -> None:
        layout = scenario.wait_ready("v1")["activeLayout"]
        seen["sts"] = f"{scenario.name}-{layout}-0"
        scenario.kube.kubectl("-n", scenario.namespace, "scale", "sts", seen["sts"], "--replicas=0")

    def the_operator_scales_it_back() -> None:
        def restored() -> bool:
            sts = scenario.kube.get(kinds.STATEFUL_SET.path(scenario.namespace, seen["sts"]))
            return bool(sts and sts["spec"]["replicas"] == 2)

        def drift_event() -> bool:  # kopf posts Events in the background: wait, not assert
            messages = [event["message"] for event in scenario.events("DriftCorrected")]
            return any(seen["sts"] in m and "spec.replicas" in m for m in messages)

        harness.wait_for("the StatefulSet to be scaled back to 2", restored, timeout=60)
        harness.wait_for("a DriftCorrected Event naming spec.replicas", drift_event, timeout=30)
        scenario.wait_ready("v1")

    def edit_an_owned_label_and_env() -> None:
        scenario.kube.kubectl(
            "-n",
            scenario.namespace,
            "label",
            "sts",
            seen["sts"],
            "shardrec.io/index-version=tampered",
            "--overwrite",
        )
        router = scenario.kube.get(kinds.DEPLOYMENT.path(scenario.namespace, f"{scenario.name}-router"))
        assert router is not None
        env = router["spec"]["template"]["spec"]["containers"][0]["env"]
        index = next(i for i, e in enumerate(env) if e["name"] == "SHARDREC_ROUTER_POD_NAMESPACE")
        patch = [{"op": "remove", "path": f"/spec/template/spec/containers/0/env/{index}"}]
        scenario.kube.kubectl(
            "-n",
            scenario.namespace,
            "patch",
            "deployment",
            f"{scenario.name}-router",
            "--type=json",
            "-p",
            json.dumps(patch),
        )

    def both_are_restored_with_events() -> None:
        def label_back() -> bool:
            sts = scenario.kube.get(kinds.STATEFUL_SET.path(scenario.namespace, seen["sts"]))
            return bool(sts and sts["metadata"]["labels"]["shardrec.io/index-version"] == "v1")

        def env_back() -> bool:
            router = scenario.kube.get(kinds.DEPLOYMENT.path(scenario.namespace, f"{scenario.name}-router"))
            env = (router or {})["spec"]["template"]["spec"]["containers"][0].get("env", [])
            return any(e["name"] == "SHARDREC_ROUTER_POD_NAMESPACE" for e in env)

        def events_name_both() -> bool:
            messages = [event["message"] for event in scenario.events("DriftCorrected")]
            label = any(seen["sts"] in m and "metadata.labels" in m for m in messages)
            return label and any("router" in m and "env" in m for m in messages)

        harness.wait_for("the StatefulSet's label to be restored", label_back, timeout=60)
        harness.wait_for("the router's env entry to be restored", env_back, timeout=60)
        harness.wait_for(
            "DriftCorrected Events naming the label and the env entry", events_name_both, timeout=30
        )

    scenario.create()
    scenario.run(
        [
            ("scale shard 0's StatefulSet to 0 by hand", scale_a_shard_statefulset_to_zero),
            ("the operator restores 2 replicas, with an Event", the_operator_scales_it_back),
            ("edit an owned label and remove an owned env entry", edit_an_owned_label_and_env),
            ("both are restored, with Events naming the fields", both_are_restored_with_events),
        ]
    )
