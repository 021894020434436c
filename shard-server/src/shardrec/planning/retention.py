"""Artifact retention: which built layouts to delete from the index store. Pure: no I/O, no clock.

Rules, in order (`layouts_to_delete`):
1. A protected layout is never deleted: the one that serves (written or confirmed), the target,
   and every layout that still has a record in `status.layouts` (Building, Starting, Ready,
   Retiring within its rollback window, or being deleted), because the planner may still switch
   to it or back to it.
2. The newest `keepLayouts` stored layouts (by build time, protected ones included) are kept,
   so a rollback to any of them reuses its artifacts.
3. Beyond those, a layout built more than `maxAgeHours` ago is deleted (with `maxAgeHours: 0`,
   at once); a younger one waits until it is that old.

How the operator knows what the store holds: it keeps the layouts this cluster built in
`status.storedLayouts` (added when a build is seen complete, removed when their deletion is seen
complete) instead of listing the store. That costs nothing per pass (no Job, no credentials in the
operator, which never talks to the object store itself) and survives restarts like every other
planner clock. The price: artifacts this cluster did not see built (written by hand, or before
this field existed) are never deleted by retention; `deleteArtifactsOnDelete` still removes
them with the cluster's folder.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from shardrec.api.v1alpha1 import RecommenderClusterSpec, RetentionSpec, StoredLayoutStatus
from shardrec.planning.actions import DeleteArtifacts
from shardrec.planning.carrying import Carry
from shardrec.planning.observed import Observed
from shardrec.planning.timestamps import format_time, parse_time


@dataclass(frozen=True)
class StoredLayout:
    """A layout whose artifacts are in the store, and when it was built."""

    layout_id: str
    built_at: datetime


@dataclass(frozen=True)
class RetentionVerdict:
    """A layout to delete and why (the reason goes into its status message and Event)."""

    layout_id: str
    reason: str


def newest_first(stored: Iterable[StoredLayout]) -> list[StoredLayout]:
    """Newest build first; ties broken by id so the order never depends on input order."""
    ordered = sorted(stored, key=lambda entry: entry.layout_id)
    ordered.sort(key=lambda entry: entry.built_at, reverse=True)
    return ordered


def layouts_to_delete(
    stored: Iterable[StoredLayout],
    protected: Iterable[str],
    retention: RetentionSpec,
    now: datetime,
) -> tuple[RetentionVerdict, ...]:
    """The stored layouts retention deletes now, oldest first. `protected` holds the ids that
    must stay (rule 1); never one of them is returned."""
    keep_ids = set(protected)
    max_age = timedelta(hours=retention.max_age_hours)
    verdicts = []
    for rank, entry in enumerate(newest_first(stored)):
        if entry.layout_id in keep_ids or rank < retention.keep_layouts:
            continue
        age = now - entry.built_at
        if age >= max_age:
            hours = age.total_seconds() / 3600
            verdicts.append(
                RetentionVerdict(
                    entry.layout_id,
                    f"not among the newest {retention.keep_layouts} built layouts "
                    f"(keepLayouts) and built {hours:.1f}h ago (maxAgeHours: {retention.max_age_hours})",
                )
            )
    return tuple(reversed(verdicts))


def next_expiry(
    tracked: Iterable[StoredLayoutStatus],
    protected: Iterable[str],
    retention: RetentionSpec,
    now: datetime,
) -> datetime | None:
    """When the next layout kept only by its age becomes deletable, or None: the planner's
    requeue, so a layout is collected on time without a timer of its own."""
    stored = _as_stored(entry for entry in tracked if not entry.deleting)
    keep_ids = set(protected)
    max_age = timedelta(hours=retention.max_age_hours)
    due = [
        entry.built_at + max_age
        for rank, entry in enumerate(newest_first(stored))
        if entry.layout_id not in keep_ids
        and rank >= retention.keep_layouts
        and entry.built_at + max_age > now
    ]
    return min(due) if due else None


def tracked_layouts(observed: Observed) -> list[StoredLayoutStatus]:
    """`status.storedLayouts` for this pass, before retention: the previous list, plus every
    layout whose build is seen complete (built now), minus those whose deletion is seen done."""
    done = {layout_id for layout_id, state in observed.artifact_deletions.items() if state == "Succeeded"}
    entries = {entry.name: entry for entry in observed.previous_status.stored_layouts}
    for layout in observed.layouts:
        if layout.build.state == "Succeeded" and layout.id not in entries:
            entries[layout.id] = StoredLayoutStatus(
                name=layout.id, version=layout.spec.version, built_at=format_time(observed.now)
            )
    for layout_id in done:
        entry = entries.get(layout_id)
        if entry is not None and entry.deleting:
            del entries[layout_id]
    return [entries[entry.layout_id] for entry in newest_first(_as_stored(entries.values()))]


def _as_stored(entries: Iterable[StoredLayoutStatus]) -> list[StoredLayout]:
    stored = []
    for entry in entries:
        try:
            stored.append(StoredLayout(entry.name, parse_time(entry.built_at)))
        except ValueError:
            continue  # an unreadable time (a hand edit) is never collected
    return stored


def propose_deletions(
    spec: RecommenderClusterSpec,
    observed: Observed,
    tracked: list[StoredLayoutStatus],
    protected: Iterable[str],
) -> list[DeleteArtifacts]:
    """Retention's proposals: the deletions already under way (level-based, until they are seen
    done) and the layouts retention now deletes. The planner's predicates judge them."""
    keep = set(protected)
    proposals: list[DeleteArtifacts] = []
    for entry in tracked:
        if entry.deleting and observed.artifact_deletions.get(entry.name) != "Failed":
            proposals.append(
                DeleteArtifacts(entry.name, entry.version, entry.message.removeprefix("deleting: "))
            )
    versions = {entry.name: entry.version for entry in tracked}
    candidates = [entry for entry in _as_stored(tracked) if not _deleting(tracked, entry.layout_id)]
    for verdict in layouts_to_delete(candidates, keep, spec.index.store.retention, observed.now):
        proposals.append(DeleteArtifacts(verdict.layout_id, versions[verdict.layout_id], verdict.reason))
    return proposals


