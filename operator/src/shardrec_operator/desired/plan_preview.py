"""`status.planPreview`: what applying the spec would do, written while the cluster is frozen.

While `spec.paused` is true, or the `shardrec.io/paused` or `shardrec.io/plan-preview` annotation
is "true" (`reconcile.loading` turns both into a paused spec, so nothing disruptive runs), every
pass writes the preview `recctl plan` prints (`shardrec.planning.preview`, one renderer) into the
status. The current state is the stored status, the efSearch of the stored topology and the
router Deployment's replicas; the
operator knows neither the item count nor the measured rates, so resident memory and duration are
left to `recctl plan --items N` (the preview says so). Pure.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Final

from shardrec.api import v1alpha1 as api
from shardrec.planning.preview import deployed_from_status, preview
from shardrec.planning.preview_format import to_status

PLAN_PREVIEW_ANNOTATION: Final = "shardrec.io/plan-preview"
"""`kubectl annotate recc NAME shardrec.io/plan-preview=true`: a dry run. The cluster is frozen as
by `spec.paused` and `status.planPreview` says what the spec would do once the annotation goes."""


FREEZE_ANNOTATIONS: Final = ("shardrec.io/paused", PLAN_PREVIEW_ANNOTATION)


def annotated_freeze(cluster: api.RecommenderCluster) -> str | None:
    """The annotation that freezes the cluster (`reconcile.loading` made its spec paused), if any."""
    annotations = (cluster.metadata.model_extra or {}).get("annotations") or {}
    return next((name for name in FREEZE_ANNOTATIONS if annotations.get(name) == "true"), None)


def frozen_by(cluster: api.RecommenderCluster) -> str:
    """What the preview tells the user to lift for the change to happen."""
    annotation = annotated_freeze(cluster)
    if annotation is None:
        return "spec.paused is true: nothing of this happens until it is false"
    return f'dry run ({annotation}: "true"): nothing of this happens until the annotation is removed'


def plan_preview_status(
    cluster: api.RecommenderCluster,
    previous: api.RecommenderClusterStatus,
    *,
    live_ef_search: int | None,
    router_replicas: int | None,
    serving_logs_writes: bool | None = None,
) -> api.PlanPreviewStatus:
    """The preview of `cluster.spec` over what `previous` (the stored status) says runs;
    `serving_logs_writes`: whether the serving layout keeps write logs (its observed LayoutSpec):
    the operator carries them into a new layout through a carrier, and back into a kept one."""
    spec = cluster.spec.model_copy(update={"paused": False})
    deployed = deployed_from_status(previous, None, live_ef_search, router_replicas)
    plan = preview(
        cluster.metadata.name, spec, deployed, runs_carriers=True, serving_logs_writes=serving_logs_writes
    )
    plan = replace(plan, notes=(*plan.notes, frozen_by(cluster)))
    return to_status(plan, cluster.metadata.generation)
