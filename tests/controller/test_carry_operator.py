"""The carry of item writes on Kubernetes, operator side: the carrier's manifests (desired/carry.py),
the build Job's `--carry-dir`, what admits carriers to the shards, how a carrier's report is read,
and a whole version change with writes on through the API double, the carrier played by the test
(it patches the carrier pod's `shardrec.io/carry-progress` as the real carrier would)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from shardrec.api.carry import (
    CARRIER_MODULE,
    CARRY_CONFIG_KEY,
    CARRY_CONFIG_PATH,
    CARRY_PROGRESS_ANNOTATION,
    FINISH_REQUESTED_ANNOTATION,
    HAND_OVER_REQUESTED_ANNOTATION,
    CarrierConfig,
    CarryProgress,
)
from shardrec_operator.desired import labels, names
from shardrec_operator.desired.carry import (
    CarrierRequests,
    build_carrier_configmap,
    build_carrier_deployment,
    carrier_config,
)
from shardrec_operator.desired.cluster import build_cluster_objects
from shardrec_operator.desired.index_build import build_index_job
from shardrec_operator.desired.network import build_shard_network_policy
from shardrec_operator.desired.pod_security import restricted_violations
from shardrec_operator.reconcile import resources as kinds
from shardrec_operator.reconcile.expectations import Expectations
from shardrec_operator.reconcile.observe import Children, carrier_observations
from tests.controller.samples import NAME, NAMESPACE, cluster, layout_of
from tests.controller.test_reconcile import ready_world
from tests.controller.world import World

WRITES = {"enabled": True}
OLD = cluster(writes=WRITES)
NEW = cluster(writes=WRITES, shards=3)


def _config(prior: bool = False, *, tls: bool = True) -> CarrierConfig:
    return carrier_config(
        NEW, layout_of(NEW), layout_of(OLD), replicas=2, source_tls=tls, layout_tls=tls, prior=prior
    )


def test_the_carrier_config_names_old_leaders_and_every_new_replica_by_stable_dns() -> None:
    config = _config()
    old, new = layout_of(OLD), layout_of(NEW)
    assert (config.from_layout, config.from_shards, config.to_layout, config.to_shards) == (
        old.id,
        2,
        new.id,
        3,
    )
    assert config.old_leaders == [
        f"https://recs-{old.id}-{s}-0.recs-{old.id}-{s}.ml.svc:8080" for s in (0, 1)
    ]
    assert [len(replicas) for replicas in config.new_replicas] == [2, 2, 2]
    assert config.new_replicas[2][1] == f"https://recs-{new.id}-2-1.recs-{new.id}-2.ml.svc:8080"
    assert config.carry_store == f"/store/recs/carry/{new.id}"
    assert config.prior_carry is None
    assert (config.ca_file, config.tls_name) == ("/var/run/shardrec/shard-tls/ca.crt", "recs-shard.ml.svc")
    assert config.token_file.endswith("/send")
    assert config.deployment == names.carrier(NAME, new.id)
    assert _config(prior=True).prior_carry == f"/store/recs/carry/{old.id}"
    plain = _config(tls=False)
    assert plain.old_leaders[0].startswith("http://") and plain.ca_file is None and plain.tls_name is None


def test_the_carrier_deployment_runs_one_restricted_pod_with_the_operators_requests() -> None:
    config = _config()
    requests = CarrierRequests(hand_over="hand-over-3-100", finish="finish-3-200")
    deployment = build_carrier_deployment(NEW, layout_of(NEW), layout_of(OLD), config, requests)
    meta, spec = deployment["metadata"], deployment["spec"]
    assert meta["name"] == names.carrier(NAME, layout_of(NEW).id)
    assert meta["annotations"] == {
        labels.CARRY_FROM_ANNOTATION: layout_of(OLD).id,
        HAND_OVER_REQUESTED_ANNOTATION: "hand-over-3-100",
        FINISH_REQUESTED_ANNOTATION: "finish-3-200",
    }
    assert (
        meta["labels"][labels.COMPONENT] == "carrier" and meta["labels"][labels.LAYOUT] == layout_of(NEW).id
    )
    assert (spec["replicas"], spec["strategy"]) == (1, {"type": "Recreate"})
    template = spec["template"]
    assert restricted_violations(template) == []
    (container,) = template["spec"]["containers"]
    assert container["command"] == ["python", "-m", CARRIER_MODULE, "--config", CARRY_CONFIG_PATH]
    assert [e["name"] for e in container["env"]][:2] == ["POD_NAME", "POD_NAMESPACE"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/store"]["readOnly"] is False  # writes the carry folder, as the build Job mounts it
    assert {"/etc/shardrec/carry", "/var/run/shardrec/shard-token", "/var/run/shardrec/shard-tls"} <= set(
        mounts
    )
    assert template["spec"]["serviceAccountName"] == names.carrier_service_account(NAME)
    # Requests are Deployment annotations: asking for a hand-over restarts nothing.
    quiet = build_carrier_deployment(NEW, layout_of(NEW), layout_of(OLD), config, CarrierRequests())
    assert quiet["spec"] == spec
    configmap = build_carrier_configmap(NEW, layout_of(NEW), config)
    assert CarrierConfig.model_validate_json(configmap["data"][CARRY_CONFIG_KEY]) == config


def test_a_new_config_restarts_the_carrier() -> None:
    layout, source = layout_of(NEW), layout_of(OLD)
    one = build_carrier_deployment(NEW, layout, source, _config(), CarrierRequests())
    three = carrier_config(NEW, layout, source, replicas=3, source_tls=True, layout_tls=True, prior=False)
    other = build_carrier_deployment(NEW, layout, source, three, CarrierRequests())
    assert (
        one["spec"]["template"]["metadata"]["annotations"]
        != other["spec"]["template"]["metadata"]["annotations"]
    )


def test_the_carried_build_folds_in_the_carry_folder_and_others_do_not() -> None:
    layout = layout_of(NEW)
    command = build_index_job(NEW, layout, "a", carried=True)["spec"]["template"]["spec"]["containers"][0][
        "command"
    ]
    assert command[command.index("--carry-dir") + 1] == f"/store/recs/carry/{layout.id}"
    plain = build_index_job(NEW, layout, "a")["spec"]["template"]["spec"]["containers"][0]["command"]
    assert "--carry-dir" not in plain


def test_without_carriers_the_cluster_objects_are_exactly_as_before() -> None:
    assert build_cluster_objects(OLD) == build_cluster_objects(OLD, carriers=False)
    kinds_and_names = [(m["kind"], m["metadata"]["name"]) for m in build_cluster_objects(OLD, carriers=True)]
    assert ("ServiceAccount", "recs-carrier") in kinds_and_names and (
        "Role",
        "recs-carrier",
    ) in kinds_and_names
    policy = build_shard_network_policy(OLD, carriers=True)
    sources = policy["spec"]["ingress"][0]["from"]
    assert {"podSelector": {"matchLabels": {labels.CLUSTER: NAME, labels.COMPONENT: "carrier"}}} in sources


def _carrier_pod(
    deployment: dict[str, Any], progress: CarryProgress | None, *, name: str = "a"
) -> dict[str, Any]:
    template = deployment["spec"]["template"]
    annotations = {CARRY_PROGRESS_ANNOTATION: progress.model_dump_json()} if progress is not None else {}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{deployment['metadata']['name']}-7d9f-{name}",
            "namespace": NAMESPACE,
            "labels": dict(template["metadata"]["labels"]),
            "annotations": annotations,
            "creationTimestamp": "2026-11-23T12:00:00Z",
        },
        "spec": {"nodeName": "node-a"},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }


def test_a_carrier_is_observed_with_its_requests_and_its_pods_report() -> None:
    layout, source = layout_of(NEW), layout_of(OLD)
    deployment = build_carrier_deployment(NEW, layout, source, _config(), CarrierRequests(hand_over="h-1"))
    progress = CarryProgress(
        to_layout=layout.id, from_layout=source.id, phase="forwarding", cut=[4, 2], handed_over="h-1"
    )
    unreadable = _carrier_pod(deployment, None, name="b")
    unreadable["metadata"]["annotations"] = {CARRY_PROGRESS_ANNOTATION: "{not json"}
    children = Children()
    for obj in (deployment, _carrier_pod(deployment, progress), unreadable):
        children.objects[(obj["kind"], obj["metadata"]["name"])] = obj
    (carrier,) = carrier_observations(children)
    assert (carrier.layout, carrier.source, carrier.hand_over_requested) == (layout.id, source.id, "h-1")
    assert carrier.progress == progress and carrier.cut_taken and carrier.handed_over and carrier.fenced


def _report(world: World, layout_id: str, **fields: Any) -> None:
    """The carrier's report on its pod (the test plays the carrier, which patches it itself)."""
    deployment = world.api.get(kinds.DEPLOYMENT, NAMESPACE, names.carrier(NAME, layout_id))
    assert deployment is not None
    source = deployment["metadata"]["annotations"][labels.CARRY_FROM_ANNOTATION]
    pod = _carrier_pod(deployment, CarryProgress(to_layout=layout_id, from_layout=source, **fields))
    world.api.put(pod)


