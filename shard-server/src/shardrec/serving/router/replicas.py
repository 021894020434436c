"""Replica choice and health: power of two choices on load, outlier ejection, probe-driven return.

Pure state and decisions; the caller supplies the clock and the random source, so every transition
is testable without sleeping.

State machine of one replica:

    healthy --(failure_threshold consecutive failures | failed probe)--> ejected(until)
    ejected --(successful probe or answer after `until`)--> healthy

The ejection time doubles with every ejection that follows shortly after the previous one (a
flapping replica stays out longer) and is capped. When every replica of a shard is ejected the
router still tries them ("panic routing", as Envoy does): a request that might succeed beats a
certain 503, and the first answer brings the replica back.

Except a replica known dead: one whose last health probe failed (refused, not ready, or no answer
within the probe timeout) and that has not answered since. It is never chosen, so a shard whose
replicas are all known dead fails at once ("no_replica": 503 naming it under strict, a flagged
partial answer under available) instead of every request waiting for its deadline: the shard's
circuit is open until a probe succeeds again (within one probe interval of the replica's return).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar

Health = Literal["healthy", "ejected"]
ClientT = TypeVar("ClientT")


@dataclass(frozen=True)
class EjectionPolicy:
    failure_threshold: int = 2
    base_ejection_s: float = 1.0
    max_ejection_s: float = 30.0
    # An ejection within this long after the previous return counts as a repeat (doubles the time).
    flap_window_s: float = 60.0
    ewma_alpha: float = 0.3
    initial_latency_s: float = 0.002
    # A failure counts as this much latency: a replica that fails fast must not look fast
    # ("black hole" routing); successful probes decay the penalty again.
    failure_penalty_s: float = 0.05


@dataclass(eq=False)
class Replica(Generic[ClientT]):
    """One shard-server replica as the router sees it. Identity is (name, url)."""

    name: str
    url: str
    client: ClientT
    policy: EjectionPolicy = field(default_factory=EjectionPolicy)
    health: Health = "healthy"
    outstanding: int = 0
    latency_ewma_s: float = -1.0
    consecutive_failures: int = 0
    ejected_until: float = 0.0
    returned_at: float = float("-inf")
    repeat_ejections: int = 0
    known_dead: bool = False  # the last probe failed and nothing answered since
    applied_sequence: int = 0
    """The last write-log sequence this replica is known to have applied (its /readyz, or an
    acknowledged write); reads that must see a later write avoid it."""
    instance: str | None = None  # the process identity its last /readyz reported
    zone: str | None = None  # the zone of the replica's node, when the topology says it

    def __post_init__(self) -> None:
        if self.latency_ewma_s < 0:
            self.latency_ewma_s = self.policy.initial_latency_s

    @property
    def load_cost(self) -> float:
        """Expected wait if one more request is sent: outstanding work times typical latency."""
        return (self.outstanding + 1) * self.latency_ewma_s

    def started(self) -> None:
        self.outstanding += 1

    def succeeded(self, latency_s: float, now: float) -> None:
        self.outstanding = max(0, self.outstanding - 1)
        self.latency_ewma_s += self.policy.ewma_alpha * (latency_s - self.latency_ewma_s)
        self.consecutive_failures = 0
        self.known_dead = False
        if self.health == "ejected":
            self._return(now)

    def failed(self, now: float, latency_s: float = 0.0) -> bool:
        """Record a failed request (unavailable or timed out); True if this ejected the replica."""
        self.outstanding = max(0, self.outstanding - 1)
        sample = max(latency_s, self.policy.failure_penalty_s)
        self.latency_ewma_s += self.policy.ewma_alpha * (sample - self.latency_ewma_s)
        self.consecutive_failures += 1
        if self.health == "healthy" and self.consecutive_failures >= self.policy.failure_threshold:
            self._eject(now)
            return True
        return False

    def cancelled(self) -> None:
        """A request abandoned by the router (lost a hedge race): no verdict on the replica."""
        self.outstanding = max(0, self.outstanding - 1)

    def probed(self, ready: bool, now: float) -> bool:
        """Record a health probe; True if this ejected the replica."""
        self.known_dead = not ready
        if ready:
            if self.health == "ejected" and now >= self.ejected_until:
                self._return(now)
            # Decay a latency estimate that no request refreshes (p2c may never pick this
            # replica again otherwise): halve its excess over the initial estimate per probe.
            baseline = self.policy.initial_latency_s
            if self.latency_ewma_s > baseline:
                self.latency_ewma_s = baseline + (self.latency_ewma_s - baseline) / 2
            return False
        if self.health == "healthy":
            self._eject(now)
            return True
        return False

    def _eject(self, now: float) -> None:
        if now - self.returned_at <= self.policy.flap_window_s:
            self.repeat_ejections += 1
        else:
            self.repeat_ejections = 0
        duration = min(self.policy.base_ejection_s * (2**self.repeat_ejections), self.policy.max_ejection_s)
        self.health = "ejected"
        self.ejected_until = now + duration

    def _return(self, now: float) -> None:
        self.health = "healthy"
        self.consecutive_failures = 0
        self.returned_at = now


def choose_replica(
    replicas: Sequence[Replica[ClientT]],
    now: float,
    rng: random.Random,
    avoid: Sequence[Replica[ClientT]] = (),
    zone: str | None = None,
) -> Replica[ClientT] | None:
    """Power of two choices among live replicas not in `avoid`, by `load_cost`.

    Falls back to ejected replicas not in `avoid` and not known dead (panic routing), and returns
    None when no replica is left: every one tried already or known dead. Two random candidates
    instead of the global minimum keep many routers from stampeding onto the same momentarily
    idle replica. With the router's `zone` known, the candidates are first narrowed to replicas in
    that zone when there is one among them (a fan-out to every shard stays in the zone); with none
    there (none in the zone, or all tried, ejected or dead) the choice crosses zones.
    """
    live = [r for r in replicas if r.health == "healthy" and r not in avoid]
    if not live:
        live = [r for r in replicas if r not in avoid and not r.known_dead]
        if not live:
            return None
    if zone is not None:
        local = [r for r in live if r.zone == zone]
        if local:
            live = local
    if len(live) == 1:
        return live[0]
    first, second = rng.sample(live, 2)  # random order also breaks ties between equal costs
    if second.load_cost < first.load_cost:
        return second
    return first


_ORDINAL = re.compile(r"(\d+)$")


def ordinal(replica: Replica[ClientT]) -> tuple[int, str]:
    """Sort key: the trailing number of the replica's name (its ordinal), then the name."""
    found = _ORDINAL.search(replica.name)
    return (int(found.group(1)) if found else 1 << 30, replica.name)


def leader(replicas: Sequence[Replica[ClientT]]) -> Replica[ClientT]:
    """A shard's write-sequence authority: its replica of lowest ordinal, ready or not (a static
    choice every router makes alike from the topology alone, so two routers never number the same
    shard; docs/design.md, "Item writes")."""
    return min(replicas, key=ordinal)
