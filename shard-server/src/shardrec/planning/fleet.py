"""The router fleet as the planner sees it: which layout every router confirms, and the topology
document the hands write next. Pure; shared by the operator and the local runtime.

Routers report what they serve (`RouterServing`: pod annotation on Kubernetes, `/readyz` locally).
A switch is confirmed only when every *ready* router (one the Service sends clients to) serves the
written layout; until then the old layout stays "serving" for the planner, so its retirement
clock has not started and no router loses its shards under it:

    written=new, every ready router on new            -> confirmed new (old starts Retiring)
    written=new, some ready router still on old/none  -> confirmed old; those routers are lagging
    no ready router at all                            -> confirmed stays what it was (nothing disproves it)
    no router reports at all (routers too old, or pods that run nothing) -> the stored topology,
                                                         as before acknowledgements existed (or,
                                                         while the document itself is missing,
                                                         what the status last called active)

A router that rejected a document keeps serving its last layout and stays Ready (turning every
router unready over a bad artifact would be a full outage); it reports the error and counts as
lagging, which holds back retirement and, past `LAGGING_DEADLINE_SECONDS`, raises an Event.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from shardrec.api.topology import CanaryRoute, LayoutTopology, RouterServing, Topology
from shardrec.api.v1alpha1 import RecommenderClusterStatus, RouterFleetStatus, RouterReplicaStatus
from shardrec.planning.timestamps import format_time, parse_time

LAGGING_DEADLINE_SECONDS = 60
"""A ready router that has not served the written layout for this long raises RouterSwitchStalled."""


@dataclass(frozen=True)
class RouterObservation:
    """One router as the hands see it: whether clients reach it (ready) and what it reports
    serving (None when it reports nothing)."""

    name: str
    ready: bool
    serving: RouterServing | None = None

    @property
    def layout(self) -> str | None:
        return self.serving.layout if self.serving is not None else None

    def has_prepared(self, layout: str) -> bool:
        """It serves `layout` already or has loaded it as staged."""
        return self.serving is not None and layout in (self.serving.layout, self.serving.prepared)


def acknowledging(routers: Iterable[RouterObservation]) -> bool:
    """Whether acknowledgements are in force: at least one router reports what it serves."""
    return any(router.serving is not None for router in routers)


def ready_routers(routers: Iterable[RouterObservation]) -> list[RouterObservation]:
    return sorted((router for router in routers if router.ready), key=lambda router: router.name)


def lagging_routers(routers: Iterable[RouterObservation], written: str | None) -> list[str]:
    """Ready routers that do not serve the written layout (or report nothing) while others report."""
    routers = list(routers)
    if written is None or not acknowledging(routers):
        return []
    return [router.name for router in ready_routers(routers) if router.layout != written]


def unprepared_routers(routers: Iterable[RouterObservation], layout: str) -> list[str]:
    """Ready routers that have not loaded `layout` (staged or active) while others report."""
    routers = list(routers)
    if not acknowledging(routers):
        return []
    return [router.name for router in ready_routers(routers) if not router.has_prepared(layout)]


def layouts_in_use(routers: Iterable[RouterObservation]) -> frozenset[str]:
    """Layouts some ready router serves or holds prepared: none of them may be deleted."""
    used: set[str] = set()
    for router in ready_routers(routers):
        if router.serving is not None:
            used.update(name for name in (router.serving.layout, router.serving.prepared) if name)
    return frozenset(used)


def confirmed_layout(
    routers: Iterable[RouterObservation],
    *,
    written: str | None,
    stored: str | None,
    previous: str | None,
    document_missing: bool = False,
) -> str | None:
    """The layout the fleet is known to serve (see the module docstring for the rules).

    `written`: the hands' last committed write; `stored`: the active layout of the stored topology
    document; `previous`: the layout the last status called active (None if none);
    `document_missing`: there is no stored document at all (deleted, or unreadable): a missing
    document proves nothing about what routers serve, so it never un-confirms a layout.
    """
    routers = list(routers)
    if not acknowledging(routers):
        return previous if document_missing else stored
    ready = ready_routers(routers)
    if not ready:
        return previous
    if written is not None and all(router.layout == written for router in ready):
        return written
    others = Counter(router.layout for router in ready if router.layout not in (None, written))
    if previous in others or (not others and previous is not None):
        return previous
    if not others:
        return None
    return sorted(others.items(), key=lambda item: (-item[1], item[0] or ""))[0][0]


def topology_document(
    stored: Topology | None,
    *,
    active: LayoutTopology | None,
    staged: LayoutTopology | None,
    floor: tuple[int, int] | None,
    now_ms: int,
    canary: CanaryRoute | None = None,
) -> Topology | None:
    """The document to write so routers serve `active` and prepare `staged` (with `canary` traffic
    to it), or None when `stored` already says exactly that.

    The revision continues from the higher of the stored document and `floor` (the hands' durable
    record of their last write: the cluster's status). When neither exists the sequence restarts
    in a new epoch, `now_ms`, which routers take as newer than anything they hold. A canary whose
    layout is not the staged one is dropped (routers split only to a layout they hold).
    """
    if staged is not None and active is not None and staged.layout == active.layout:
        staged = None
    if canary is not None and (staged is None or staged.layout != canary.layout):
        canary = None
    if stored is not None and stored.active == active and stored.staged == staged and stored.canary == canary:
        return None
    known = [order for order in (stored.order if stored is not None else None, floor) if order is not None]
    if known:
        epoch, revision = max(known)
        return Topology(epoch=epoch, revision=revision + 1, active=active, staged=staged, canary=canary)
    return Topology(epoch=now_ms, revision=0, active=active, staged=staged, canary=canary)


MAX_REPORTED_ROUTERS = 100


def fleet_status(
    routers: Iterable[RouterObservation],
    *,
    written: str | None,
    active: str | None,
    previous: RouterFleetStatus,
    now: datetime,
) -> RouterFleetStatus:
    """`status.routers`: who serves what, who lags and since when (kept across passes while some
    router lags, so the deadline survives a restart of the hands)."""
    routers = sorted(routers, key=lambda router: router.name)
    ready = [router for router in routers if router.ready]
    lagging = lagging_routers(routers, written)
    since = ""
    if lagging:
        since = previous.lagging_since if previous.lagging else format_time(now)
    stalled = bool(lagging) and now - parse_time(since) >= timedelta(seconds=LAGGING_DEADLINE_SECONDS)
    return RouterFleetStatus(
        ready_replicas=len(ready),
        serving_active=sum(1 for router in ready if active is not None and router.layout == active),
        lagging=lagging,
        lagging_since=since,
        stalled=stalled,
        replicas=[
            RouterReplicaStatus(
                name=router.name,
                ready=router.ready,
                layout=router.layout or "",
                revision=router.serving.revision if router.serving is not None else -1,
                prepared=(router.serving.prepared or "") if router.serving is not None else "",
                error=router.serving.error if router.serving is not None else "",
            )
            for router in routers[:MAX_REPORTED_ROUTERS]
        ],
    )


def with_topology_written(status: RecommenderClusterStatus, topology: Topology) -> RecommenderClusterStatus:
    """`status` recording the topology the hands just wrote: the durable floor of the next write.

    A rule for the hands: after writing a topology document in a pass, write the pass's status
    through this, so the revision survives the loss of the document itself."""
    return status.model_copy(
        update={"topology_revision": topology.revision, "topology_epoch": topology.epoch}
    )