def carry_folders_needed(layout_id: str, *, live: Collection[str], carries: Iterable[Carry]) -> str | None:
    """Why the carry folders naming `layout_id` on the store are still needed, or None: they are
    garbage, and go with its artifacts (the garbage-collection Job of `DeleteArtifacts` runs
    `recctl index delete --carry-store`; predicate `never_delete_carry_folders_in_use`).

    Two kinds of folder name a layout L (under the cluster's folder on the store):
    - `carry/L`, L's carry folder: the writes its carrier cut from the layout it replaced, and the
      carrier's progress. Needed while L exists (`live`: the target, named by the router topology,
      recorded in `status.layouts` within its rollback window, or running): a later carry out of L
      folds it in as `prior` (a chain v1 -> v2 -> v3 keeps v1's writes only through it). Needed
      while a carry that is not done names L (`carries`: observed carriers and `status.carries`):
      a carrier into L reads and writes it (a restarted one resumes from it), a carrier out of L
      reads it while it cuts. A done carry out of L reads nothing any more (the layout it carried
      into holds L's folder in its own as `prior` since its cut); listed while that layout
      exists, it must not hold L's artifacts for that long. Beyond that it is not only useless
      but harmful: a later carry into a layout with L's id would resume it (a stale cut and
      progress that counts writes forwarded into replicas deleted since).
    - `carry-back/K/S` and `carry-back/S/K` for every S, the progress of a carry back into K from
      S: needed while both layouts of the pair exist (a carry back needs K's replicas and S
      serving; a second one between the same pair resumes it on purpose). Once L is gone no carry
      back into or out of it can start again.

    So both kinds are garbage exactly when L no longer exists and no carry names it. Artifacts
    are deleted only for a layout that no longer exists (`never_delete_artifacts_of_a_live_layout`),
    which is why the carry folders go with them: the same Job, the same memory
    (`status.storedLayouts`), nothing listed by the operator. What this leaves behind: the carry
    folder of a layout abandoned before its build succeeded (it has no artifacts to collect)."""
    if layout_id in live:
        return f"layout {layout_id} still exists: a later carry out of it folds its carry folder in"
    for carry in carries:
        if not carry.done and layout_id in (carry.layout, carry.source):
            kind = "carry back" if carry.back else "carry"
            return (
                f"the {kind} from layout {carry.source} into layout {carry.layout} is known: its carrier "
                "reads the carry folder"
            )
    return None


def _deleting(tracked: list[StoredLayoutStatus], layout_id: str) -> bool:
    return any(entry.name == layout_id and entry.deleting for entry in tracked)


def with_deletions(
    tracked: list[StoredLayoutStatus], accepted: Iterable[DeleteArtifacts], observed: Observed
) -> list[StoredLayoutStatus]:
    """The tracked list with accepted deletions marked (`deleting`, saying why) and failed ones
    saying so; an entry keeps its first reason."""
    reasons = {action.layout_id: action.reason for action in accepted}
    out = []
    for entry in tracked:
        marked = entry
        if entry.name in reasons and not entry.deleting:
            update = {"deleting": True, "message": f"deleting: {reasons[entry.name]}"}
            marked = entry.model_copy(update=update)
        if marked.deleting and observed.artifact_deletions.get(entry.name) == "Failed":
            message = "deletion failed; delete the failed garbage-collection Job to retry"
            marked = marked.model_copy(update={"message": message})
        out.append(marked)
    return out
