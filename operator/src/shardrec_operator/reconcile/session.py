"""One reconcile pass's hands: the API, what was observed, and a tally of what was done.

Every write of the pass goes through `Session.apply` / `Session.delete`, so the pass can report
how many writes it made (zero for a reconcile with nothing to change) and collect the Events
its side effects produce next to the planner's: a re-apply that corrected drift (an owned field
changed by hand) posts a DriftCorrected Warning naming the object and the fields.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

from shardrec.api.v1alpha1 import RecommenderCluster
from shardrec.planning import EventType, RecordEvent
from shardrec_operator.reconcile.apply import apply_child
from shardrec_operator.reconcile.cluster_api import ClusterApi, Obj
from shardrec_operator.reconcile.drift import describe
from shardrec_operator.reconcile.expectations import Expectations
from shardrec_operator.reconcile.observe import Children
from shardrec_operator.reconcile.resources import Resource

log = logging.getLogger(__name__)


@dataclass
class Session:
    api: ClusterApi
    cluster: RecommenderCluster
    children: Children
    expectations: Expectations
    now: datetime
    events: list[RecordEvent] = field(default_factory=list)
    writes: int = 0
    drift_corrections: int = 0

    def apply(self, manifest: Obj, *, observed: Obj | None, create_only: bool = False) -> None:
        result = apply_child(
            self.api, manifest, observed, owner_uid=self.cluster.metadata.uid, create_only=create_only
        )
        if result is None:
            return
        self.writes += 1
        kind, name = manifest["kind"], manifest["metadata"]["name"]
        log.info("Applied %s %s", kind, name)
        if result.drifted:
            self.drift_corrections += 1
            self.event(
                "Warning",
                "DriftCorrected",
                f"{kind} {name} no longer held fields the operator sets ({describe(list(result.drifted))}); "
                "re-applied them",
            )

    def delete(
        self, kind: Resource, obj: Obj, *, grace_period_seconds: int | None = None, guard_uid: bool = True
    ) -> None:
        meta = obj["metadata"]
        uid = meta.get("uid") if guard_uid else None
        if self.api.delete(
            kind, meta.get("namespace"), meta["name"], uid=uid, grace_period_seconds=grace_period_seconds
        ):
            self.writes += 1
            log.info("Deleted %s %s", kind.kind, meta["name"])

    def event(self, type_: EventType, reason: str, message: str) -> None:
        self.events.append(RecordEvent(type_, reason, message))

    def warn_once(self, reason: str, message: str) -> None:
        """A Warning Event the first time this process meets this problem for this cluster."""
        if self.expectations.warn_once(self.cluster.metadata.uid, f"{reason}:{message}"):
            self.event("Warning", reason, message)
