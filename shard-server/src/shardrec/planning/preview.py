"""Plan preview: what a spec change will do, before it happens (Strimzi's KafkaRebalance proposal).

`preview(name, spec, deployed, rates, items)` compares the new spec with what runs (`Deployed`,
read from the status the operator or the local runtime writes, or `NOTHING_DEPLOYED`) and says:
which layouts must be built (and how many items each shard gets), which pods are added, removed or
replaced (shards, routers, build Jobs), the extra CPU and memory the scheduler must place at the
peak of the change (blue/green runs the new layout's shards beside the old ones), the measured
resident memory of the new shards, the expected duration from measured build and load rates, and
whether the rollout can hurt availability.

It decides nothing the planner decides differently: a new layout id (`layouts.LayoutSpec`) means a
build and a blue/green switch; replicasPerShard scales the running layout; efSearch is sent with
every query (live); a pod-template change is rolled one shard at a time (`rolls`), surging
single-replica shards by one pod. No I/O, no clock: the measured rates come in as `Rates`
(`shardrec.tools.capacity.preview_rates` reads them from benchmarks/coefficients.json) and the
item count as a number; without them the figures that need them are None and the plan says why.
`preview_format` renders a plan as text and JSON.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Literal

from shardrec.api.v1alpha1 import (
    PlanChangeKind,
    RecommenderClusterSpec,
    RecommenderClusterStatus,
    ResourceRequirements,
    transition_errors,
)
from shardrec.planning.layouts import LayoutSpec
from shardrec.planning.timestamps import parse_time

ChangeKind = PlanChangeKind
PodKind = Literal["shard", "router", "build"]
Severity = Literal["risk", "info"]

RUNNING_STATES: Final = ("Starting", "Ready", "Serving", "Retiring")
"""Layout states whose shard pods run (status.layouts[].state)."""


@dataclass(frozen=True)
class Rates:
    """Measured rates at the spec's dimension and HNSW M (`tools.capacity.preview_rates`)."""

    resident_bytes_per_item: float
    """Memory of one item in a loaded shard."""
    index_file_bytes_per_item: float
    """Bytes per item of the saved index a shard verifies and loads."""
    shard_baseline_bytes: float
    """Resident memory of a shard process before it loads anything."""
    build_items_per_core_second: float
    load_bytes_per_second: float
    """Verify (sha256) and load of an index file, one shard."""
    source: str
    """Where they come from (file and measuring date), printed with the plan."""
    search_ms_by_ef: tuple[tuple[int, float], ...] = ()
    """Measured CPU ms of one shard query at each efSearch, increasing ef (at the measured size)."""

    def search_ms(self, ef: int) -> float | None:
        """The measured cost at the smallest measured efSearch >= `ef`; None beyond the range."""
        return next((ms for point, ms in self.search_ms_by_ef if point >= ef), None)


@dataclass(frozen=True)
class Deployed:
    """What runs now, as the status says (plus the spec last applied, when the caller has it)."""

    active_layout: str = ""
    active_version: str = ""
    shards: int = 0
    replicas_per_shard: int = 0
    router_replicas: int = 0
    other_running_layouts: tuple[str, ...] = ()
    """Layouts besides the active one whose pods run (a target starting, one kept for rollback)."""
    stored_layouts: tuple[str, ...] = ()
    """Layouts whose artifacts are in the store (a build of one reuses them: verify only)."""
    last_rollout_seconds: float | None = None
    """How long the serving layout took from planned to serving, as the status recorded it."""
    last_build_seconds: float | None = None
    """How long its build took (planned to first seen built), when the store records it."""
    applied: RecommenderClusterSpec | None = None
    """The spec as last applied; None when only the status is known (then pod-template changes
    cannot be told apart from no change)."""
    live_ef_search: int | None = None
    """The efSearch the routers send now (the stored topology's), when the applied spec is unknown."""

    @property
    def nothing(self) -> bool:
        return not self.active_layout


NOTHING_DEPLOYED: Final = Deployed()


