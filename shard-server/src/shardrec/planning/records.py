"""The layout state machine: each layout's record (state, clocks, message) for this pass.

A record lives in `status.layouts`, so the state machine survives a restart: the next pass, in
this process or a fresh one, reads the previous records back and combines them with what it
observes. States:

    Building -> Starting -> Ready -> Serving -> Retiring -> (deleted)
        \\__________\\________________________________ Failed (not retried in this generation)

- the target layout (what the spec asks for) is Building until its artifact exists, Starting
  until every shard has `replicasPerShard` ready replicas, then Ready (and is switched to);
- the layout the router is confirmed to serve is Serving;
- a layout that served and no longer does is Retiring (kept for rollback, then deleted);
- a layout that never served and is no longer the target is superseded and deleted at once;
- a target whose build failed or that timed out is Failed until the generation changes.

Once the planner orders a layout's deletion, its record says so (`deleting`, with a message that
names why) until the layout is gone; the flag travels with the message it explains.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from shardrec.api.v1alpha1 import LayoutState, LayoutStatus, RecommenderClusterSpec
from shardrec.planning.layouts import LayoutSpec
from shardrec.planning.observed import Observed, ObservedLayout
from shardrec.planning.timestamps import format_time, parse_time


@dataclass(frozen=True)
class Records:
    """This pass's records, keyed by layout id, plus what only the planner needs about them."""

    by_id: dict[str, LayoutStatus]
    specs: dict[str, LayoutSpec]
    superseded: frozenset[str]
    delete_after: dict[str, datetime]


def _time_or(text: str, default: datetime) -> datetime:
    try:
        return parse_time(text)
    except ValueError:
        return default


def make_record(
    layout_id: str,
    state: LayoutState,
    message: str,
    *,
    spec: LayoutSpec | None,
    previous: LayoutStatus | None,
    observed_layout: ObservedLayout | None,
    now: datetime,
    created_at: str | None = None,
    deleting: bool = False,
) -> LayoutStatus:
    """A record for `layout_id`; `state_since` is kept when the state did not change."""
    version = spec.version if spec is not None else (previous.version if previous else "")
    shards = spec.shards if spec is not None else (previous.shards if previous else 1)
    stamp = format_time(now)
    if created_at is None:
        created_at = previous.created_at if previous is not None else stamp
    since = previous.state_since if previous is not None and previous.state == state else stamp
    ready_shards = (
        sum(1 for entry in observed_layout.shards if entry.ready_replicas > 0) if observed_layout else 0
    )
    reported = observed_layout.build.quality if observed_layout is not None else None
    # Kept once seen: the build pod that reported the metrics goes away, the record stays.
    quality = reported.to_status() if reported is not None else (previous.quality if previous else None)
    return LayoutStatus(
        name=layout_id,
        version=version,
        shards=shards,
        state=state,
        ready_shards=ready_shards,
        created_at=created_at,
        state_since=since,
        message=message[:4096],
        deleting=deleting,
        quality=quality,
    )


def readiness_state(observed_layout: ObservedLayout | None, replicas: int) -> tuple[LayoutState, str]:
    """Building / Starting / Ready of a layout that does not serve, from what is observed."""
    if observed_layout is None or observed_layout.build.state != "Succeeded":
        return "Building", "building the index"
    short = observed_layout.shards_short_of(replicas)
    if short:
        return "Starting", f"shards {short} have fewer than {replicas} ready replicas"
    return "Ready", f"every shard has {replicas} ready replicas"


def _target_record(
    target: LayoutSpec, spec: RecommenderClusterSpec, observed: Observed, previous: LayoutStatus | None
) -> LayoutStatus:
    tid = target.id
    now = observed.now
    obs = observed.layout(tid)
    new_generation = observed.generation != observed.previous_status.observed_generation
    retry = previous is not None and previous.state == "Failed" and new_generation
    # A kept layout that becomes the target again (a revert) starts a new rollout clock.
    fresh = previous is None or retry or previous.state == "Retiring"
    created_at = format_time(now) if fresh else None
    if tid == observed.router.confirmed_layout:
        return make_record(
            tid,
            "Serving",
            "",
            spec=target,
            previous=previous,
            observed_layout=obs,
            now=now,
            created_at=created_at,
        )
    if previous is not None and previous.state == "Failed" and not retry:
        return make_record(
            tid,
            "Failed",
            previous.message,
            spec=target,
            previous=previous,
            observed_layout=obs,
            now=now,
            deleting=previous.deleting,
        )
    attempt = created_at or (previous.created_at if previous else format_time(now))
    build = obs.build if obs is not None else None
    if (
        build is not None
        and build.state == "Failed"
        and not retry
        and (build.attempt is None or build.attempt == attempt)
    ):
        message = f"build failed: {build.message or 'no message'}"
        return make_record(
            tid,
            "Failed",
            message,
            spec=target,
            previous=previous,
            observed_layout=obs,
            now=now,
            created_at=created_at,
        )
    state, message = readiness_state(obs, spec.replicas_per_shard)
    return make_record(
        tid,
        state,
        message,
        spec=target,
        previous=previous,
        observed_layout=obs,
        now=now,
        created_at=created_at,
    )


