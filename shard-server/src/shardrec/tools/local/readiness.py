"""When `recctl up --wait` and `recctl apply --wait` may say Ready: a pure verdict over the facts.

The facts are files the supervisor writes (status.json, runtime.json, topology.json) and the router's
own `/readyz` answer. Files alone are not enough: a state folder that served before still holds the
last run's "Ready" status, and the router of this run may not listen yet. So every fact must come
from this run (`run_id` in runtime.json) and the router itself must answer for the topology
revision the supervisor wrote:

    Waiting --(this run wrote runtime.json; status Ready for the generation;
               every process up and ready; router /readyz serves the written revision)--> Ready
    Waiting --(this run wrote runtime.json; status Failed for the generation)--> Failed
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from shardrec.api.topology import Topology


class Verdict(Enum):
    WAITING = "Waiting"
    READY = "Ready"
    FAILED = "Failed"


@dataclass(frozen=True)
class WaitFacts:
    """What the waiting CLI read in one look; None where a file or the router did not answer."""

    run_id: str
    generation: int
    runtime: Mapping[str, Any] | None
    status: Mapping[str, Any] | None
    topology: Topology | None
    router_readyz: Mapping[str, Any] | None


@dataclass(frozen=True)
class WaitResult:
    verdict: Verdict
    reason: str


def written_by_this_run(facts: WaitFacts) -> bool:
    return facts.runtime is not None and facts.runtime.get("run_id") == facts.run_id


def status_is(facts: WaitFacts, phase: str) -> bool:
    status = facts.status or {}
    return status.get("phase") == phase and int(status.get("observedGeneration", 0)) >= facts.generation


def processes_not_ready(facts: WaitFacts) -> list[str]:
    """Names of the processes in this run's table that are down or not ready."""
    processes = (facts.runtime or {}).get("processes", [])
    return [str(p.get("name")) for p in processes if p.get("pid") is None or not p.get("ready")]


def router_serves_written_topology(facts: WaitFacts) -> bool:
    topology, readyz = facts.topology, facts.router_readyz
    if topology is None or topology.active is None or readyz is None:
        return False
    return (
        readyz.get("topology_revision") == topology.revision
        and readyz.get("layout") == topology.active.layout
    )


def judge(facts: WaitFacts) -> WaitResult:
    if not written_by_this_run(facts):
        return WaitResult(Verdict.WAITING, "the supervisor of this run has not reported yet")
    if status_is(facts, "Failed"):
        return WaitResult(Verdict.FAILED, "the cluster failed")
    if not status_is(facts, "Ready"):
        phase = (facts.status or {}).get("phase", "unknown")
        return WaitResult(Verdict.WAITING, f"phase {phase} (generation {facts.generation} not Ready yet)")
    not_ready = processes_not_ready(facts)
    if not_ready:
        return WaitResult(Verdict.WAITING, f"processes not ready: {', '.join(sorted(not_ready))}")
    if not router_serves_written_topology(facts):
        revision = facts.topology.revision if facts.topology else None
        return WaitResult(Verdict.WAITING, f"the router does not serve topology revision {revision} yet")
    return WaitResult(Verdict.READY, "ready")