def deployed_from_status(
    status: RecommenderClusterStatus | None,
    applied: RecommenderClusterSpec | None = None,
    live_ef_search: int | None = None,
    router_replicas: int | None = None,
) -> Deployed:
    """The running state a status describes; no serving layout means nothing deployed (the
    applied spec is then ignored: nothing of it runs). `router_replicas` is what the router
    workload asks for, when the caller sees it; else the applied spec's; else the ready routers
    the status counts."""
    if status is None or not status.active_layout:
        return NOTHING_DEPLOYED
    shards = next((lay.shards for lay in status.layouts if lay.name == status.active_layout), 0)
    others = tuple(
        lay.name
        for lay in status.layouts
        if lay.name != status.active_layout and lay.state in RUNNING_STATES and not lay.deleting
    )
    replicas = status.replicas_per_shard or (applied.replicas_per_shard if applied else 0)
    routers = (
        router_replicas
        if router_replicas is not None
        else _router_replicas(applied)
        if applied is not None
        else status.routers.ready_replicas
    )
    return Deployed(
        active_layout=status.active_layout,
        active_version=status.active_version,
        shards=shards,
        replicas_per_shard=replicas,
        router_replicas=routers,
        other_running_layouts=others,
        stored_layouts=tuple(lay.name for lay in status.stored_layouts if not lay.deleting),
        **_last_rollout(status),
        applied=applied,
        live_ef_search=live_ef_search,
    )


def _last_rollout(status: RecommenderClusterStatus) -> dict[str, float | None]:
    """The serving layout's rollout and build durations, from the times the status keeps."""
    active = next((lay for lay in status.layouts if lay.name == status.active_layout), None)
    built = next((lay for lay in status.stored_layouts if lay.name == status.active_layout), None)
    found: dict[str, float | None] = {"last_rollout_seconds": None, "last_build_seconds": None}
    if active is None:
        return found
    try:
        planned = parse_time(active.created_at)
        if active.state == "Serving":
            found["last_rollout_seconds"] = (parse_time(active.state_since) - planned).total_seconds()
        if built is not None:
            found["last_build_seconds"] = (parse_time(built.built_at) - planned).total_seconds()
    except ValueError:
        return {"last_rollout_seconds": None, "last_build_seconds": None}
    return {key: value if value is not None and value >= 0 else None for key, value in found.items()}


# --- quantities ----------------------------------------------------------------------------------

_QUANTITY = re.compile(r"^([+-]?[0-9.]+)([eE][-+]?[0-9]+|[a-zA-Z]*)$")
_SUFFIX: Final = {
    "": 1.0, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15,
    "Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40, "Pi": 2.0**50,
}  # fmt: skip


def quantity(text: str) -> float:
    """A Kubernetes quantity as a number (`500m` -> 0.5, `2Gi` -> 2147483648, `1e9` -> 1e9)."""
    match = _QUANTITY.match(text.strip())
    if match is None:
        raise ValueError(f"not a Kubernetes quantity: {text!r}")
    number, suffix = match.groups()
    if suffix[:1] in ("e", "E"):
        return float(number + suffix)
    if suffix not in _SUFFIX:
        raise ValueError(f"unknown quantity suffix in {text!r}")
    return float(number) * _SUFFIX[suffix]


@dataclass(frozen=True)
class Requests:
    """CPU cores and memory bytes the scheduler must place; None: that request is not set."""

    cpu: float | None
    memory: float | None

    def times(self, pods: int) -> Requests:
        return Requests(
            None if self.cpu is None else self.cpu * pods,
            None if self.memory is None else self.memory * pods,
        )

    def plus(self, other: Requests) -> Requests:
        def add(a: float | None, b: float | None) -> float | None:
            return a if b is None else b if a is None else a + b

        return Requests(add(self.cpu, other.cpu), add(self.memory, other.memory))


NO_REQUESTS: Final = Requests(None, None)


def requests_of(requirements: ResourceRequirements) -> Requests:
    """What the scheduler reserves per container: requests, else the limits (Kubernetes defaults
    a missing request to the limit)."""

    def one(name: Literal["cpu", "memory"]) -> float | None:
        text = requirements.requests.get(name) or requirements.limits.get(name)
        return None if text is None else quantity(text)

    return Requests(one("cpu"), one("memory"))


def _build_requirements(spec: RecommenderClusterSpec) -> ResourceRequirements:
    return spec.resources.build if spec.resources.build is not None else spec.resources.shard


