"""`spec.podTemplates`: the user's overrides merged over the operator's pod template (pure).

Anchors: ECK's `podTemplate` (a PodTemplateSpec merged over the defaults) and Strimzi's
`template` (typed, a fixed set of fields). Ours is typed like Strimzi's, so the operator's
essentials have no field to be overridden by (containers, command, ports, probes, security
contexts, resources, service account, grace period), and merged like a strategic merge patch:

- metadata: labels and annotations added; one the operator sets itself is a conflict;
- nodeSelector, priorityClassName: set (the operator sets neither);
- tolerations: appended;
- affinity: each kind given (nodeAffinity, podAffinity, podAntiAffinity) replaces the default's;
- topologySpreadConstraints: the default zone spread follows `zoneSpread` (Soft: ScheduleAnyway,
  Hard: DoNotSchedule); a constraint with a default's topologyKey replaces it, others are
  appended; a constraint without a labelSelector counts this pod group (the default's selector);
- imagePullSecrets: merged by name;
- env, volumes: merged by name into the main container and the pod; a name the operator uses is a
  conflict; volumeMounts appended, and a mountPath at, under or above one of the operator's is a
  conflict.

Conflicts are not dropped silently: `template_conflicts` lists them, and the spec is rejected
with the list (`validation.kubernetes_spec_errors`, a `Ready=False/InvalidSpec` condition).
"""

from __future__ import annotations

import copy
from typing import Any

from shardrec.api import v1alpha1 as api

ZONE_SPREAD = {"Soft": "ScheduleAnyway", "Hard": "DoNotSchedule"}


def _dump(model: api.ApiModel) -> dict[str, Any]:
    document: dict[str, Any] = model.model_dump(by_alias=True, mode="json", exclude_none=True)
    return document


def _by_name(base: list[dict[str, Any]], extra: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`base` then the entries of `extra` whose name `base` does not have (base wins)."""
    names = {entry["name"] for entry in base}
    return [*base, *(entry for entry in extra if entry["name"] not in names)]


def _container(pod_spec: dict[str, Any], name: str) -> dict[str, Any]:
    for container in pod_spec["containers"]:
        if container["name"] == name:
            return dict(container)
    raise ValueError(f"the pod has no container {name!r}")


def _zone_spread(
    defaults: list[dict[str, Any]], override: api.PodTemplate, selector: dict[str, str]
) -> list[dict[str, Any]]:
    spread = [dict(entry) for entry in defaults]
    if isinstance(override, api.ServingPodTemplate):
        for entry in spread:
            entry["whenUnsatisfiable"] = ZONE_SPREAD[override.zone_spread]
    for constraint in override.topology_spread_constraints:
        wanted = _dump(constraint)
        wanted.setdefault("labelSelector", {"matchLabels": dict(selector)})
        spread = [entry for entry in spread if entry["topologyKey"] != wanted["topologyKey"]]
        spread.append(wanted)
    return spread


def merge_pod_template(
    template: dict[str, Any],
    override: api.PodTemplate | None,
    *,
    container: str,
    selector: dict[str, str],
) -> dict[str, Any]:
    """`template` (a PodTemplateSpec: metadata + spec) with `override` merged over it, as a new
    dict. `container` names the main container (env and volumeMounts go there) and `selector`
    the pod group (the default labelSelector of a spread constraint). Operator entries win
    where the two collide; `template_conflicts` reports those collisions."""
    if override is None:
        return copy.deepcopy(template)
    merged = copy.deepcopy(template)
    metadata = merged.setdefault("metadata", {})
    spec = merged["spec"]
    for key in ("labels", "annotations"):
        extra = getattr(override.metadata, key)
        if extra:
            metadata[key] = {**extra, **metadata.get(key, {})}
    if override.node_selector:
        spec["nodeSelector"] = {**override.node_selector, **spec.get("nodeSelector", {})}
    if override.tolerations:
        spec["tolerations"] = [*spec.get("tolerations", []), *map(_dump, override.tolerations)]
    if override.affinity is not None:
        spec["affinity"] = {**spec.get("affinity", {}), **_dump(override.affinity)}
    spread = _zone_spread(spec.get("topologySpreadConstraints", []), override, selector)
    if spread:
        spec["topologySpreadConstraints"] = spread
    if override.priority_class_name is not None:
        spec["priorityClassName"] = override.priority_class_name
    if override.image_pull_secrets:
        pulls = [_dump(entry) for entry in override.image_pull_secrets]
        spec["imagePullSecrets"] = _by_name(spec.get("imagePullSecrets", []), pulls)
    if override.volumes:
        spec["volumes"] = _by_name(spec.get("volumes", []), [_dump(entry) for entry in override.volumes])
    main = _container(spec, container)
    if override.env:
        main["env"] = _by_name(main.get("env", []), [_dump(entry) for entry in override.env])
    if override.volume_mounts:
        main["volumeMounts"] = [*main.get("volumeMounts", []), *map(_dump, override.volume_mounts)]
    spec["containers"] = [main if entry["name"] == container else entry for entry in spec["containers"]]
    return merged


def _overlaps(path: str, other: str) -> bool:
    a, b = path.rstrip("/") + "/", other.rstrip("/") + "/"
    return a.startswith(b) or b.startswith(a)


def template_conflicts(
    template: dict[str, Any], override: api.PodTemplate | None, *, container: str, field: str
) -> list[str]:
    """What `override` tries to set that the operator's `template` owns, one message each, naming
    the field (`field` is the override's path, e.g. spec.podTemplates.shard)."""
    if override is None:
        return []
    errors: list[str] = []
    metadata = template.get("metadata", {})
    spec = template["spec"]
    main = _container(spec, container)
    for key in ("labels", "annotations"):
        for name in sorted(set(getattr(override.metadata, key)) & set(metadata.get(key, {}))):
            errors.append(f"{field}.metadata.{key}[{name}]: set by the operator; it cannot be overridden")
    env = {entry["name"] for entry in main.get("env", [])}
    for entry in override.env:
        if entry.name in env:
            errors.append(f"{field}.env[{entry.name}]: set by the operator; it cannot be overridden")
    volumes = {entry["name"] for entry in spec.get("volumes", [])}
    names = [entry.name for entry in override.volumes]
    for name in sorted({name for name in names if name in volumes}):
        errors.append(f"{field}.volumes[{name}]: the operator's own volume; pick another name")
    for name in sorted({name for name in names if names.count(name) > 1}):
        errors.append(f"{field}.volumes[{name}]: given more than once")
    mounts = [entry["mountPath"] for entry in main.get("volumeMounts", [])]
    seen: list[str] = []
    for mount in override.volume_mounts:
        clash = next((path for path in [*mounts, *seen] if _overlaps(mount.mount_path, path)), None)
        if clash is not None:
            errors.append(
                f"{field}.volumeMounts[{mount.name}]: mountPath {mount.mount_path} overlaps {clash}, "
                "mounted already"
            )
        seen.append(mount.mount_path)
    return errors
