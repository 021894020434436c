"""The pure verdict behind `recctl up/apply --wait`: Ready only from this run's facts."""

from __future__ import annotations

from typing import Any

from shardrec.api.topology import LayoutTopology, ReplicaEndpoint, ShardEndpoints, Topology
from shardrec.tools.local.readiness import Verdict, WaitFacts, judge

RUN = "run-2"


def _topology(revision: int = 3, layout: str = "v1-abc") -> Topology:
    active = LayoutTopology(
        layout=layout,
        version="v1",
        shards=1,
        dimension=4,
        metric="cosine",
        artifact_dir="/x",
        endpoints=[ShardEndpoints(shard=0, replicas=[ReplicaEndpoint(name="r0", url="http://127.0.0.1:2")])],
    )
    return Topology(revision=revision, active=active)


def _facts(**overrides: Any) -> WaitFacts:
    facts: dict[str, Any] = {
        "run_id": RUN,
        "generation": 2,
        "runtime": {
            "run_id": RUN,
            "router_url": "http://127.0.0.1:1",
            "processes": [
                {"name": "router", "pid": 10, "ready": True},
                {"name": "shard-v1-abc-0-0", "pid": 11, "ready": True},
            ],
        },
        "status": {"phase": "Ready", "observedGeneration": 2},
        "topology": _topology(),
        "router_readyz": {"status": "ready", "layout": "v1-abc", "topology_revision": 3},
    }
    facts.update(overrides)
    return WaitFacts(**facts)


def test_ready_when_every_fact_is_from_this_run() -> None:
    assert judge(_facts()).verdict is Verdict.READY


def test_a_previous_runs_ready_status_is_not_ready() -> None:
    """The bug: `up` on a used state folder read the last run's Ready and returned before the
    router listened."""
    stale = _facts(runtime={"run_id": "run-1", "processes": []}, router_readyz=None)
    result = judge(stale)
    assert result.verdict is Verdict.WAITING
    assert "has not reported" in result.reason


def test_no_runtime_file_yet_is_waiting() -> None:
    assert judge(_facts(runtime=None)).verdict is Verdict.WAITING


def test_router_not_answering_is_waiting() -> None:
    result = judge(_facts(router_readyz=None))
    assert result.verdict is Verdict.WAITING and "revision 3" in result.reason


def test_router_on_an_older_revision_is_waiting() -> None:
    older = {"status": "ready", "layout": "v1-abc", "topology_revision": 2}
    assert judge(_facts(router_readyz=older)).verdict is Verdict.WAITING


def test_router_on_another_layout_is_waiting() -> None:
    other = {"status": "ready", "layout": "v0-old", "topology_revision": 3}
    assert judge(_facts(router_readyz=other)).verdict is Verdict.WAITING


def test_a_process_down_or_unready_is_named() -> None:
    runtime = {
        "run_id": RUN,
        "processes": [
            {"name": "router", "pid": 10, "ready": True},
            {"name": "shard-v1-abc-0-0", "pid": None, "ready": False},
            {"name": "shard-v1-abc-0-1", "pid": 12, "ready": False},
        ],
    }
    result = judge(_facts(runtime=runtime))
    assert result.verdict is Verdict.WAITING
    assert "shard-v1-abc-0-0, shard-v1-abc-0-1" in result.reason


def test_status_of_an_older_generation_is_waiting() -> None:
    result = judge(_facts(status={"phase": "Ready", "observedGeneration": 1}))
    assert result.verdict is Verdict.WAITING and "generation 2" in result.reason


def test_failed_for_this_generation_is_failed() -> None:
    assert judge(_facts(status={"phase": "Failed", "observedGeneration": 2})).verdict is Verdict.FAILED


def test_failed_of_a_previous_run_is_not_failed() -> None:
    stale = _facts(runtime={"run_id": "run-1"}, status={"phase": "Failed", "observedGeneration": 2})
    assert judge(stale).verdict is Verdict.WAITING