def _cores(requirements: ResourceRequirements) -> int | None:
    """Build workers a container's CPU allows: its limit, else its request, rounded up (the
    operator passes the same number as --workers)."""
    for quantities in (requirements.limits, requirements.requests):
        if "cpu" in quantities:
            return max(1, math.ceil(quantity(quantities["cpu"]) - 1e-9))
    return None


def build_pods(spec: RecommenderClusterSpec) -> int:
    """Pods of one layout's build: one per shard on an object store (an Indexed Job), else one
    pod that builds every shard (the operator's `index_build.per_shard_build`)."""
    return spec.shards if spec.index.store.object_store is not None and spec.shards > 1 else 1


def _router_replicas(spec: RecommenderClusterSpec) -> int:
    autoscaling = spec.router.autoscaling
    return autoscaling.min_replicas if autoscaling is not None else spec.router.replicas


# --- the plan ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Build:
    layout: str
    version: str
    shards: int
    items_per_shard: int | None
    pods: int
    """Build Job pods (one per shard on an object store)."""
    seconds: float | None
    reuses_artifacts: bool = False
    """The layout is in the store already: the Job only verifies it."""


@dataclass(frozen=True)
class PodChange:
    kind: PodKind
    layout: str
    """Layout of shard pods and build Jobs; empty for routers."""
    added: int = 0
    removed: int = 0
    replaced: int = 0
    """Replaced one at a time with the same count running (template roll, rolling update)."""
    note: str = ""


@dataclass(frozen=True)
class Risk:
    severity: Severity
    code: str
    message: str


@dataclass(frozen=True)
class PlanPreview:
    """The whole preview; every figure in SI units (cores, bytes, seconds)."""

    cluster: str
    kind: ChangeKind
    summary: str
    current: str
    changes: tuple[str, ...]
    builds: tuple[Build, ...]
    pods: tuple[PodChange, ...]
    peak_extra_requests: Requests
    """Requests of the pods that run beside the current ones at the peak of the change."""
    peak_extra_pods: int
    peak_extra_resident_bytes: float | None
    """Measured-rate estimate of the extra shard pods' resident memory (None: items or rates unknown)."""
    duration_seconds: float | None
    """Build + load of the new layout (None: no build, or items or rates unknown)."""
    holds_extra_seconds: float | None
    """How long the extra pods run: the duration plus the rollback window they are kept for."""
    disruptive: bool
    """Pods are added, removed or replaced, or a layout is built."""
    refused: tuple[str, ...]
    """Transition rules the API server (and the local runtime) refuse this change with."""
    risks: tuple[Risk, ...]
    notes: tuple[str, ...]
    rates_source: str = ""
    items: int | None = None
    new_layout: str = ""
    unresolved: tuple[str, ...] = field(default_factory=tuple)
    """Figures left out, and why (no item count, no measured rates, no requests set)."""

    @property
    def breaks_availability(self) -> bool:
        return any(risk.severity == "risk" for risk in self.risks)


SpecField = tuple[str, Callable[[RecommenderClusterSpec], object]]

_SHARD_TEMPLATE_FIELDS: Final[tuple[SpecField, ...]] = (
    ("image", lambda s: s.image),
    ("imagePullPolicy", lambda s: s.image_pull_policy),
    ("resources.shard", lambda s: s.resources.shard),
    ("podTemplates.shard", lambda s: s.pod_templates.shard),
    ("rollout.drainSeconds", lambda s: s.rollout.drain_seconds),
    ("monitoring.scrapeAnnotations", lambda s: s.monitoring.scrape_annotations),
)
_ROUTER_TEMPLATE_FIELDS: Final[tuple[SpecField, ...]] = (
    ("image", lambda s: s.image),
    ("imagePullPolicy", lambda s: s.image_pull_policy),
    ("resources.router", lambda s: s.resources.router),
    ("podTemplates.router", lambda s: s.pod_templates.router),
    # The router's settings file is the whole RouterSpec + AuthSpec, replicas included, and a hash
    # of it is on the pod template (desired.router): any router.* or auth change rolls the routers.
    ("router", lambda s: s.router),
    ("auth", lambda s: s.auth),
    ("rollout.drainSeconds", lambda s: s.rollout.drain_seconds),
    ("monitoring.scrapeAnnotations", lambda s: s.monitoring.scrape_annotations),
)
"""Spec fields on the router Deployment's pod template; tests/controller/test_plan_preview.py
checks both lists against the operator's builders."""