def _deployment_annotations(world: World, layout_id: str) -> dict[str, str]:
    deployment = world.api.get(kinds.DEPLOYMENT, NAMESPACE, names.carrier(NAME, layout_id))
    assert deployment is not None
    annotations: dict[str, str] = deployment["metadata"]["annotations"]
    return annotations


def test_a_version_change_with_writes_on_is_carried_step_by_step() -> None:
    world = ready_world(writes=WRITES)
    old = world.status["activeLayout"]
    world.change(index={"version": "v2"})
    world.settle()
    new = world.status["targetLayout"]
    carrier = names.carrier(NAME, new)
    assert carrier in world.api.names(kinds.DEPLOYMENT) and carrier in world.api.names(kinds.CONFIG_MAP)
    config = CarrierConfig.model_validate_json(
        world.api.get(kinds.CONFIG_MAP, NAMESPACE, carrier)["data"][CARRY_CONFIG_KEY]  # type: ignore[index]
    )
    assert (config.from_layout, config.to_layout) == (old, new)
    assert "recs-carrier" in world.api.names(kinds.SERVICE_ACCOUNT)
    assert names.build_job(NAME, new) not in world.api.names(kinds.JOB)
    assert [b["predicate"] for b in world.status["blockedBy"]] == ["build_after_carry_cut"]

    _report(world, new, phase="forwarding", cut=[5, 7], after=[5, 7])
    world.settle()
    job = world.api.get(kinds.JOB, NAMESPACE, names.build_job(NAME, new))
    assert job is not None
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[command.index("--carry-dir") + 1] == f"/store/recs/carry/{new}"
    assert world.status["activeLayout"] == old
    assert "traffic_after_carry_caught_up" in [b["predicate"] for b in world.status["blockedBy"]]

    _report(world, new, phase="forwarding", cut=[5, 7], after=[9, 7], caught_up=True)
    world.settle()
    request = _deployment_annotations(world, new).get(HAND_OVER_REQUESTED_ANNOTATION)
    assert request is not None and world.status["activeLayout"] == old
    assert [b["predicate"] for b in world.status["blockedBy"]] == ["switch_after_hand_over"]

    world.expectations = Expectations()  # a restarted operator: only what it observes
    world.settle()
    assert _deployment_annotations(world, new)[HAND_OVER_REQUESTED_ANNOTATION] == request
    assert world.status["activeLayout"] == old

    _report(world, new, phase="forwarding", cut=[5, 7], after=[9, 8], caught_up=True, handed_over=request)
    world.settle()
    assert world.status["activeLayout"] == new and world.active_layout() == new
    assert FINISH_REQUESTED_ANNOTATION in _deployment_annotations(world, new)
    assert [c["fenced"] for c in world.status["carries"]] == [True]

    world.now += timedelta(hours=2)  # far past the rollback window: the old layout still waits
    world.settle()
    assert old in world.layouts_with_statefulsets()
    assert "keep_carry_source_until_done" in [b["predicate"] for b in world.status["blockedBy"]]

    _report(
        world, new, phase="done", cut=[5, 7], after=[9, 8], caught_up=True, handed_over=request, done=True
    )
    world.settle()
    assert carrier not in world.api.names(kinds.DEPLOYMENT) and carrier not in world.api.names(
        kinds.CONFIG_MAP
    )
    assert world.layouts_with_statefulsets() == {new}
    assert world.status["blockedBy"] == []
    assert [(c["layout"], c["fromLayout"], c["done"]) for c in world.status["carries"]] == [(new, old, True)]
    reasons = world.event_reasons()
    assert [r for r in reasons if r in ("CarrierCreated", "HandOverRequested", "WritesCarried")] == [
        "CarrierCreated",
        "HandOverRequested",
        "WritesCarried",
    ]


