"""The operator's own Prometheus metrics, in a registry of their own.

shardrec_operator_reconciles_total{trigger, outcome}    passes by trigger (create, update,
                                                        resume, timer) and outcome (ok,
                                                        invalid, conflict, error)
shardrec_operator_reconcile_duration_seconds{trigger}   how long passes take
shardrec_operator_api_writes_total                      applies + deletes sent to the API
shardrec_operator_drift_corrections_total               re-applies of children whose owned fields
                                                        were changed outside the operator
shardrec_operator_cluster_phase{namespace, cluster, phase}  1 for each cluster's current
                                                        phase, 0 for the others
Per cluster (labels namespace, cluster), for the alert rules in monitoring/alerts.yaml:
shardrec_operator_cluster_shard_ready_replicas{shard}   ready replicas of each serving shard
shardrec_operator_cluster_shard_replicas{shard}         replicas the spec asks for
shardrec_operator_cluster_router_ready_replicas         ready router pods
shardrec_operator_cluster_routers_lagging               ready routers not serving the layout last
                                                        switched to (status.routers.lagging)
shardrec_operator_cluster_rollout_start_time_seconds    when the layout being rolled out was
                                                        planned (Unix time; 0 when none)
shardrec_operator_cluster_rollout_timeout_seconds       spec.rollout.timeoutSeconds
shardrec_operator_cluster_layouts{state}                layouts per state
shardrec_operator_cluster_target_version_info{version}  1 for spec.index.version
shardrec_operator_cluster_failover_degraded{reason}     1 while the FailoverDegraded condition is
                                                        True (reason NodeAccessDenied,
                                                        AllNodesNotReady, UnhealthyZone,
                                                        RateLimited, Paused); no series otherwise
"""

from __future__ import annotations

import contextlib
from typing import Final, get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from shardrec.api.v1alpha1 import (
    LayoutState,
    Phase,
    RecommenderClusterSpec,
    RecommenderClusterStatus,
)
from shardrec.planning import parse_time

PHASES: Final = get_args(Phase)
LAYOUT_STATES: Final = get_args(LayoutState)
_IN_ROLLOUT: Final = frozenset({"Building", "Starting", "Ready"})