def _changed(
    fields: tuple[SpecField, ...], old: RecommenderClusterSpec, new: RecommenderClusterSpec
) -> list[str]:
    """Names of the fields that differ between `old` and `new`."""
    return [name for name, get in fields if get(old) != get(new)]


@dataclass
class _Draft:
    """The plan while `preview` assembles it."""

    spec: RecommenderClusterSpec
    deployed: Deployed
    target: LayoutSpec
    rates: Rates | None
    per_shard: int | None
    kind: ChangeKind = "none"
    changes: list[str] = field(default_factory=list)
    pods: list[PodChange] = field(default_factory=list)
    builds: list[Build] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    peak: Requests = NO_REQUESTS
    peak_pods: int = 0
    peak_resident: float | None = None
    duration: float | None = None
    hold: float | None = None

    @property
    def shard_requests(self) -> Requests:
        return requests_of(self.spec.resources.shard)

    def resident_per_shard_pod(self) -> float | None:
        if self.rates is None or self.per_shard is None:
            return None
        return self.per_shard * self.rates.resident_bytes_per_item + self.rates.shard_baseline_bytes

    def extra_shard_pods(self, count: int) -> None:
        """`count` more shard pods run at the peak of the change."""
        self.peak = self.peak.plus(self.shard_requests.times(count))
        self.peak_pods += count
        per_pod = self.resident_per_shard_pod()
        self.peak_resident = None if per_pod is None else per_pod * count + (self.peak_resident or 0.0)


def preview(
    name: str,
    spec: RecommenderClusterSpec,
    deployed: Deployed,
    rates: Rates | None = None,
    items: int | None = None,
    *,
    carries_writes: bool = False,
    runs_carriers: bool = False,
    serving_logs_writes: bool | None = None,
) -> PlanPreview:
    """The plan of `spec` over `deployed` (see the module docstring). `carries_writes`: the hands
    carry logged item writes into any next layout by themselves (the local runtime);
    `runs_carriers`: the planner drives a carrier into a new layout, and back into a kept one (the
    operator); `serving_logs_writes`: whether the serving layout keeps write logs (None: not known
    to the caller). Together they say whether the planner would carry or refuse a layout change
    (`shardrec.planning.carrying`, `predicates.writes_carried_to_new_layout`)."""
    target = LayoutSpec.from_spec(spec)
    applied = deployed.applied
    refused = tuple(transition_errors(applied, spec)) if applied is not None else ()
    per_shard = None if items is None else math.ceil(items / target.shards)
    draft = _Draft(spec, deployed, target, rates, per_shard)
    unresolved: list[str] = []
    if items is None:
        unresolved.append("item count unknown: no resident memory or duration estimate")
    if rates is None:
        unresolved.append("no measured rates (benchmarks/coefficients.json): no resident memory or duration")
    if requests_of(spec.resources.shard) == NO_REQUESTS:
        unresolved.append(
            "spec.resources.shard sets no requests: the scheduler reserves nothing per shard pod"
        )
    if target.id in deployed.other_running_layouts:
        _switch(draft)
    elif deployed.nothing or target.id != deployed.active_layout:
        _rebuild(draft)
    else:
        _in_place(draft)
    _routers(draft)
    if spec.paused:
        draft.notes.append("spec.paused is true: nothing of this happens until it is false")
    return PlanPreview(
        cluster=name,
        kind=draft.kind,
        summary=_summary(draft.kind, target, deployed, refused),
        current=_current(deployed),
        changes=tuple(draft.changes) or ("no change to layouts, replicas or pods",),
        builds=tuple(draft.builds),
        pods=tuple(draft.pods),
        peak_extra_requests=draft.peak,
        peak_extra_pods=draft.peak_pods,
        peak_extra_resident_bytes=draft.peak_resident,
        duration_seconds=draft.duration,
        holds_extra_seconds=draft.hold,
        disruptive=any(p.added or p.removed or p.replaced for p in draft.pods) or bool(draft.builds),
        refused=refused,
        risks=_risks(spec, deployed, draft.kind, refused)
        + _writes_risks(spec, draft.kind, carries_writes, runs_carriers, serving_logs_writes),
        notes=tuple(draft.notes),
        rates_source=rates.source if rates is not None else "",
        items=items,
        new_layout=target.id,
        unresolved=tuple(unresolved),
    )