def test_the_preview_says_a_new_version_is_carried() -> None:
    world = ready_world(writes=WRITES)
    world.change(paused=True, index={"version": "v2"})
    world.settle()
    text = world.status["planPreview"]["text"]
    assert "[info] WritesCarried: the operator carries the logged item writes into the new layout" in text, (
        text
    )
    assert world.api.names(kinds.DEPLOYMENT) == ["recs-router"]  # paused: no carrier yet


def _carrier_template(sample: Any) -> dict[str, Any]:
    config = carrier_config(
        sample, layout_of(sample), layout_of(OLD), replicas=2, source_tls=True, layout_tls=True, prior=False
    )
    deployment = build_carrier_deployment(
        sample, layout_of(sample), layout_of(OLD), config, CarrierRequests()
    )
    template: dict[str, Any] = deployment["spec"]["template"]
    return template


PLACEMENT: dict[str, Any] = {
    "metadata": {"labels": {"team": "recs"}, "annotations": {"example.com/cost-center": "ml"}},
    "nodeSelector": {"pool": "carry"},
    "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
    "priorityClassName": "rollout-high",
    "imagePullSecrets": [{"name": "registry-credentials"}],
    "env": [{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}],
}


def test_pod_templates_carrier_is_merged_over_the_carrier_pod_and_the_operators_fields_win() -> None:
    sample = cluster(writes=WRITES, shards=3, podTemplates={"carrier": PLACEMENT})
    template = _carrier_template(sample)
    pod = template["spec"]
    assert pod["nodeSelector"] == {"pool": "carry"} and pod["priorityClassName"] == "rollout-high"
    assert pod["tolerations"] == PLACEMENT["tolerations"]
    assert pod["imagePullSecrets"] == [{"name": "registry-credentials"}]
    assert template["metadata"]["labels"]["team"] == "recs"
    assert template["metadata"]["labels"][labels.COMPONENT] == "carrier"  # the selector still matches
    assert template["metadata"]["annotations"]["example.com/cost-center"] == "ml"
    (container,) = pod["containers"]
    env = [entry["name"] for entry in container["env"]]
    assert env[:2] == ["POD_NAME", "POD_NAMESPACE"] and env[-1] == "HTTPS_PROXY"
    assert pod["serviceAccountName"] == names.carrier_service_account(NAME)
    assert restricted_violations(template) == []


