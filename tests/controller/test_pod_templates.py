"""`spec.podTemplates`: the merge over the operator's pods, the conflicts it rejects, and the
restricted Pod Security Standard check of the merged pods, all pure."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from shardrec.api import v1alpha1 as api
from shardrec_operator.desired import pods
from shardrec_operator.desired.index_build import build_cleanup_job, build_index_job
from shardrec_operator.desired.pod_security import restricted_violations
from shardrec_operator.desired.pod_template import merge_pod_template, template_conflicts
from shardrec_operator.desired.router import build_router_deployment, router_pod_template
from shardrec_operator.desired.shard import build_shard_statefulset, shard_pod_template
from shardrec_operator.desired.validation import kubernetes_spec_errors
from tests.controller.samples import cluster, layout_of

SELECTOR = {"app": "x"}


def _template() -> dict[str, Any]:
    sample = cluster()
    return shard_pod_template(sample, layout_of(sample), 0)


def _override(**fields: Any) -> api.ServingPodTemplate:
    return api.ServingPodTemplate.model_validate(fields)


def _merge(override: api.PodTemplate | None, template: dict[str, Any] | None = None) -> dict[str, Any]:
    return merge_pod_template(template or _template(), override, container="shard", selector=SELECTOR)


def _main(merged: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = merged["spec"]["containers"][0]
    return container


def test_no_override_is_the_operators_template_unchanged_and_not_shared() -> None:
    template = _template()
    merged = _merge(None, template)
    assert merged == template and merged is not template
    merged["spec"]["containers"][0]["name"] = "changed"
    assert template["spec"]["containers"][0]["name"] == "shard"


def test_the_default_template_is_not_mutated_by_a_merge() -> None:
    template = _template()
    before = copy.deepcopy(template)
    _merge(_override(env=[{"name": "A", "value": "1"}], tolerations=[{"operator": "Exists"}]), template)
    assert template == before


def test_metadata_is_added_and_the_operators_keys_stay() -> None:
    merged = _merge(_override(metadata={"labels": {"team": "a"}, "annotations": {"x.io/y": "z"}}))
    labels = merged["metadata"]["labels"]
    assert labels["team"] == "a" and labels["app.kubernetes.io/component"] == "shard"
    assert merged["metadata"]["annotations"]["x.io/y"] == "z"
    assert merged["metadata"]["annotations"]["prometheus.io/scrape"] == "true"


def test_scheduling_fields_are_set_and_tolerations_appended() -> None:
    merged = _merge(
        _override(
            nodeSelector={"pool": "search"},
            tolerations=[{"key": "dedicated", "operator": "Equal", "value": "s", "effect": "NoSchedule"}],
            priorityClassName="high",
            imagePullSecrets=[{"name": "reg"}],
        )
    )
    spec = merged["spec"]
    assert spec["nodeSelector"] == {"pool": "search"}
    assert spec["tolerations"] == [
        {"key": "dedicated", "operator": "Equal", "value": "s", "effect": "NoSchedule"}
    ]
    assert spec["priorityClassName"] == "high"
    assert spec["imagePullSecrets"] == [{"name": "reg"}]


def test_an_affinity_kind_replaces_the_default_of_that_kind_only() -> None:
    template = _template()
    default_anti = template["spec"]["affinity"]["podAntiAffinity"]
    node = {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}
    merged = _merge(_override(affinity={"nodeAffinity": node}), template)
    assert merged["spec"]["affinity"] == {"podAntiAffinity": default_anti, "nodeAffinity": node}
    anti = {"requiredDuringSchedulingIgnoredDuringExecution": []}
    merged = _merge(_override(affinity={"podAntiAffinity": anti}), template)
    assert merged["spec"]["affinity"] == {"podAntiAffinity": anti}


@pytest.mark.parametrize(("zone_spread", "when"), [("Soft", "ScheduleAnyway"), ("Hard", "DoNotSchedule")])
def test_zone_spread_sets_the_default_zone_constraint(zone_spread: str, when: str) -> None:
    spread = _merge(_override(zoneSpread=zone_spread))["spec"]["topologySpreadConstraints"]
    assert [(entry["topologyKey"], entry["whenUnsatisfiable"]) for entry in spread] == [(pods.ZONE_KEY, when)]


def test_a_spread_constraint_replaces_the_default_with_its_key_and_defaults_its_selector() -> None:
    mine = {"maxSkew": 2, "topologyKey": pods.ZONE_KEY, "whenUnsatisfiable": "DoNotSchedule"}
    host = {"maxSkew": 1, "topologyKey": pods.HOSTNAME_KEY, "whenUnsatisfiable": "ScheduleAnyway"}
    spread = _merge(_override(topologySpreadConstraints=[mine, host]))["spec"]["topologySpreadConstraints"]
    assert spread == [
        {**mine, "labelSelector": {"matchLabels": SELECTOR}},
        {**host, "labelSelector": {"matchLabels": SELECTOR}},
    ]


def test_env_volumes_and_mounts_go_to_the_main_container_after_the_operators() -> None:
    template = _template()
    merged = _merge(
        _override(
            env=[
                {"name": "A", "value": "1"},
                {"name": "B", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
            ],
            volumes=[{"name": "extra", "emptyDir": {}}],
            volumeMounts=[{"name": "extra", "mountPath": "/extra", "readOnly": True}],
        ),
        template,
    )
    main = _main(merged)
    assert main["env"] == [
        {"name": "A", "value": "1"},
        {"name": "B", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
    ]
    assert main["volumeMounts"][:-1] == _main(template)["volumeMounts"]
    assert main["volumeMounts"][-1] == {"name": "extra", "mountPath": "/extra", "readOnly": True}
    assert merged["spec"]["volumes"][-1] == {"name": "extra", "emptyDir": {}}
    for essential in ("command", "ports", "readinessProbe", "securityContext", "resources", "lifecycle"):
        assert main[essential] == _main(template)[essential], essential


def test_operator_entries_win_a_collision_and_it_is_reported() -> None:
    template = _template()
    override = _override(
        metadata={"annotations": {"prometheus.io/port": "9999"}},
        volumes=[{"name": pods.TMP_VOLUME, "emptyDir": {"medium": "Memory"}}],
        volumeMounts=[{"name": pods.TMP_VOLUME, "mountPath": "/store/mine"}],
    )
    merged = _merge(override, template)
    assert merged["metadata"]["annotations"]["prometheus.io/port"] == str(pods.HTTP_PORT)
    assert [volume for volume in merged["spec"]["volumes"] if volume["name"] == pods.TMP_VOLUME] == [
        pods.tmp_volume()
    ]
    errors = template_conflicts(template, override, container="shard", field="spec.podTemplates.shard")
    assert errors == [
        "spec.podTemplates.shard.metadata.annotations[prometheus.io/port]: set by the operator; "
        "it cannot be overridden",
        "spec.podTemplates.shard.volumes[tmp]: the operator's own volume; pick another name",
        "spec.podTemplates.shard.volumeMounts[tmp]: mountPath /store/mine overlaps /store, mounted already",
    ]


def test_router_env_names_of_the_operator_are_conflicts() -> None:
    sample = cluster()
    override = _override(env=[{"name": "SHARDREC_ROUTER_POD_NAME", "value": "x"}])
    errors = template_conflicts(
        router_pod_template(sample), override, container="router", field="spec.podTemplates.router"
    )
    assert errors == [
        "spec.podTemplates.router.env[SHARDREC_ROUTER_POD_NAME]: set by the operator; it cannot be overridden"
    ]


@pytest.mark.parametrize(
    ("container", "mount", "clash"),
    [
        ("shard", "/tmp", "/tmp"),
        ("shard", "/tmp/x", "/tmp"),
        ("shard", "/store", "/store"),
        ("shard", "/sto", None),
        ("shard", "/tmpfoo", None),
        ("router", "/etc", "/etc/shardrec/router"),
    ],
)
def test_mount_paths_at_under_or_above_an_operator_mount_clash(
    container: str, mount: str, clash: str | None
) -> None:
    sample = cluster()
    template = _template() if container == "shard" else router_pod_template(sample)
    override = _override(
        volumes=[{"name": "v", "emptyDir": {}}], volumeMounts=[{"name": "v", "mountPath": mount}]
    )
    errors = template_conflicts(template, override, container=container, field="f")
    assert (errors != []) == (clash is not None), errors
    if clash is not None:
        assert f"overlaps {clash}" in errors[0]


def test_builders_apply_each_kinds_template() -> None:
    sample = cluster(
        podTemplates={
            "shard": {"priorityClassName": "serving"},
            "router": {"priorityClassName": "edge"},
            "build": {"priorityClassName": "batch", "nodeSelector": {"pool": "build"}},
        }
    )
    layout = layout_of(sample)

    def pod_spec(manifest: dict[str, Any]) -> dict[str, Any]:
        spec: dict[str, Any] = manifest["spec"]["template"]["spec"]
        return spec

    assert pod_spec(build_shard_statefulset(sample, layout, 0, 2))["priorityClassName"] == "serving"
    assert pod_spec(build_router_deployment(sample))["priorityClassName"] == "edge"
    for job in (build_index_job(sample, layout, "a"), build_cleanup_job(sample)):
        assert pod_spec(job)["priorityClassName"] == "batch"
        assert pod_spec(job)["nodeSelector"] == {"pool": "build"}


def test_validation_rejects_conflicts_naming_the_field() -> None:
    sample = cluster(podTemplates={"build": {"volumes": [{"name": pods.STORE_VOLUME, "emptyDir": {}}]}})
    assert kubernetes_spec_errors(sample) == [
        "spec.podTemplates.build.volumes[index-store]: the operator's own volume; pick another name"
    ]


def test_validation_accepts_a_full_template() -> None:
    template = {
        "metadata": {"labels": {"team": "a"}},
        "nodeSelector": {"pool": "s"},
        "tolerations": [{"operator": "Exists"}],
        "zoneSpread": "Hard",
        "env": [{"name": "A", "value": "1"}],
        "volumes": [{"name": "extra", "secret": {"secretName": "s"}}],
        "volumeMounts": [{"name": "extra", "mountPath": "/etc/extra"}],
    }
    assert kubernetes_spec_errors(cluster(podTemplates={"shard": template, "router": template})) == []


# --- the restricted Pod Security Standard --------------------------------------------------------


def test_every_operator_pod_passes_the_restricted_standard() -> None:
    sample = cluster()
    layout = layout_of(sample)
    for manifest in (
        build_shard_statefulset(sample, layout, 0, 2),
        build_router_deployment(sample),
        build_index_job(sample, layout, "a"),
        build_cleanup_job(sample),
    ):
        assert restricted_violations(manifest["spec"]["template"]) == [], manifest["kind"]


def _broken(change: Any) -> list[str]:
    template = _template()
    change(template["spec"], template["spec"]["containers"][0], template)
    return restricted_violations(template)


BREAKS: list[tuple[str, Any, str]] = [
    ("host network", lambda pod, c, t: pod.update(hostNetwork=True), "spec.hostNetwork must not be true"),
    ("host PID", lambda pod, c, t: pod.update(hostPID=True), "spec.hostPID"),
    (
        "hostPath volume",
        lambda pod, c, t: pod["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
        "spec.volumes[h]: hostPath volumes are not allowed",
    ),
    (
        "privileged",
        lambda pod, c, t: c["securityContext"].update(privileged=True),
        "privileged must not be true",
    ),
    (
        "privilege escalation",
        lambda pod, c, t: c["securityContext"].pop("allowPrivilegeEscalation"),
        "allowPrivilegeEscalation must be false",
    ),
    (
        "capabilities not dropped",
        lambda pod, c, t: c["securityContext"]["capabilities"].update(drop=[]),
        "capabilities.drop must include ALL",
    ),
    (
        "capability added",
        lambda pod, c, t: c["securityContext"]["capabilities"].update(add=["SYS_ADMIN"]),
        "capabilities.add ['SYS_ADMIN']",
    ),
    (
        "root",
        lambda pod, c, t: c["securityContext"].update(runAsUser=0),
        "spec.containers[shard].securityContext.runAsUser must not be 0",
    ),
    (
        "runAsNonRoot nowhere",
        lambda pod, c, t: (
            pod["securityContext"].pop("runAsNonRoot"),
            c["securityContext"].pop("runAsNonRoot"),
        ),
        "runAsNonRoot must be true",
    ),
    (
        "unconfined seccomp",
        lambda pod, c, t: c["securityContext"].update(seccompProfile={"type": "Unconfined"}),
        "seccompProfile.type 'Unconfined'",
    ),
    (
        "no seccomp anywhere",
        lambda pod, c, t: (
            pod["securityContext"].pop("seccompProfile"),
            c["securityContext"].pop("seccompProfile"),
        ),
        "seccompProfile.type must be RuntimeDefault or Localhost",
    ),
    (
        "hostPort",
        lambda pod, c, t: c["ports"][0].update(hostPort=8080),
        "hostPort must be 0",
    ),
    (
        "unsafe sysctl",
        lambda pod, c, t: pod["securityContext"].update(sysctls=[{"name": "kernel.msgmax", "value": "1"}]),
        "kernel.msgmax] is not a safe sysctl",
    ),
    (
        "AppArmor unconfined annotation",
        lambda pod, c, t: (
            t["metadata"]
            .setdefault("annotations", {})
            .update({"container.apparmor.security.beta.kubernetes.io/shard": "unconfined"})
        ),
        "AppArmor profile 'unconfined'",
    ),
    (
        "SELinux user",
        lambda pod, c, t: pod["securityContext"].update(seLinuxOptions={"user": "root"}),
        "seLinuxOptions.user must not be set",
    ),
    (
        "an init container that breaks it",
        lambda pod, c, t: pod.update(
            initContainers=[{"name": "init", "securityContext": {"privileged": True}}]
        ),
        "spec.initContainers[init].securityContext.privileged must not be true",
    ),
]


@pytest.mark.parametrize(("what", "change", "message"), BREAKS, ids=[entry[0] for entry in BREAKS])
def test_each_restricted_control_is_checked(what: str, change: Any, message: str) -> None:
    violations = _broken(change)
    assert any(message in violation for violation in violations), (what, violations)


def test_a_localhost_apparmor_profile_and_a_safe_sysctl_are_allowed() -> None:
    def change(pod: dict[str, Any], container: dict[str, Any], template: dict[str, Any]) -> None:
        template["metadata"]["annotations"] = {
            "container.apparmor.security.beta.kubernetes.io/shard": "localhost/p"
        }
        pod["securityContext"]["sysctls"] = [{"name": "net.ipv4.tcp_keepalive_time", "value": "60"}]
        container["securityContext"]["capabilities"]["add"] = ["NET_BIND_SERVICE"]

    assert _broken(change) == []