def _rebuild(draft: _Draft) -> None:
    """A new layout: build it, start its shards beside the serving ones, switch, retire the old."""
    spec, deployed, target = draft.spec, draft.deployed, draft.target
    tid, replicas = target.id, spec.replicas_per_shard
    if deployed.nothing:
        draft.kind = "create"
        draft.changes.append(
            f"nothing deployed: create layout {tid} (version {target.version}, {target.shards} shards)"
        )
    else:
        draft.kind = "rebuild"
        draft.changes.extend(_layout_changes(deployed, deployed.applied, spec, tid))
    build_seconds, load_seconds = _build_and_load(spec, target.shards, draft.per_shard, draft.rates)
    reuse = tid in deployed.stored_layouts
    if reuse:
        build_seconds = None if load_seconds is None else load_seconds  # verify: about a load's reading
        draft.notes.append(f"layout {tid} is in the store already: its build Job verifies it, no rebuild")
    bpods = build_pods(spec)
    draft.builds.append(
        Build(tid, target.version, target.shards, draft.per_shard, bpods, build_seconds, reuse)
    )
    draft.pods.append(
        PodChange("build", tid, added=bpods, removed=bpods, note="Job pods, gone once the layout is built")
    )
    new_pods = target.shards * replicas
    draft.pods.append(
        PodChange("shard", tid, added=new_pods, note=f"{target.shards} shards x {replicas} replicas")
    )
    if not deployed.nothing:
        _retire_active(draft)
    # The build runs before the shards start (the planner starts them once it succeeded), so the
    # peak is the larger of the two, never their sum.
    build_peak = requests_of(_build_requirements(spec)).times(bpods)
    draft.extra_shard_pods(new_pods)
    if not _bigger(draft.peak, build_peak):
        draft.peak, draft.peak_pods = build_peak, max(bpods, new_pods)
    if build_seconds is not None and load_seconds is not None:
        draft.duration = build_seconds + load_seconds
        kept = spec.rollout.keep_previous_layouts and not deployed.nothing
        draft.hold = draft.duration + (spec.rollout.rollback_window_seconds if kept else 0)
    draft.notes.append(
        "first layout: nothing serves until every shard is ready"
        if deployed.nothing
        else "blue/green: the current layout serves until every new shard is ready, then the routers "
        "switch in one step"
    )
    if deployed.last_rollout_seconds is not None:
        build = (
            f" (its build {deployed.last_build_seconds:.0f} s)"
            if deployed.last_build_seconds is not None
            else ""
        )
        draft.notes.append(
            f"observed here: the serving layout {deployed.active_layout} took "
            f"{deployed.last_rollout_seconds:.0f} s from planned to serving{build}"
        )
    if not deployed.nothing and deployed.other_running_layouts:
        draft.notes.append(
            f"also running: layouts {', '.join(deployed.other_running_layouts)} (starting, or kept for "
            "rollback); they are not counted above"
        )


def _search_cost(rates: Rates, old: int, new: int) -> str:
    """What an efSearch change does to the measured CPU of a shard query."""
    before, after = rates.search_ms(old), rates.search_ms(new)
    if before is None or after is None:
        top = rates.search_ms_by_ef[-1][0] if rates.search_ms_by_ef else 0
        return f"efSearch {max(old, new)} is beyond the measured range (up to {top}): CPU per query unknown"
    return (
        f"measured search CPU per shard query: {before:.3f} ms at efSearch {old} -> {after:.3f} ms at "
        f"{new} (x{after / before:.2f}); check the shards' CPU headroom before raising it"
    )