CANARY_MEASURES = (
    "overlap_at10",
    "rank_correlation",
    "score_shift",
    "candidate_p99_ms",
    "active_p99_ms",
    "candidate_error_rate",
    "active_error_rate",
    "unknown_user_share",
    "requests",
)


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.reconciles = Counter(
            "shardrec_operator_reconciles",
            "Reconcile passes by trigger and outcome.",
            ["trigger", "outcome"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "shardrec_operator_reconcile_duration_seconds",
            "Duration of reconcile passes.",
            ["trigger"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.writes = Counter(
            "shardrec_operator_api_writes",
            "Applies and deletes the operator sent to the Kubernetes API.",
            registry=self.registry,
        )
        self.drift_corrections = Counter(
            "shardrec_operator_drift_corrections",
            "Re-applies of children whose owned fields were changed outside the operator.",
            registry=self.registry,
        )
        self.status_writes = Counter(
            "shardrec_operator_status_writes",
            "Status patches of RecommenderClusters (written only when the status changed).",
            registry=self.registry,
        )
        self.phase = Gauge(
            "shardrec_operator_cluster_phase",
            "1 for the current rollout phase of each RecommenderCluster, 0 for the other phases.",
            ["namespace", "cluster", "phase"],
            registry=self.registry,
        )

        cluster = ["namespace", "cluster"]
        self.shard_ready = Gauge(
            "shardrec_operator_cluster_shard_ready_replicas",
            "Ready replicas of each shard of the serving layout.",
            [*cluster, "shard"],
            registry=self.registry,
        )
        self.shard_desired = Gauge(
            "shardrec_operator_cluster_shard_replicas",
            "Replicas each shard of the serving layout should have (spec.replicasPerShard).",
            [*cluster, "shard"],
            registry=self.registry,
        )
        self.router_ready = Gauge(
            "shardrec_operator_cluster_router_ready_replicas",
            "Ready router pods.",
            cluster,
            registry=self.registry,
        )
        self.routers_lagging = Gauge(
            "shardrec_operator_cluster_routers_lagging",
            "Ready routers that do not serve the layout the topology last switched to.",
            cluster,
            registry=self.registry,
        )
        self.rollout_start = Gauge(
            "shardrec_operator_cluster_rollout_start_time_seconds",
            "Unix time the layout being rolled out was planned; 0 when no rollout is in progress.",
            cluster,
            registry=self.registry,
        )
        self.rollout_timeout = Gauge(
            "shardrec_operator_cluster_rollout_timeout_seconds",
            "spec.rollout.timeoutSeconds of the cluster.",
            cluster,
            registry=self.registry,
        )
        self.layouts = Gauge(
            "shardrec_operator_cluster_layouts",
            "Layouts of the cluster by state.",
            [*cluster, "state"],
            registry=self.registry,
        )
        self.target_version = Gauge(
            "shardrec_operator_cluster_target_version_info",
            "1 for the index version the spec asks for.",
            [*cluster, "version"],
            registry=self.registry,
        )
        self.failover_degraded = Gauge(
            "shardrec_operator_cluster_failover_degraded",
            "1 while something keeps failover from acting (the FailoverDegraded condition), by reason.",
            [*cluster, "reason"],
            registry=self.registry,
        )
        self.canary_step = Gauge(
            "shardrec_operator_cluster_canary_step",
            "Step (0-based) of the cluster's canary (rollout.strategy Canary), by candidate layout and "
            "phase (Running, Promoted, RolledBack, Aborted); absent without a canary.",
            [*cluster, "layout", "phase"],
            registry=self.registry,
        )
        self.canary_analysis = Gauge(
            "shardrec_operator_cluster_canary_analysis",
            "The canary step's measurements summed over the routers (status.canary.analysis), by measure: "
            "overlap_at10, rank_correlation, score_shift, candidate_p99_ms, active_p99_ms, "
            "candidate_error_rate, active_error_rate, unknown_user_share, requests.",
            [*cluster, "layout", "measure"],
            registry=self.registry,
        )
        self.canary_rolled_back = Gauge(
            "shardrec_operator_cluster_canary_rolled_back",
            "1 while the target layout's canary was rolled back by its analysis or aborted (the "
            "CanaryRolledBack condition), by reason (AnalysisFailed, Aborted).",
            [*cluster, "reason"],
            registry=self.registry,
        )
        self._per_cluster = (
            self.canary_step,
            self.canary_analysis,
            self.canary_rolled_back,
            self.failover_degraded,
            self.shard_ready,
            self.shard_desired,
            self.router_ready,
            self.routers_lagging,
            self.rollout_start,
            self.rollout_timeout,
            self.layouts,
            self.target_version,
        )

    def record_cluster(
        self,
        namespace: str,
        cluster: str,
        spec: RecommenderClusterSpec,
        status: RecommenderClusterStatus,
        *,
        router_ready_replicas: int,
    ) -> None:
        """Refresh every per-cluster gauge from one pass's spec and status."""
        self._drop_cluster_series(namespace, cluster)
        for shard in status.shards:
            self.shard_ready.labels(namespace, cluster, str(shard.shard)).set(shard.ready_replicas)
            self.shard_desired.labels(namespace, cluster, str(shard.shard)).set(spec.replicas_per_shard)
        self.router_ready.labels(namespace, cluster).set(router_ready_replicas)
        self.routers_lagging.labels(namespace, cluster).set(len(status.routers.lagging))
        rolling = [layout for layout in status.layouts if layout.state in _IN_ROLLOUT]
        started = min((parse_time(layout.created_at).timestamp() for layout in rolling), default=0.0)
        self.rollout_start.labels(namespace, cluster).set(started)
        self.rollout_timeout.labels(namespace, cluster).set(spec.rollout.timeout_seconds)
        for state in LAYOUT_STATES:
            count = sum(1 for layout in status.layouts if layout.state == state)
            self.layouts.labels(namespace, cluster, state).set(count)
        self.target_version.labels(namespace, cluster, spec.index.version).set(1)
        for condition in status.conditions:
            if condition.type == "FailoverDegraded" and condition.status == "True":
                self.failover_degraded.labels(namespace, cluster, condition.reason).set(1)
            if condition.type == "CanaryRolledBack" and condition.status == "True":
                self.canary_rolled_back.labels(namespace, cluster, condition.reason).set(1)
        canary = status.canary
        if canary is not None:
            self.canary_step.labels(namespace, cluster, canary.layout, canary.phase).set(canary.step)
            analysis = canary.analysis.model_dump() if canary.analysis is not None else {}
            for measure in CANARY_MEASURES:
                value = analysis.get(measure)
                if isinstance(value, int | float):
                    self.canary_analysis.labels(namespace, cluster, canary.layout, measure).set(value)

    def _drop_cluster_series(self, namespace: str, cluster: str) -> None:
        """Remove a cluster's series, so a gone shard or an old version leaves no stale value."""
        for gauge in self._per_cluster:
            for metric in gauge.collect():
                for sample in metric.samples:
                    labels = sample.labels
                    if labels.get("namespace") != namespace or labels.get("cluster") != cluster:
                        continue
                    with contextlib.suppress(KeyError):
                        gauge.remove(*labels.values())

    def record_phase(self, namespace: str, cluster: str, phase: str) -> None:
        for candidate in PHASES:
            self.phase.labels(namespace, cluster, candidate).set(1.0 if candidate == phase else 0.0)

    def forget_cluster(self, namespace: str, cluster: str) -> None:
        self._drop_cluster_series(namespace, cluster)
        for candidate in PHASES:
            try:
                self.phase.remove(namespace, cluster, candidate)
            except KeyError:
                continue
