"""`reconcile_cluster`: one idempotent pass, the only thing the kopf handlers call.

    1. observe   list the children, read the stored topology -> planner's `Observed`
    2. plan      `shardrec.planning.plan` (pure): actions, new status, requeue
    3. execute   cluster-wide objects, then the actions in order (each apply also corrects
                 drift of an unchanged manifest), then the topology, then failover. Paused:
                 no cluster-wide objects, no topology, only the actions the planner still
                 allows; failover goes on unless `spec.failover.whilePaused` is false; the
                 status carries `planPreview`, what the spec would do once unpaused
    4. report    the new status (None when unchanged, so nothing is written) with the
                 FailoverDegraded condition, the Events, when to come back, and how many
                 writes the pass made

Nothing is remembered between passes except the expectations (see `expectations`): the
state machine lives in `.status`, so a restarted operator resumes where the last one stopped.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shardrec.api import v1alpha1 as api
from shardrec.planning import Observed, RecordEvent, plan
from shardrec.planning.fleet import with_topology_written
from shardrec_operator.desired import labels, names
from shardrec_operator.desired.plan_preview import plan_preview_status
from shardrec_operator.reconcile import resources as kinds
from shardrec_operator.reconcile.cluster_api import ClusterApi, Obj
from shardrec_operator.reconcile.execute import (
    apply_cluster_objects,
    ensure_shard_tls,
    ensure_shard_token,
    execute_action,
)
from shardrec_operator.reconcile.expectations import Expectations
from shardrec_operator.reconcile.failover import PAUSED_REPORT, FailoverLimits, with_failover_condition
from shardrec_operator.reconcile.lost_pods import force_delete_lost_pods
from shardrec_operator.reconcile.observe import (
    Children,
    list_children,
    observe,
    previous_status,
    stored_topology,
)
from shardrec_operator.reconcile.publish_topology import sync_topology
from shardrec_operator.reconcile.session import Session


@dataclass(frozen=True)
class ReconcileResult:
    """What a pass decided and did."""

    status: dict[str, Any] | None
    """The complete new `.status` in wire form, or None when it equals the stored one."""
    events: tuple[RecordEvent, ...]
    requeue_after_seconds: float | None
    waiting_reason: str
    writes: int
    """Applies and deletes sent to the API (0 for a pass with nothing to change)."""
    drift_corrections: int
    """Applies of an unchanged manifest whose object had drifted (fields changed by hand)."""
    phase: str
    full_status: api.RecommenderClusterStatus
    """The status this pass computed, whether or not it had to be written (for metrics)."""
    router_ready_replicas: int


def status_document(status: api.RecommenderClusterStatus) -> dict[str, Any]:
    document: dict[str, Any] = status.model_dump(by_alias=True, mode="json")
    return document


def changed_status(new: api.RecommenderClusterStatus, raw: Obj | None) -> dict[str, Any] | None:
    """The status to write, or None when the stored one already says exactly this."""
    document = status_document(new)
    return None if raw is not None and status_document(previous_status(raw)) == document else document


def reconcile_cluster(
    api_client: ClusterApi,
    cluster: api.RecommenderCluster,
    raw_status: Obj | None,
    now: datetime,
    expectations: Expectations,
    *,
    failover_limits: FailoverLimits | None = None,
) -> ReconcileResult:
    children = list_children(api_client, cluster)
    observed = observe(cluster, children, raw_status, now, expectations)
    the_plan = plan(cluster.metadata.name, cluster.spec, observed)
    session = Session(api_client, cluster, children, expectations, now)
    paused = cluster.spec.paused
    # The token first, even paused: pods that exist or start mount it (a paused rotation still
    # completes, which only ever narrows what is accepted).
    token_recheck = _sooner(ensure_shard_token(session), ensure_shard_tls(session))
    if not paused:
        apply_cluster_objects(session)
    for action in the_plan.actions:
        execute_action(session, action)
    status = the_plan.status
    status = status.model_copy(
        update={"selector": labels.serving_shard_selector(cluster.metadata.name, status.active_layout)}
    )
    if not paused:
        previous = observed.previous_status
        floor = (previous.topology_epoch, previous.topology_revision) if previous.topology_revision else None
        written = sync_topology(session, the_plan, floor)
        if written is not None:
            status = with_topology_written(status, written)
    if paused:
        status = status.model_copy(
            update={
                "plan_preview": plan_preview_status(
                    cluster,
                    observed.previous_status,
                    live_ef_search=live_ef_search(children, cluster),
                    router_replicas=router_replicas(children, cluster.metadata.name),
                    serving_logs_writes=_serving_logs_writes(observed),
                )
            }
        )
    if paused and not cluster.spec.failover.while_paused:
        failover = PAUSED_REPORT
    else:
        failover = force_delete_lost_pods(
            session, failover_limits or FailoverLimits(), observed.previous_status
        )
    status = with_failover_condition(status, failover, observed.previous_status, now)
    planned_events = tuple(action for action in the_plan.actions if isinstance(action, RecordEvent))
    return ReconcileResult(
        status=changed_status(status, raw_status),
        events=planned_events + tuple(session.events),
        requeue_after_seconds=_sooner(
            _sooner(the_plan.requeue_after_seconds, failover.recheck_after_seconds), token_recheck
        ),
        waiting_reason=the_plan.waiting_reason,
        writes=session.writes,
        drift_corrections=session.drift_corrections,
        phase=the_plan.status.phase,
        full_status=status,
        router_ready_replicas=router_ready_replicas(children, cluster.metadata.name),
    )


def _sooner(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def live_ef_search(children: Children, cluster: api.RecommenderCluster) -> int | None:
    """The efSearch the routers send now: the active layout's in the stored topology."""
    stored = stored_topology(children, cluster.metadata.name)
    return stored.active.ef_search if stored is not None and stored.active is not None else None


def router_replicas(children: Children, cluster_name: str) -> int | None:
    """Replicas the router Deployment asks for (its controller's count under an autoscaler);
    None without a Deployment."""
    deployment = children.get(kinds.DEPLOYMENT, names.router(cluster_name))
    if deployment is None:
        return None
    spec_replicas = (deployment.get("spec") or {}).get("replicas")
    return int(
        spec_replicas if spec_replicas is not None else (deployment.get("status") or {}).get("replicas") or 0
    )


def router_ready_replicas(children: Children, cluster_name: str) -> int:
    """Ready pods of the router Deployment, as its controller reports them."""
    deployment = children.get(kinds.DEPLOYMENT, names.router(cluster_name))
    if deployment is None:
        return 0
    return int((deployment.get("status") or {}).get("readyReplicas") or 0)


def _serving_logs_writes(observed: Observed) -> bool | None:
    """Whether the layout the routers serve keeps write logs (its StatefulSets' LayoutSpec); None
    while nothing serves or its workloads are not seen."""
    serving = observed.layout(observed.router.confirmed_layout)
    return serving.spec.write_log if serving is not None else None