def _retire_active(draft: _Draft) -> None:
    spec, deployed = draft.spec, draft.deployed
    window = spec.rollout.rollback_window_seconds
    draft.pods.append(
        PodChange(
            "shard",
            deployed.active_layout,
            removed=deployed.shards * deployed.replicas_per_shard,
            note=(
                f"kept {window} s after the switch for rollback, then removed"
                if spec.rollout.keep_previous_layouts
                else f"removed after the switch and a {spec.rollout.drain_seconds} s drain"
            ),
        )
    )


def _switch(draft: _Draft) -> None:
    """The spec names a layout whose pods run already (kept for rollback, or starting): no build,
    no new shard pods; the routers switch once it is ready (a rollback is this)."""
    tid = draft.target.id
    draft.kind = "switch"
    draft.changes.extend(_layout_changes(draft.deployed, draft.deployed.applied, draft.spec, tid)[:-1])
    draft.changes.append(
        f"=> layout {tid} runs already (kept for rollback, or starting): no build, no new shard pods; "
        "the routers switch to it once every shard is ready"
    )
    _retire_active(draft)


def _in_place(draft: _Draft) -> None:
    """Same layout: scale it, roll its pod template, or change efSearch live."""
    spec, deployed, tid = draft.spec, draft.deployed, draft.target.id
    replicas = spec.replicas_per_shard
    delta = replicas - deployed.replicas_per_shard
    if delta:
        draft.kind = "scale"
        draft.changes.append(
            f"replicasPerShard {deployed.replicas_per_shard} -> {replicas}: scale layout {tid}, no rebuild"
        )
        count = abs(delta) * deployed.shards
        draft.pods.append(
            PodChange("shard", tid, added=count if delta > 0 else 0, removed=count if delta < 0 else 0)
        )
        if delta > 0:
            draft.extra_shard_pods(count)
            if draft.rates is not None and draft.per_shard is not None:
                rates = draft.rates
                draft.duration = (
                    draft.per_shard * rates.index_file_bytes_per_item / rates.load_bytes_per_second
                )
                draft.hold = draft.duration
    applied = deployed.applied
    live_ef = applied.index.hnsw.ef_search if applied is not None else deployed.live_ef_search
    if live_ef is not None and live_ef != spec.index.hnsw.ef_search:
        draft.kind = "live" if draft.kind == "none" else draft.kind
        draft.changes.append(
            f"index.hnsw.efSearch {live_ef} -> {spec.index.hnsw.ef_search}: "
            "live, the routers send it with the next queries; no pod restarts"
        )
        if draft.rates is not None:
            draft.notes.append(_search_cost(draft.rates, live_ef, spec.index.hnsw.ef_search))
    if applied is None:
        draft.notes.append(
            "the spec last applied is unknown (status only): pod-template changes (image, resources, "
            "podTemplates) cannot be seen" + ("" if live_ef is not None else ", nor efSearch changes")
        )
        return
    rolled = _changed(_SHARD_TEMPLATE_FIELDS, applied, spec)
    if rolled:
        draft.kind = "roll" if draft.kind in ("none", "live") else draft.kind
        draft.changes.append(
            f"shard pod template ({', '.join(rolled)}): every shard pod is replaced, one shard at a time"
        )
        surge = replicas == 1
        draft.pods.append(
            PodChange(
                "shard",
                tid,
                replaced=deployed.shards * min(replicas, deployed.replicas_per_shard),
                note="one extra pod per shard while its only replica is replaced"
                if surge
                else "one pod at a time; the others keep serving",
            )
        )
        if surge and draft.peak_pods == 0:
            draft.extra_shard_pods(1)


def _routers(draft: _Draft) -> None:
    """Routers: scaled in place, rolled by their Deployment (maxUnavailable 0, maxSurge 1)."""
    spec, deployed = draft.spec, draft.deployed
    routers = _router_replicas(spec)
    router_requests = requests_of(spec.resources.router)
    delta = routers - deployed.router_replicas
    if delta:
        draft.changes.append(
            f"routers: {routers}" if deployed.nothing else f"routers {deployed.router_replicas} -> {routers}"
        )
        draft.pods.append(PodChange("router", "", added=max(delta, 0), removed=max(-delta, 0)))
        if delta > 0:
            draft.peak = draft.peak.plus(router_requests.times(delta))
            draft.peak_pods += delta
        if draft.kind == "none":
            draft.kind = "scale"
    applied = deployed.applied
    if applied is None or deployed.nothing:
        return
    rolled = _changed(_ROUTER_TEMPLATE_FIELDS, applied, spec)
    if rolled:
        draft.kind = "roll" if draft.kind in ("none", "live") else draft.kind
        draft.changes.append(f"router pod template ({', '.join(rolled)}): routers replaced one at a time")
        draft.pods.append(
            PodChange(
                "router",
                "",
                replaced=min(routers, deployed.router_replicas),
                note="one surge pod at a time",
            )
        )
        draft.peak = draft.peak.plus(router_requests)
        draft.peak_pods += 1