def test_without_a_carrier_template_the_build_template_applies_and_an_empty_one_opts_out() -> None:
    """The carrier is a worker beside the builds: the same image (pull secrets), the same store
    (node placement, proxies, CA bundles to reach it), no traffic (no zone spread)."""
    build = {"priorityClassName": "batch", "nodeSelector": {"pool": "build"}}
    inherited = _carrier_template(cluster(writes=WRITES, shards=3, podTemplates={"build": build}))["spec"]
    assert (inherited["priorityClassName"], inherited["nodeSelector"]) == ("batch", {"pool": "build"})
    own = _carrier_template(cluster(writes=WRITES, shards=3, podTemplates={"build": build, "carrier": {}}))[
        "spec"
    ]
    assert "priorityClassName" not in own and "nodeSelector" not in own
    plain = _carrier_template(cluster(writes=WRITES, shards=3))
    assert plain == _carrier_template(cluster(writes=WRITES, shards=3, podTemplates={"carrier": {}}))


def test_a_carrier_template_that_collides_with_the_operators_is_rejected_naming_the_field() -> None:
    from shardrec_operator.desired.validation import kubernetes_spec_errors

    clash = cluster(
        writes=WRITES,
        podTemplates={
            "carrier": {
                "env": [{"name": "POD_NAME", "value": "x"}],
                "volumes": [{"name": "tmp", "emptyDir": {}}],
            }
        },
    )
    errors = kubernetes_spec_errors(clash)
    assert "spec.podTemplates.carrier.env[POD_NAME]: set by the operator; it cannot be overridden" in errors
    assert "spec.podTemplates.carrier.volumes[tmp]: the operator's own volume; pick another name" in errors
    # A build template the carrier inherits is checked against the carrier's pod too.
    inherited = cluster(
        writes=WRITES, podTemplates={"build": {"env": [{"name": "POD_NAMESPACE", "value": "x"}]}}
    )
    assert any("POD_NAMESPACE" in error for error in kubernetes_spec_errors(inherited))
    assert kubernetes_spec_errors(cluster(writes=WRITES, podTemplates={"carrier": PLACEMENT})) == []
