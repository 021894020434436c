"""The edge between kopf and `reconcile_cluster`: locking, errors, status, Events, metrics.

Handlers call `run_pass` (and the deletion handler `run_cleanup`) and nothing else. Error policy:
- an invalid spec writes `Ready=False, reason=InvalidSpec` and becomes `kopf.PermanentError`
  from change handlers (retrying cannot fix it; the next spec change triggers a new pass) and
  a quiet no-op from the timer, which would otherwise stop for good;
- an API conflict (409) becomes a short `kopf.TemporaryError`;
- an object with a child's name that we do not control gets a Warning Event and a slow retry;
- anything else propagates, and kopf retries with its backoff.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import kopf

from shardrec.planning import RecordEvent
from shardrec_operator.reconcile.apply import ForeignObjectError
from shardrec_operator.reconcile.cleanup import clean_artifacts
from shardrec_operator.reconcile.cluster_api import ConflictError
from shardrec_operator.reconcile.driver import changed_status, reconcile_cluster
from shardrec_operator.reconcile.loading import InvalidSpecError, invalid_spec_status, load_cluster
from shardrec_operator.reconcile.observe import previous_status
from shardrec_operator.runtime import Runtime

log = logging.getLogger(__name__)

PostEvent = Callable[[Mapping[str, Any], RecordEvent], None]
FOREIGN_OBJECT_RETRY_SECONDS = 60.0


def post_kopf_event(body: Mapping[str, Any], event: RecordEvent) -> None:
    kopf.event(body, type=event.type, reason=event.reason, message=event.message)  # type: ignore[arg-type]


def _write_status(runtime: Runtime, patch: dict[str, Any], document: dict[str, Any] | None) -> None:
    """Put the new status into kopf's patch: one write, after the handler, or none at all."""
    if document is not None:
        patch.setdefault("status", {}).update(document)
        runtime.metrics.status_writes.inc()


def run_pass(
    runtime: Runtime,
    body: Mapping[str, Any],
    patch: dict[str, Any],
    *,
    trigger: str,
    post_event: PostEvent = post_kopf_event,
    now: datetime | None = None,
) -> None:
    """One reconcile of `body`; the timer's ticks skip clusters that are not due or busy."""
    meta = body.get("metadata") or {}
    uid = str(meta.get("uid", ""))
    runtime.clusters.remember(str(meta.get("namespace", "")), str(meta.get("name", "")), uid)
    timer = trigger == "timer"
    if timer and not runtime.schedule.is_due(uid):
        return
    with runtime.locks.hold(uid, blocking=not timer) as taken:
        if taken:
            _locked_pass(runtime, body, patch, trigger=trigger, post_event=post_event, now=now)


def _invalid_pass(
    runtime: Runtime,
    body: Mapping[str, Any],
    patch: dict[str, Any],
    error: InvalidSpecError,
    *,
    raise_permanent: bool,
    now: datetime,
) -> None:
    meta = body.get("metadata") or {}
    raw_status = dict(body.get("status") or {}) or None
    generation = int(meta.get("generation", 0))
    status = invalid_spec_status(previous_status(raw_status), error, generation, now)
    _write_status(runtime, patch, changed_status(status, raw_status))
    runtime.metrics.record_phase(str(meta.get("namespace", "")), str(meta.get("name", "")), status.phase)
    runtime.schedule.passed(str(meta.get("uid", "")), None)
    if raise_permanent:
        raise kopf.PermanentError(f"invalid spec: {error}") from error


def _locked_pass(
    runtime: Runtime,
    body: Mapping[str, Any],
    patch: dict[str, Any],
    *,
    trigger: str,
    post_event: PostEvent,
    now: datetime | None,
) -> None:
    meta = body.get("metadata") or {}
    uid = str(meta.get("uid", ""))
    raw_status = dict(body.get("status") or {}) or None
    now = now or datetime.now(UTC)
    started = time.monotonic()
    outcome = "error"
    try:
        try:
            cluster = load_cluster(body)
        except InvalidSpecError as error:
            outcome = "invalid"
            _invalid_pass(runtime, body, patch, error, raise_permanent=trigger != "timer", now=now)
            return
        try:
            result = reconcile_cluster(
                runtime.api,
                cluster,
                raw_status,
                now,
                runtime.expectations,
                failover_limits=runtime.config.failover,
            )
        except ConflictError as error:
            outcome = "conflict"
            delay = runtime.config.conflict_retry_seconds
            raise kopf.TemporaryError(f"API conflict, retrying: {error}", delay=delay) from error
        except ForeignObjectError as error:
            post_event(body, RecordEvent("Warning", "ObjectNotOwned", str(error)))
            raise kopf.TemporaryError(str(error), delay=FOREIGN_OBJECT_RETRY_SECONDS) from error
        outcome = "ok"
        _write_status(runtime, patch, result.status)
        for event in result.events:
            post_event(body, event)
        runtime.metrics.writes.inc(result.writes)
        runtime.metrics.drift_corrections.inc(result.drift_corrections)
        runtime.metrics.record_phase(cluster.metadata.namespace, cluster.metadata.name, result.phase)
        runtime.metrics.record_cluster(
            cluster.metadata.namespace,
            cluster.metadata.name,
            cluster.spec,
            result.full_status,
            router_ready_replicas=result.router_ready_replicas,
        )
        runtime.schedule.passed(uid, result.requeue_after_seconds)
        if result.waiting_reason:
            log.info("Reconciled %s (%s): %s", cluster.metadata.name, result.phase, result.waiting_reason)
    finally:
        runtime.metrics.reconciles.labels(trigger, outcome).inc()
        runtime.metrics.duration.labels(trigger).observe(time.monotonic() - started)


def run_cleanup(
    runtime: Runtime,
    body: Mapping[str, Any],
    *,
    retry_after: float,
    post_event: PostEvent = post_kopf_event,
) -> None:
    """The deletion step of a cluster with `deleteArtifactsOnDelete`: returns when the finalizer
    may go, raises `kopf.TemporaryError` while the cleanup Job runs."""
    try:
        cluster = load_cluster(body)
    except InvalidSpecError as error:
        post_event(body, RecordEvent("Warning", "ArtifactCleanupSkipped", f"invalid spec: {error}"))
        return
    state, message = clean_artifacts(runtime.api, cluster, previous_status(dict(body.get("status") or {})))
    if state == "running":
        raise kopf.TemporaryError(message, delay=retry_after)
    if state == "done":
        post_event(body, RecordEvent("Normal", "ArtifactsDeleted", message))
    else:
        post_event(body, RecordEvent("Warning", "ArtifactCleanupFailed", message))
    runtime.expectations.forget(cluster.metadata.uid)
    runtime.schedule.forget(cluster.metadata.uid)
    runtime.clusters.forget(cluster.metadata.namespace, cluster.metadata.name)
    runtime.metrics.forget_cluster(cluster.metadata.namespace, cluster.metadata.name)
