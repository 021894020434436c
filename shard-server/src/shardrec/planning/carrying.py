"""The carry of logged item writes into a new layout, driven step by step (the operator's hands).

With `spec.writes.enabled` the serving layout's replicas log every acknowledged item write; a new
layout (a version, a shard count) is built from its source alone. A carry brings those writes
along: one carrier per carrying layout (hands that `Observed.runs_carriers`; on Kubernetes a
Deployment running `python -m shardrec.serving.carry`) cuts the old leaders' logs into a carry
folder the build folds in, forwards every later write to the new shards, fences the old leaders
and forwards the rest right before the switch (the hand-over), and keeps forwarding after it
until every router serves the new layout and a last pass finds nothing. The planner never talks
to the carrier: it asks through `EnsureCarrier`'s requests (annotations on the carrier's
Deployment) and reads the carrier's report (`ObservedCarrier.progress`), so every decision is a
function of what is observed and a restarted process resumes at the same step.

One carrying layout T (the target) from the serving layout S:

    spec asks for T, S logs writes, T never built (not a rollback)
        |  EnsureCarrier(T, S)                          [carrier created]
        v
    cutting ------ EnsureBuild(T) waits -------------- build_after_carry_cut
        |  report: cut
        v
    forwarding --- EnsureBuild(T, carry_from=S) (--carry-dir), EnsureShards(T)
        |          StageRouter/SwitchRouter(T) wait --- traffic_after_carry_caught_up
        |  report: caught_up
        v
    caught up ---- StageRouter(T); SwitchRouter(T) waits -- switch_after_hand_over (asked last:
        |          only once nothing else holds the switch is the hand-over requested)
        |  EnsureCarrier(T, S, hand_over=R)             [S's leaders fenced: writes get 503]
        |  report: handed_over R        (hand_over_failed R: leaders opened, ask again with R')
        v
    handed over -- SwitchRouter(T)
        |  every router serves T
        |  EnsureCarrier(T, S, hand_over=R, finish=F)
        |  report: done                 DeleteLayout(S) waits until then: keep_carry_source_until_done
        v
    done --------- DeleteCarrier(T); `status.carries` keeps T's entry while T exists (a later
                   carry from T folds T's own carry folder in: `prior`)

    abandoned (T superseded, failed or timed out) after a hand-over, S still serving:
        EnsureCarrier(T, S, hand_over=R, open=O); report: opened O; DeleteLayout(T) waits
        until then (open_fenced_source_before_deleting); without the hand-over, DeleteLayout(T)
        takes the carrier with it at once.

`status.carries` remembers each carry (fenced, done) while its carrying layout exists, so a
carrier deleted by hand is recreated (it resumes from its carry folder) and still opens fenced
leaders or finishes. A rollback to a kept layout is not carried (its artifact would be reused as
built): `predicates.writes_carried_to_new_layout` refuses it while writes are on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from shardrec.api.v1alpha1 import CarryStatus, RecommenderClusterSpec
from shardrec.planning.actions import Action, DeleteCarrier, EnsureCarrier, RecordEvent
from shardrec.planning.layouts import LayoutSpec
from shardrec.planning.observed import Observed, ObservedCarrier


@dataclass(frozen=True)
class Carry:
    """One carry as this pass knows it: from the carrier observed, else from `status.carries`
    (`remembered`), else planned (the target needs a carrier that does not exist yet)."""

    layout: str
    source: str
    carrier: ObservedCarrier | None = None
    remembered: CarryStatus | None = None

    @property
    def cut_taken(self) -> bool:
        return self.carrier is not None and self.carrier.cut_taken

    @property
    def done(self) -> bool:
        if self.carrier is not None:
            return self.carrier.done
        return self.remembered is not None and self.remembered.done

    @property
    def caught_up(self) -> bool:
        return self.done or (self.carrier is not None and self.carrier.caught_up)

    @property
    def handed_over(self) -> bool:
        """The current hand-over took effect and no open request undid it since (a target revived
        after an abandoned switch needs a new hand-over)."""
        return self.done or (self.carrier is not None and self.carrier.fenced)

    @property
    def fenced(self) -> bool:
        """The source's leaders are fenced by this carry's hand-over and not opened again. A carrier
        recreated after it was lost does not know its old hand-over: the status remembers it. A
        done carry holds nothing fenced that could need opening: the switch went through."""
        if self.done:
            return False
        remembered = self.remembered is not None and self.remembered.fenced
        if self.carrier is None:
            return remembered
        return (self.carrier.handed_over or remembered) and not self.carrier.opened

    def status(self) -> CarryStatus:
        """As `status.carries[]`."""
        progress = self.carrier.progress if self.carrier is not None else None
        previous = self.remembered
        phase = progress.phase if progress is not None else (previous.phase if previous else "")
        message = progress.message if progress is not None else (previous.message if previous else "")
        return CarryStatus(
            layout=self.layout,
            from_layout=self.source,
            phase=phase,
            fenced=self.fenced,
            done=self.done,
            message=message[:4096],
        )


def carrying_source(
    spec: RecommenderClusterSpec, observed: Observed, target: LayoutSpec
) -> LayoutSpec | None:
    """The layout whose logged writes a new target must carry: the serving layout, when the hands
    run carriers, writes are on and it logs them; None otherwise."""
    if not observed.runs_carriers or not spec.writes.enabled:
        return None
    serving = observed.layout(observed.router.confirmed_layout)
    if serving is None or not serving.spec.write_log or serving.id == target.id:
        return None
    return serving.spec


def kept_layout(observed: Observed, layout_id: str) -> bool:
    """The layout was built before (its build succeeded, its artifact is stored, or it reached
    Ready): making it the target again is a rollback, whose artifact would be reused as built."""
    layout = observed.layout(layout_id)
    if layout is not None and layout.build.state == "Succeeded":
        return True
    previous = observed.previous_status
    if any(entry.name == layout_id for entry in previous.stored_layouts):
        return True
    return any(
        entry.name == layout_id and entry.state in ("Ready", "Serving", "Retiring")
        for entry in previous.layouts
    )


def carries_of(
    spec: RecommenderClusterSpec, observed: Observed, existing: set[str], target: LayoutSpec
) -> dict[str, Carry]:
    """Every carry of this pass, by carrying layout: observed carriers, remembered carries whose
    layout still exists (`existing`: this pass's records), and the target's planned carry."""
    carries: dict[str, Carry] = {}
    for entry in observed.previous_status.carries:
        if entry.layout in existing or observed.layout(entry.layout) is not None:
            carries[entry.layout] = Carry(entry.layout, entry.from_layout, remembered=entry)
    for carrier in observed.carriers:
        before = carries.get(carrier.layout)
        remembered = before.remembered if before is not None and before.source == carrier.source else None
        carries[carrier.layout] = Carry(
            carrier.layout, carrier.source, carrier=carrier, remembered=remembered
        )
    source = carrying_source(spec, observed, target)
    if source is not None and target.id not in carries and not kept_layout(observed, target.id):
        carries[target.id] = Carry(target.id, source.id)
    return carries


def request_id(observed: Observed, kind: str) -> str:
    """A new request id: unique per generation and second; the carrier echoes it back."""
    return f"{kind}-{observed.generation}-{int(observed.now.timestamp())}"


def propose_carriers(
    *,
    observed: Observed,
    carries: Mapping[str, Carry],
    specs: Mapping[str, LayoutSpec],
    target: LayoutSpec,
    target_failed: bool,
    switch_awaits_hand_over: bool,
) -> list[EnsureCarrier | DeleteCarrier]:
    """The carrier actions of this pass (see the module docstring's diagram).

    `specs`: the shape of every layout known this pass; `target_failed`: the target is abandoned;
    `switch_awaits_hand_over`: the target's SwitchRouter is held by the hand-over alone."""
    proposals: list[EnsureCarrier | DeleteCarrier] = []
    router = observed.router
    serving = router.confirmed_layout
    for layout_id, carry in sorted(carries.items()):
        carrier = carry.carrier
        active = layout_id == target.id and not target_failed
        if carrier is not None and not active and not carry.fenced and observed.layout(layout_id) is None:
            # Abandoned before its build started (no Job, no StatefulSet: no DeleteLayout takes
            # the carrier with it) and nothing fenced: it just goes.
            reason = f"layout {layout_id} was abandoned before its build started"
            proposals.append(DeleteCarrier(layout_id, reason))
            continue
        layout = specs.get(layout_id)
        source = specs.get(carry.source)
        if layout is None or source is None:
            continue  # a carrier cannot be described without both shapes (both layouts are gone)
        prior = carry.source in carries
        hand_over = carrier.hand_over_requested if carrier is not None else None
        if layout_id == serving:
            if carry.done:
                if carrier is not None:
                    proposals.append(DeleteCarrier(layout_id, f"the carry from layout {source.id} is done"))
                continue
            finish = carrier.finish_requested if carrier is not None else None
            if finish is None and not router.switch_in_flight:
                finish = request_id(observed, "finish")
            reason = f"layout {layout_id} serves; forwarding the writes layout {source.id} still takes"
            proposals.append(EnsureCarrier(layout, source, reason, prior, hand_over=hand_over, finish=finish))
        elif active:
            # A revived target (an earlier open request) starts a new hand-over from scratch.
            usable = carrier is not None and carrier.open_requested is None and not carrier.hand_over_failed
            if not usable:
                hand_over = None
            if hand_over is None and switch_awaits_hand_over:
                hand_over = request_id(observed, "hand-over")
            reason = f"layout {layout_id} carries the item writes layout {source.id} logs"
            proposals.append(EnsureCarrier(layout, source, reason, prior, hand_over=hand_over))
        elif carry.fenced and observed.layout(carry.source) is not None:
            opening = carrier.open_requested if carrier is not None else None
            reason = (
                f"the switch to layout {layout_id} was abandoned after its hand-over fenced the leaders of "
                f"layout {source.id}: open them again"
            )
            proposals.append(
                EnsureCarrier(
                    layout,
                    source,
                    reason,
                    prior,
                    hand_over=hand_over,
                    open=opening or request_id(observed, "open"),
                )
            )
    return proposals


def carry_events(observed: Observed, accepted: Sequence[Action]) -> list[RecordEvent]:
    """Events for the carry steps this pass takes: a carrier created, a hand-over or an open
    requested (each once: the request is new), a carry done."""
    events: list[RecordEvent] = []
    for action in accepted:
        if isinstance(action, DeleteCarrier):
            events.append(
                RecordEvent("Normal", "WritesCarried", f"the carrier of layout {action.layout_id} is done")
            )
        if not isinstance(action, EnsureCarrier):
            continue
        carrier = observed.carrier(action.layout_id)
        into = f"layout {action.layout_id} from layout {action.source.id}"
        if carrier is None:
            events.append(RecordEvent("Normal", "CarrierCreated", f"carrying item writes into {into}"))
        if action.hand_over is not None and (
            carrier is None or carrier.hand_over_requested != action.hand_over
        ):
            events.append(
                RecordEvent(
                    "Normal",
                    "HandOverRequested",
                    f"{into}: fence the old leaders and forward the rest (request {action.hand_over})",
                )
            )
        if action.open is not None and (carrier is None or carrier.open_requested != action.open):
            events.append(
                RecordEvent(
                    "Warning",
                    "OpeningFencedLeaders",
                    f"{into}: the switch was abandoned after the hand-over; opening the leaders of layout "
                    f"{action.source.id} again (request {action.open})",
                )
            )
    return events


def carry_statuses(carries: Mapping[str, Carry]) -> list[CarryStatus]:
    """`status.carries`, by carrying layout."""
    return [carries[layout].status() for layout in sorted(carries)]


__all__ = [
    "Carry",
    "carries_of",
    "carry_events",
    "carry_statuses",
    "carrying_source",
    "kept_layout",
    "propose_carriers",
    "request_id",
]
