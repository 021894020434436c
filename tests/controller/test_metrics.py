"""The per-cluster gauges the alert rules read (monitoring/alerts.yaml): shard readiness against
the spec, router readiness, rollout start and timeout, layouts by state, the target version."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from shardrec.api import v1alpha1 as api
from shardrec_operator.metrics import OperatorMetrics

NOW = "2026-11-23T12:00:00Z"


def _spec(version: str = "v2") -> api.RecommenderClusterSpec:
    return api.RecommenderClusterSpec.model_validate(
        {
            "shards": 2,
            "replicasPerShard": 3,
            "index": {"version": version, "source": "/d", "dimension": 8},
            "rollout": {"timeoutSeconds": 600},
        }
    )


def _status(rolling: bool) -> api.RecommenderClusterStatus:
    layouts = [
        api.LayoutStatus(
            name="aaa", version="v1", shards=2, state="Serving", created_at=NOW, state_since=NOW
        ),
        api.LayoutStatus(
            name="bbb",
            version="v2",
            shards=2,
            state="Starting",
            created_at=NOW,
            state_since="2026-11-23T12:05:00Z",
        ),
    ]
    return api.RecommenderClusterStatus(
        phase="Rolling" if rolling else "Ready",
        layouts=layouts if rolling else layouts[:1],
        shards=[
            api.ShardStatus(shard=0, ready_replicas=3, replicas=3),
            api.ShardStatus(shard=1, ready_replicas=0, replicas=3),
        ],
    )


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, {"namespace": "ns", "cluster": "c", **labels})


def test_cluster_gauges_follow_spec_and_status() -> None:
    metrics = OperatorMetrics(CollectorRegistry())
    metrics.record_cluster("ns", "c", _spec(), _status(rolling=True), router_ready_replicas=2)
    registry = metrics.registry
    assert _value(registry, "shardrec_operator_cluster_shard_ready_replicas", shard="0") == 3
    assert _value(registry, "shardrec_operator_cluster_shard_ready_replicas", shard="1") == 0
    assert _value(registry, "shardrec_operator_cluster_shard_replicas", shard="1") == 3
    assert _value(registry, "shardrec_operator_cluster_router_ready_replicas") == 2
    assert _value(registry, "shardrec_operator_cluster_rollout_timeout_seconds") == 600
    # the rollout started when the oldest layout that is not serving yet was created
    assert _value(registry, "shardrec_operator_cluster_rollout_start_time_seconds") == 1795435200.0
    assert _value(registry, "shardrec_operator_cluster_layouts", state="Starting") == 1
    assert _value(registry, "shardrec_operator_cluster_layouts", state="Failed") == 0
    assert _value(registry, "shardrec_operator_cluster_target_version_info", version="v2") == 1


def test_settled_cluster_has_no_rollout_and_a_version_change_drops_the_old_series() -> None:
    metrics = OperatorMetrics(CollectorRegistry())
    metrics.record_cluster("ns", "c", _spec("v2"), _status(rolling=True), router_ready_replicas=2)
    metrics.record_cluster("ns", "c", _spec("v3"), _status(rolling=False), router_ready_replicas=2)
    registry = metrics.registry
    assert _value(registry, "shardrec_operator_cluster_rollout_start_time_seconds") == 0
    assert _value(registry, "shardrec_operator_cluster_target_version_info", version="v2") is None
    assert _value(registry, "shardrec_operator_cluster_target_version_info", version="v3") == 1
    metrics.forget_cluster("ns", "c")
    assert _value(registry, "shardrec_operator_cluster_shard_replicas", shard="0") is None
    assert _value(registry, "shardrec_operator_cluster_target_version_info", version="v3") is None


def test_failover_degraded_is_one_series_by_reason_while_the_condition_is_true() -> None:
    metrics = OperatorMetrics(CollectorRegistry())
    held = api.Condition(
        type="FailoverDegraded", status="True", reason="AllNodesNotReady", last_transition_time=NOW
    )
    status = _status(rolling=False).model_copy(update={"conditions": [held]})
    metrics.record_cluster("ns", "c", _spec(), status, router_ready_replicas=2)
    name = "shardrec_operator_cluster_failover_degraded"
    assert _value(metrics.registry, name, reason="AllNodesNotReady") == 1
    cleared = held.model_copy(update={"status": "False", "reason": "FailoverAvailable"})
    metrics.record_cluster(
        "ns", "c", _spec(), status.model_copy(update={"conditions": [cleared]}), router_ready_replicas=2
    )
    assert _value(metrics.registry, name, reason="AllNodesNotReady") is None
    assert _value(metrics.registry, name, reason="FailoverAvailable") is None


def test_canary_gauges_follow_status_canary_and_its_condition() -> None:
    metrics = OperatorMetrics(CollectorRegistry())
    canary = api.CanaryStatus(
        layout="bbb",
        phase="RolledBack",
        step=1,
        steps=3,
        step_started_at=NOW,
        analysis=api.CanaryAnalysisStatus(requests=400, compared=400, overlap_at10=0.01),
    )
    condition = api.Condition(
        type="CanaryRolledBack", status="True", reason="AnalysisFailed", last_transition_time=NOW
    )
    status = _status(rolling=True).model_copy(update={"canary": canary, "conditions": [condition]})
    metrics.record_cluster("ns", "c", _spec(), status, router_ready_replicas=2)
    registry = metrics.registry
    assert _value(registry, "shardrec_operator_cluster_canary_step", layout="bbb", phase="RolledBack") == 1
    analysis = "shardrec_operator_cluster_canary_analysis"
    assert _value(registry, analysis, layout="bbb", measure="overlap_at10") == 0.01
    assert _value(registry, analysis, layout="bbb", measure="requests") == 400
    assert _value(registry, analysis, layout="bbb", measure="candidate_p99_ms") is None  # not measured
    assert _value(registry, "shardrec_operator_cluster_canary_rolled_back", reason="AnalysisFailed") == 1
    metrics.record_cluster("ns", "c", _spec(), _status(rolling=False), router_ready_replicas=2)
    assert _value(registry, "shardrec_operator_cluster_canary_rolled_back", reason="AnalysisFailed") is None
    assert _value(registry, "shardrec_operator_cluster_canary_step", layout="bbb", phase="RolledBack") is None
