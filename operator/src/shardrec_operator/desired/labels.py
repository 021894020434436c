"""The labels every child carries, and the selectors built from them.

Recommended `app.kubernetes.io/*` labels for humans and tools, plus `shardrec.io/*` labels the
operator selects on: the observer lists children by `cluster` + `managed-by`, and a layout is
deleted by its `layout` label. Selector labels are a stable subset (a StatefulSet selector is
immutable), so nothing that may change, such as the index version, is part of a selector.
"""

from __future__ import annotations

from typing import Final, Literal

from shardrec.planning import LayoutSpec

NAME: Final = "app.kubernetes.io/name"
INSTANCE: Final = "app.kubernetes.io/instance"
COMPONENT: Final = "app.kubernetes.io/component"
PART_OF: Final = "app.kubernetes.io/part-of"
MANAGED_BY: Final = "app.kubernetes.io/managed-by"
CLUSTER: Final = "shardrec.io/cluster"
LAYOUT: Final = "shardrec.io/layout"
SHARD: Final = "shardrec.io/shard"
INDEX_VERSION: Final = "shardrec.io/index-version"

LAYOUT_SPEC_ANNOTATION: Final = "shardrec.io/layout-spec"
"""`LayoutSpec.canonical_json()` of the layout an object belongs to: the observer reads it back."""
BUILD_ATTEMPT_ANNOTATION: Final = "shardrec.io/build-attempt"
"""The `EnsureBuild.attempt` token a build Job was created for."""
CARRY_FROM_ANNOTATION: Final = "shardrec.io/carry-from-layout"
"""On a carrier Deployment: the layout whose logged writes it carries (the observer reads it back)."""
CARRY_BACK_ANNOTATION: Final = "shardrec.io/carry-back"
"""On a carrier Deployment of a carry back (a rollback into a kept layout): "true" (absent on a
forward carrier; the observer reads it back, `ObservedCarrier.back`)."""

APP: Final = "shardrec"
MANAGER: Final = "shardrec-operator"

Component = Literal["shard", "router", "index-build", "cleanup", "artifact-gc", "carrier"]


def cluster_labels(cluster: str) -> dict[str, str]:
    """Labels of every child of one RecommenderCluster."""
    value = cluster
    return {
        NAME: APP,
        INSTANCE: value,
        PART_OF: APP,
        MANAGED_BY: MANAGER,
        CLUSTER: value,
    }


def component_labels(cluster: str, component: Component) -> dict[str, str]:
    return {**cluster_labels(cluster), COMPONENT: component}


def layout_labels(cluster: str, component: Component, layout: LayoutSpec) -> dict[str, str]:
    return {
        **component_labels(cluster, component),
        LAYOUT: layout.id,
        INDEX_VERSION: layout.version,
    }


def artifact_gc_labels(cluster: str, layout_id: str, version: str) -> dict[str, str]:
    """Labels of the Job that deletes one layout's artifacts (found by `layout` when observed)."""
    return {**component_labels(cluster, "artifact-gc"), LAYOUT: layout_id, INDEX_VERSION: version}


def layout_annotations(layout: LayoutSpec) -> dict[str, str]:
    return {LAYOUT_SPEC_ANNOTATION: layout.canonical_json()}


def shard_selector(cluster: str, layout_id: str, shard: int) -> dict[str, str]:
    """Selects the pods of one shard of one layout (StatefulSet, Service, PDB, anti-affinity)."""
    return {
        CLUSTER: cluster,
        COMPONENT: "shard",
        LAYOUT: layout_id,
        SHARD: str(shard),
    }


def shard_labels(cluster: str, layout: LayoutSpec, shard: int) -> dict[str, str]:
    return {**layout_labels(cluster, "shard", layout), SHARD: str(shard)}


def component_selector(cluster: str, component: Component) -> dict[str, str]:
    """Selects every pod of one component of a cluster (router pods, all shard pods)."""
    return {CLUSTER: cluster, COMPONENT: component}


def owned_selector(cluster: str) -> str:
    """Label selector (query syntax) that finds every child of a cluster."""
    return f"{CLUSTER}={cluster},{MANAGED_BY}={MANAGER}"


def serving_shard_selector(cluster: str, layout_id: str) -> str:
    """`status.selector`: the serving layout's shard pods (every shard pod of the cluster while no
    layout serves), in label-query form, for the scale subresource and HorizontalPodAutoscalers."""
    selector = component_selector(cluster, "shard")
    if layout_id:
        selector[LAYOUT] = layout_id
    return ",".join(f"{key}={value}" for key, value in sorted(selector.items()))