def _bigger(a: Requests, b: Requests) -> bool:
    """Whether `a` asks the scheduler for more than `b` (memory first, then CPU)."""
    return (a.memory or 0.0, a.cpu or 0.0) >= (b.memory or 0.0, b.cpu or 0.0)


def _build_and_load(
    spec: RecommenderClusterSpec, shards: int, per_shard: int | None, rates: Rates | None
) -> tuple[float | None, float | None]:
    """Build seconds (every build pod in parallel, each with the cores its CPU allows; 1 when
    unset) and the load seconds of one shard (every replica loads in parallel)."""
    if rates is None or per_shard is None:
        return None, None
    cores = _cores(_build_requirements(spec)) or 1
    items_per_pod = per_shard if build_pods(spec) > 1 else per_shard * shards
    build = items_per_pod / (rates.build_items_per_core_second * cores)
    load = per_shard * rates.index_file_bytes_per_item / rates.load_bytes_per_second
    return build, load


def _layout_changes(
    deployed: Deployed, applied: RecommenderClusterSpec | None, spec: RecommenderClusterSpec, tid: str
) -> list[str]:
    lines: list[str] = []
    if deployed.active_version != spec.index.version:
        lines.append(f"index.version {deployed.active_version} -> {spec.index.version}")
    if deployed.shards != spec.shards:
        lines.append(f"shards {deployed.shards} -> {spec.shards}")
    if applied is not None:
        for label, old, new in (
            ("index.source", applied.index.source, spec.index.source),
            ("index.hnsw.m", applied.index.hnsw.m, spec.index.hnsw.m),
            (
                "index.hnsw.efConstruction",
                applied.index.hnsw.ef_construction,
                spec.index.hnsw.ef_construction,
            ),
            ("partitioning.scheme", applied.partitioning.scheme, spec.partitioning.scheme),
            # Part of the layout: a StatefulSet's claim templates cannot change (planning.layouts).
            ("writes.enabled", applied.writes.enabled, spec.writes.enabled),
        ):
            if old != new:
                lines.append(f"{label} {old} -> {new}")
        if applied.writes.enabled and spec.writes.enabled:  # the log volume counts only while on
            for label, old_volume, new_volume in (
                ("writes.logVolume.size", applied.writes.log_volume.size, spec.writes.log_volume.size),
                (
                    "writes.logVolume.storageClassName",
                    applied.writes.log_volume.storage_class_name,
                    spec.writes.log_volume.storage_class_name,
                ),
            ):
                if old_volume != new_volume:
                    lines.append(f"{label} {old_volume} -> {new_volume}")
    if not lines:
        lines.append("the layout's definition changed")
    return [*lines, f"=> new layout {tid}: built, then switched to blue/green"]


