"""Drift: owned fields compared with the live object; defaults and others' fields ignored."""

from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any

from shardrec_operator.desired.shard import build_shard_statefulset
from shardrec_operator.reconcile.apply import apply_child
from shardrec_operator.reconcile.drift import describe, drifted_fields, quantity
from tests.controller.fake_api import FakeClusterApi
from tests.controller.samples import UID, cluster, layout_of

SAMPLE = cluster()


def _statefulset() -> dict[str, Any]:
    return build_shard_statefulset(SAMPLE, layout_of(SAMPLE), 0, 2)


def _live(desired: dict[str, Any]) -> dict[str, Any]:
    """What the API server gives back: defaults filled in, other managers' fields, normalised values."""
    live = copy.deepcopy(desired)
    live["metadata"].update(uid="u1", resourceVersion="7", managedFields=[{"manager": "x"}])
    live["metadata"]["labels"]["team"] = "search"  # another manager's label
    live["metadata"]["annotations"]["deployment.kubernetes.io/revision"] = "3"
    spec = live["spec"]
    spec["revisionHistoryLimit"] = 10
    template = spec["template"]
    template["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"] = "2026-12-01T00:00:00Z"
    container = template["spec"]["containers"][0]
    container["terminationMessagePath"] = "/dev/termination-log"
    container["readinessProbe"]["httpGet"]["scheme"] = "HTTP"
    container.setdefault("env", []).append({"name": "INJECTED_BY_WEBHOOK", "value": "1"})
    container["resources"]["requests"]["cpu"] = "0.5"  # normalised quantity (500m)
    for mount in container["volumeMounts"]:
        mount.pop("readOnly", None)  # false is omitted by the server; true is kept
        mount.setdefault("readOnly", True) if mount["name"] in ("index-store", "shard-token") else None
    template["spec"]["dnsPolicy"] = "ClusterFirst"
    live["status"] = {"replicas": 2, "readyReplicas": 2}
    return live


def test_a_live_object_with_defaults_and_foreign_fields_has_no_drift() -> None:
    desired = _statefulset()
    assert drifted_fields(desired, _live(desired)) == []


def test_kubectl_scale_to_zero_is_drift_of_spec_replicas() -> None:
    desired = _statefulset()
    live = _live(desired)
    live["spec"]["replicas"] = 0
    assert drifted_fields(desired, live) == ["spec.replicas"]


def test_an_edited_owned_label_and_a_removed_env_entry_are_named() -> None:
    desired = _statefulset()
    desired["spec"]["template"]["spec"]["containers"][0]["env"] = [{"name": "A", "value": "1"}]
    live = _live(desired)
    live["metadata"]["labels"]["shardrec.io/index-version"] = "tampered"
    live["spec"]["template"]["spec"]["containers"][0]["env"] = [{"name": "INJECTED_BY_WEBHOOK", "value": "1"}]
    assert drifted_fields(desired, live) == [
        "metadata.labels.shardrec.io/index-version",
        "spec.template.spec.containers[shard].env[A]",
    ]


def test_a_changed_command_is_drift_of_the_whole_list_item() -> None:
    desired = _statefulset()
    live = _live(desired)
    live["spec"]["template"]["spec"]["containers"][0]["command"][-1] = "999"
    drifted = drifted_fields(desired, live)
    assert len(drifted) == 1 and drifted[0].startswith("spec.template.spec.containers[shard].command[")
    live["spec"]["template"]["spec"]["containers"][0]["command"].append("--extra")
    assert drifted_fields(desired, live) == ["spec.template.spec.containers[shard].command"]


def test_quantities_compare_by_value_only_where_they_are_quantities() -> None:
    desired = {"spec": {"requests": {"cpu": 1, "memory": "1Gi"}, "flag": True, "port": 8080, "label": "1"}}
    live = {
        "spec": {"requests": {"cpu": "1000m", "memory": "1024Mi"}, "flag": True, "port": 8080, "label": "1"}
    }
    assert drifted_fields(desired, live) == []
    live["spec"].update(flag=1, port="8080", label="1.0")
    assert drifted_fields(desired, live) == ["spec.flag", "spec.port", "spec.label"]


def test_quantities_compare_by_value() -> None:
    assert quantity("1000m") == quantity("1") == Decimal(1)
    assert quantity("1024Mi") == quantity("1Gi")
    assert quantity("2e3") == Decimal(2000)
    assert quantity("http") is None and quantity("") is None


def test_describe_names_at_most_eight_fields() -> None:
    assert describe(["a", "b"]) == "a, b"
    assert describe([str(i) for i in range(10)]) == "0, 1, 2, 3, 4, 5, 6, 7 and 2 more"


def test_apply_child_reapplies_a_current_manifest_whose_object_drifted() -> None:
    api = FakeClusterApi()
    desired = _statefulset()
    applied = apply_child(api, desired, None, owner_uid=UID)
    assert applied is not None and applied.drifted == ()
    stored = applied.stored
    assert apply_child(api, desired, stored, owner_uid=UID) is None, "no drift: nothing sent"
    scaled = copy.deepcopy(stored)
    scaled["spec"]["replicas"] = 0
    scaled = api.put(scaled)  # `kubectl scale`: the hash annotation is left as it was
    again = apply_child(api, desired, scaled, owner_uid=UID)
    assert again is not None and again.drifted == ("spec.replicas",)
    assert again.stored["spec"]["replicas"] == 2
    assert [write[0] for write in api.writes] == ["apply", "apply"]