def _other_record(
    layout_id: str, target_id: str, obs: ObservedLayout, now: datetime, previous: LayoutStatus | None
) -> tuple[LayoutStatus, bool]:
    """Record of an existing layout that is neither the target nor serving, and whether it is
    superseded (never served, so it is deleted without a rollback window)."""
    if previous is not None and previous.state in ("Serving", "Retiring"):
        return make_record(
            layout_id,
            "Retiring",
            previous.message,
            spec=obs.spec,
            previous=previous,
            observed_layout=obs,
            now=now,
            deleting=previous.deleting,
        ), False
    if previous is not None and previous.state == "Failed":
        return make_record(
            layout_id,
            "Failed",
            previous.message,
            spec=obs.spec,
            previous=previous,
            observed_layout=obs,
            now=now,
            deleting=previous.deleting,
        ), False
    state = previous.state if previous is not None else readiness_state(obs, 1)[0]
    deleting = previous is not None and previous.deleting
    message = (
        previous.message
        if previous is not None and deleting
        else (f"superseded by layout {target_id} before it served")
    )
    return make_record(
        layout_id,
        state,
        message,
        spec=obs.spec,
        previous=previous,
        observed_layout=obs,
        now=now,
        deleting=deleting,
    ), True


def _deletion_times(
    records: dict[str, LayoutStatus], spec: RecommenderClusterSpec, now: datetime
) -> dict[str, tuple[datetime, bool]]:
    """When each Retiring layout may be deleted, and whether it is kept for rollback: the
    `keepPreviousLayouts` most recently retired are kept for the rollback window, older ones
    only drain."""
    rollout = spec.rollout
    retiring = sorted(
        (entry for entry in records.values() if entry.state == "Retiring"),
        key=lambda entry: (_time_or(entry.state_since, now), entry.name),
        reverse=True,
    )
    times = {}
    for rank, entry in enumerate(retiring):
        kept = (
            rank < rollout.keep_previous_layouts and rollout.rollback_window_seconds > rollout.drain_seconds
        )
        hold = rollout.rollback_window_seconds if kept else rollout.drain_seconds
        times[entry.name] = (_time_or(entry.state_since, now) + timedelta(seconds=hold), kept)
    return times


def decide_records(spec: RecommenderClusterSpec, observed: Observed) -> Records:
    """Every layout's record for this pass (before predicates; timeouts are applied later)."""
    target = LayoutSpec.from_spec(spec)
    tid = target.id
    previous = {entry.name: entry for entry in observed.previous_status.layouts}
    serving = observed.router.confirmed_layout
    by_id: dict[str, LayoutStatus] = {}
    specs: dict[str, LayoutSpec] = {tid: target}
    superseded: set[str] = set()

    by_id[tid] = _target_record(target, spec, observed, previous.get(tid))
    if serving is not None and serving != tid:
        obs = observed.layout(serving)
        before = previous.get(serving)
        if obs is not None or before is not None:
            layout_spec = obs.spec if obs is not None else None
            by_id[serving] = make_record(
                serving,
                "Serving",
                "",
                spec=layout_spec,
                previous=before,
                observed_layout=obs,
                now=observed.now,
            )
            if layout_spec is not None:
                specs[serving] = layout_spec
    others = [entry.id for entry in observed.layouts] + list(previous)
    for layout_id in dict.fromkeys(others):
        obs = observed.layout(layout_id)
        if layout_id in by_id or obs is None:
            continue  # a layout gone from the world is forgotten
        record, is_superseded = _other_record(layout_id, tid, obs, observed.now, previous.get(layout_id))
        by_id[layout_id] = record
        specs[layout_id] = obs.spec
        if is_superseded:
            superseded.add(layout_id)
    delete_after = {}
    for layout_id, (at, kept) in _deletion_times(by_id, spec, observed.now).items():
        delete_after[layout_id] = at
        entry = by_id[layout_id]
        if not entry.deleting:
            label = "kept for rollback" if kept else "draining"
            by_id[layout_id] = entry.model_copy(update={"message": f"{label} until {format_time(at)}"})
    return Records(by_id, specs, frozenset(superseded), delete_after)