def _risks(
    spec: RecommenderClusterSpec, deployed: Deployed, kind: ChangeKind, refused: tuple[str, ...]
) -> tuple[Risk, ...]:
    risks: list[Risk] = []
    strict = spec.router.consistency == "strict"
    if refused:
        risks.append(Risk("info", "Refused", "the API server refuses this change: " + "; ".join(refused)))
    if spec.replicas_per_shard == 1:
        risks.append(
            Risk(
                "risk",
                "SingleReplica",
                "replicasPerShard is 1: a node drain (the shard PDB allows maxUnavailable 1) or a crash "
                "takes a shard offline"
                + (
                    "; router.consistency strict answers 503 meanwhile"
                    if strict
                    else "; answers are partial meanwhile (router.consistency available)"
                ),
            )
        )
    if kind == "scale" and 0 < spec.replicas_per_shard < deployed.replicas_per_shard:
        risks.append(
            Risk(
                "info",
                "ScaleDown",
                f"{deployed.replicas_per_shard - spec.replicas_per_shard} replica(s) per shard removed: "
                "less headroom for load and for pod loss",
            )
        )
    if _router_replicas(spec) == 1:
        risks.append(
            Risk(
                "risk",
                "SingleRouter",
                "one router replica: a node drain or crash stops every request until it is back",
            )
        )
    if kind == "rebuild":
        if spec.rollout.keep_previous_layouts == 0:
            risks.append(
                Risk(
                    "info",
                    "NoRollback",
                    "rollout.keepPreviousLayouts is 0: the old layout is deleted after the switch, a "
                    "rollback rebuilds it",
                )
            )
        risks.append(
            Risk(
                "info",
                "NeedsCapacity",
                "the new layout's pods must be scheduled beside the current ones; if they cannot, the "
                "rollout waits and is abandoned after rollout.timeoutSeconds "
                f"({spec.rollout.timeout_seconds} s) "
                "while the current layout keeps serving",
            )
        )
    return tuple(risks)


def _writes_risks(
    spec: RecommenderClusterSpec,
    kind: ChangeKind,
    carries_writes: bool,
    runs_carriers: bool,
    serving_logs_writes: bool | None,
) -> tuple[Risk, ...]:
    """With writes on: how a layout change treats the writes the serving layout logged (carried
    into a new layout by a carrier, carried back into a kept one, or refused)."""
    if kind not in ("rebuild", "switch") or not spec.writes.enabled or carries_writes:
        return ()
    if serving_logs_writes is False:
        return ()
    condition = (
        "if the serving layout logs item writes (spec.writes was on when it was built), "
        if serving_logs_writes is None
        else ""
    )
    if runs_carriers and kind == "rebuild":
        carried = (
            "the operator carries the logged item writes into the new layout: a carrier Deployment cuts "
            "the serving layout's logs before the build (which folds them in), forwards later writes, "
            "and fences the old leaders right before the switch (writes get a 503 for that moment and "
            "are retried); the old layout is deleted only once the carrier is done"
        )
        return (Risk("info", "WritesCarried", condition + carried),)
    if runs_carriers:
        carried_back = (
            "the operator carries the logged item writes back into the kept layout (a carry back: a "
            "carrier Deployment opens its leaders and replays the serving layout's logs onto its "
            "replicas, no build), and fences the serving layout's leaders right before the switch "
            "(writes get a 503 for that moment and are retried); it first waits for a carry into the "
            "serving layout to be done, and refuses the change (blockedBy writes_carried_to_new_layout) "
            "when the serving layout was not carried from this one (roll back one layout at a time)"
        )
        return (Risk("info", "WritesCarriedBack", condition + carried_back),)
    refusal = (
        "nothing carries logged item writes into a new layout here, so the planner refuses this change "
        "(blockedBy writes_carried_to_new_layout) and the serving layout keeps serving; set "
        "spec.writes.enabled false with it to go ahead without them"
    )
    return (Risk("info", "WritesNotCarried", condition + refusal),)


def _current(deployed: Deployed) -> str:
    if deployed.nothing:
        return "nothing deployed"
    return (
        f"layout {deployed.active_layout} (version {deployed.active_version}, {deployed.shards} shards x "
        f"{deployed.replicas_per_shard} replicas), {deployed.router_replicas} routers"
    )


def _summary(kind: ChangeKind, target: LayoutSpec, deployed: Deployed, refused: tuple[str, ...]) -> str:
    tid = target.id
    prefix = "REFUSED by the API server; otherwise: " if refused else ""
    text = {
        "create": f"create layout {tid} (version {target.version}, {target.shards} shards)",
        "rebuild": f"build layout {tid} (version {target.version}, {target.shards} shards) and switch "
        f"from {deployed.active_layout} blue/green",
        "switch": f"switch back to the running layout {tid} (version {target.version}), no build",
        "scale": f"scale layout {tid} in place, no rebuild",
        "roll": f"replace the pods of layout {tid} one at a time, no rebuild",
        "live": "live change only: no pod is added, removed or restarted",
        "none": "nothing to do",
    }[kind]
    return prefix + text
