"""kopf handlers: decorators only. Every trigger runs the same idempotent pass (`passes.run_pass`).

- create / update / resume: a pass right away when the spec changes or the operator starts;
- a timer per cluster: ticks every SHARDREC_OPERATOR_TIMER_SECONDS and runs a pass when the cluster is due
  (the planner's requeue, a child's change, or the resync period, now a safety net);
- watches on the children that matter (`resources.WATCHED`, selected by the managed-by label):
  an event only marks its cluster due (`Runtime.wake`), so a pod dying, a build finishing or a
  `kubectl scale` is acted on at the next tick, and a burst of events costs one pass. The label
  selector is also given to the API server (`settings.watching.label_selectors`), so the
  operator is not sent every pod of the cluster;
- delete (only when `spec.deleteArtifactsOnDelete` is true): the artifact cleanup Job.

kopf settings: progress and diff-base live in annotations, so the status holds only our schema;
handler log lines become Events only from WARNING up (our Events are posted explicitly). When the
operator watches given namespaces (`memo["namespaced"]`, set by `main`), kopf's cluster scanning is
off: the chart's least-privilege RBAC forbids listing Namespaces and CustomResourceDefinitions
cluster-wide, and kopf retried each forbidden list through its whole error backoff (1+1+2+3+5+8+13+21
= 54 s) before falling back to exactly these namespaces, so the first reconcile came a minute late.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import kopf

from shardrec.api import v1alpha1 as api
from shardrec_operator.config import OperatorConfig
from shardrec_operator.desired import labels as child_labels
from shardrec_operator.passes import run_cleanup, run_pass
from shardrec_operator.reconcile import resources as kinds
from shardrec_operator.reconcile.kubernetes_api import KubernetesClusterApi, load_api_client
from shardrec_operator.runtime import Runtime

CONFIG = OperatorConfig.from_env()
ANNOTATION_PREFIX = "shardrec.io"
FINALIZER = "shardrec.io/artifact-cleanup"
CLEANUP_POLL_SECONDS = 5.0
RESOURCE = (api.GROUP, api.VERSION, api.PLURAL)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    settings.persistence.finalizer = FINALIZER
    settings.posting.level = logging.WARNING
    for group, version, plural in WATCHED_CHILDREN:  # only our children, filtered by the API server
        settings.watching.label_selectors[group, version, plural] = CHILD_SELECTOR
    # Namespaced: serve exactly the given namespaces and the resources found at startup (kopf's
    # fallback anyway), without first listing what the RBAC forbids.
    settings.scanning.disabled = bool(memo.get("namespaced", False))
    if "runtime" not in memo:  # `main()` (or a test) may have provided one already
        memo["runtime"] = Runtime(api=KubernetesClusterApi(load_api_client()), config=CONFIG)


@kopf.on.resume(*RESOURCE, backoff=CONFIG.error_backoff_seconds)
@kopf.on.create(*RESOURCE, backoff=CONFIG.error_backoff_seconds)
@kopf.on.update(*RESOURCE, backoff=CONFIG.error_backoff_seconds)
def reconcile_on_change(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, reason: str, **_: Any) -> None:
    # kopf passes a str-valued Enum (create / update / resume): its value names the trigger.
    run_pass(memo["runtime"], body, patch, trigger=str(getattr(reason, "value", reason)))


@kopf.timer(*RESOURCE, interval=CONFIG.timer_seconds, backoff=CONFIG.error_backoff_seconds)
def reconcile_on_timer(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    run_pass(memo["runtime"], body, patch, trigger="timer")


def wake_on_child_change(memo: kopf.Memo, namespace: str | None, labels: kopf.Labels, **_: Any) -> None:
    runtime = memo.get("runtime")
    cluster = labels.get(CLUSTER_LABEL)
    if runtime is not None and namespace and cluster:
        runtime.wake(namespace, cluster)


CLUSTER_LABEL = child_labels.CLUSTER
CHILD_SELECTOR = f"{child_labels.MANAGED_BY}={child_labels.MANAGER},{child_labels.CLUSTER}"
WATCHED_CHILDREN = tuple(
    (child.api_version.rpartition("/")[0], child.api_version.rpartition("/")[2], child.plural)
    for child in kinds.WATCHED
)
for _group, _version, _plural in WATCHED_CHILDREN:
    kopf.on.event(
        group=_group,
        version=_version,
        plural=_plural,
        id=f"wake-on-{_plural}",
        labels={child_labels.MANAGED_BY: child_labels.MANAGER, child_labels.CLUSTER: kopf.PRESENT},
    )(wake_on_child_change)


def _deletes_artifacts(spec: kopf.Spec, **_: Any) -> bool:
    return bool(spec.get("deleteArtifactsOnDelete", False))


@kopf.on.delete(*RESOURCE, when=_deletes_artifacts)
def delete_artifacts(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    run_cleanup(memo["runtime"], body, retry_after=CLEANUP_POLL_SECONDS)


def _timer_needs_no_finalizer(registry: kopf.OperatorRegistry) -> None:
    """kopf puts a finalizer on every object a timer watches, so it can stop the timer before
    the object goes. We want a finalizer only when artifacts must be cleaned: with one, deleting a
    cluster (or its namespace) hangs whenever the operator is down. Our timer needs no graceful
    stop, kopf cancels it when it sees the deletion. kopf has no public switch for this
    (nolar/kopf#896 and #1183 were closed unmerged), so the registered timer is replaced by a copy
    without the requirement. kopf is pinned to one exact version in pyproject.toml, and
    tests/controller/test_kopf_private_use.py fails if the private parts, or kopf's own decision
    to add a finalizer, change."""
    spawning = registry._spawning
    spawning._handlers = [
        dataclasses.replace(handler, requires_finalizer=False)
        if getattr(handler, "fn", None) is reconcile_on_timer
        else handler
        for handler in spawning._handlers
    ]


_timer_needs_no_finalizer(kopf.get_default_registry())
