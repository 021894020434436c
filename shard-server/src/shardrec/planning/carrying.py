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

    timed out (rollout_within_timeout): building or starting past rollout.timeoutSeconds from T's
        creation, or Ready and still not caught up, or the hand-over asked for not reported (or
        failed) rollout.timeoutSeconds after T turned Ready (`timed_carry_wait`): T is Failed,
        abandoned as below

    abandoned (T superseded, failed or timed out) after a hand-over was asked for (reported or
    not: an unanswered one may have fenced), S still serving:
        EnsureCarrier(T, S, hand_over=R, open=O); report: opened O; DeleteLayout(T) waits
        until then (open_fenced_source_before_deleting); without a hand-over, DeleteLayout(T)
        takes the carrier with it at once. Once T is gone its carry is forgotten
        (`carry_remembered`): a retry never resumes its progress.

A rollback to a kept layout K (its replicas still run, with K's artifact and K's own logs) from
the serving layout S that was carried from K is a carry back: what K lacks is exactly what S's
logs hold (records forwarded from K after the cut, then S's own writes; K was fenced before S took
any), so replaying S's logs from their first record onto K gives every item its latest state. The
same steps minus the cut and the build:

    spec asks for K, S logs writes, K kept with its replicas, S carried from K
        |  the carry into S still forwarding: EnsureCarrier(K, S, back) waits
        |                                     carry_back_after_carry_into_serving_done
        |  EnsureCarrier(K, S, back)                    [carrier created: opens K's leaders,
        v                                                forwards S's logs from sequence 0]
    forwarding --- StageRouter/SwitchRouter(K) wait --- traffic_after_carry_caught_up
        |  report: caught_up
        v
    caught up ---- hand-over (S's leaders fenced), SwitchRouter(K), finish, done, DeleteCarrier(K),
                   as above; S is then a kept layout (fenced leaders) deleted after its window,
                   not before the carry back is done (keep_carry_source_until_done)

    abandoned (the spec leaves K before the switch): as a forward carry. K, made the target and
        left before it served, is superseded and deleted (`records`), its carrier with it; after
        a hand-over only once the carrier opened S's leaders again (EnsureCarrier(K, S, back,
        open=O), open_fenced_source_before_deleting).

    refused (predicates.writes_carried_to_new_layout): K's replicas are gone (its rollback window
    passed: its logs went with them), or S was not carried from K (S then holds writes K never
    saw outside S's logs: its carry folder).

`status.carries` remembers each carry (fenced, done, back) while its carrying layout exists, so a
carrier deleted by hand is recreated (it resumes from its progress on the store) and still opens
fenced leaders or finishes; a carry back into K keeps K's own forward carry listed beside it (a
later carry from K folds that carry's folder in: `prior`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from shardrec.api.v1alpha1 import CarryStatus, LayoutStatus, RecommenderClusterSpec
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
    back: bool = False
    """A carry back into the kept layout `layout` from `source`, which was carried from it."""
    shadowed: CarryStatus | None = None
    """A carry back's: the forward carry `layout` was built with (done), still listed in
    `status.carries` beside the carry back."""

    @property
    def built_with_carry(self) -> bool:
        """`layout` was built with a carry folder: a carry from it folds that folder in (`prior`)."""
        return not self.back or self.shadowed is not None

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
    def hand_over_unanswered(self) -> bool:
        """A hand-over was asked for and the carrier reported neither that it went through nor that
        it failed: it may be fencing the source's leaders right now, or have fenced them and not
        reported yet (a hung or lost carrier never will)."""
        carrier = self.carrier
        return (
            carrier is not None
            and carrier.hand_over_requested is not None
            and not carrier.handed_over
            and not carrier.hand_over_failed
        )

    @property
    def fenced(self) -> bool:
        """The source's leaders may be fenced by this carry's hand-over and are not opened again:
        the hand-over went through, or was asked for and never answered (an abandoned switch must
        open them either way; the carrier answers an open request whether it fenced or not). A
        carrier recreated after it was lost does not know its old hand-over: the status remembers
        it. A done carry holds nothing fenced that could need opening: the switch went through."""
        if self.done:
            return False
        remembered = self.remembered is not None and self.remembered.fenced
        if self.carrier is None:
            return remembered
        maybe = self.carrier.handed_over or self.hand_over_unanswered
        return (maybe or remembered) and not self.carrier.opened

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
            back=self.back,
            message=message[:4096],
        )


def timed_carry_wait(carry: Carry | None) -> str | None:
    """What the carry into a built, Ready target still waits for that `rollout.timeoutSeconds`
    bounds (None: nothing, or no carry). The build and start of the target are bounded already
    (`predicates.rollout_within_timeout`); after them a carrier that never catches up, or a
    hand-over that never reports (or keeps failing), would hold the rollout for good with the
    old layout's writes forwarded forever. Not counted: a hand-over not asked for yet (something
    else holds the switch: routers preparing, the quality gate, which have their own rules)."""
    if carry is None or carry.done:
        return None
    if not carry.caught_up:
        return f"its carrier has not caught up with the writes layout {carry.source} logs"
    carrier = carry.carrier
    if carrier is not None and carrier.hand_over_requested is not None and not carry.handed_over:
        outcome = "failed" if carrier.hand_over_failed else "was not reported"
        return f"its carrier's hand-over {carrier.hand_over_requested} from layout {carry.source} {outcome}"
    return None


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


def carry_back_refusal(
    observed: Observed, carries: Mapping[str, Carry], kept: str, source: str
) -> str | None:
    """Why the writes the serving layout `source` logged cannot be carried back into the kept
    layout `kept` (None: they can). A carry back replays `source`'s logs onto `kept`'s running
    replicas; that is all `kept` lacks only when `source` was carried from `kept` (its artifact is
    then `kept`'s state at the cut, and `kept` took no write after the hand-over)."""
    layout = observed.layout(kept)
    if layout is None or not layout.shards:
        return (
            f"the replicas of layout {kept} and their write logs are gone (its rollback window passed), "
            "so nothing can take the writes back"
        )
    if not layout.spec.write_log:
        return f"layout {kept} keeps no write log (writes were off when it was built)"
    into_source = carries.get(source)
    if into_source is None:
        return f"layout {source} was not carried from layout {kept}: it was built without a carry"
    if into_source.source != kept:
        return (
            f"layout {source} was carried from layout {into_source.source}, not from layout {kept}: it holds "
            f"writes layout {kept} never saw outside its own logs (roll back one layout at a time)"
        )
    return None


def _planned(
    spec: RecommenderClusterSpec, observed: Observed, target: LayoutSpec, carries: Mapping[str, Carry]
) -> Carry | None:
    """The target's carry when it needs a new one: into a new layout (forward), or back into a
    kept layout the serving one was carried from; None when its carry exists or none can be."""
    source = carrying_source(spec, observed, target)
    if source is None:
        return None
    current = carries.get(target.id)
    if not kept_layout(observed, target.id):
        return None if current is not None else Carry(target.id, source.id)
    if current is not None and current.source == source.id and not current.done:
        return None  # it goes on: a revived target, or a carry back resumed
    if current is not None and current.carrier is not None:
        # An earlier carrier of this layout (its own forward carry, or a carry back that is done)
        # goes first: the new one has the same Deployment name, and a done carrier reports done.
        return None
    if carry_back_refusal(observed, carries, target.id, source.id) is not None:
        return None  # writes_carried_to_new_layout says why
    shadowed = current.status() if current is not None and not current.back else None
    if current is not None and current.back:
        shadowed = current.shadowed
    return Carry(target.id, source.id, back=True, shadowed=shadowed)


def carry_remembered(entry: CarryStatus, observed: Observed, records: Mapping[str, LayoutStatus]) -> bool:
    """`status.carries` keeps a carry while its carrying layout exists: observed, or recorded in
    this pass (a target whose build Job does not exist yet is recorded, not observed).

    Not a Failed layout that is gone (abandoned: its build failed, it timed out, a canary rolled it
    back): its carry forwarded writes into replicas that were deleted with it, so the progress it
    left on the store counts records nothing holds any more. Remembered, a retry of the same
    layout (a new generation) would recreate its carrier, which resumes that progress over a
    build that holds only the cut, and the writes between the two would be lost. Forgotten, a
    retry is planned afresh: a rollback to a kept layout whose replicas are gone, refused
    (`carry_back_refusal`), or a new carry into a layout never built. A fenced source outlives it:
    the layout is deleted only once its carrier opened the leaders
    (`predicates.open_fenced_source_before_deleting`)."""
    if observed.layout(entry.layout) is not None:
        return True
    record = records.get(entry.layout)
    return record is not None and record.state != "Failed"


def carries_of(
    spec: RecommenderClusterSpec,
    observed: Observed,
    records: Mapping[str, LayoutStatus],
    target: LayoutSpec,
) -> dict[str, Carry]:
    """Every carry of this pass, by carrying layout: observed carriers, remembered carries
    (`carry_remembered`; `records`: this pass's), and the target's planned carry. A layout
    carried back into keeps its own forward carry as `Carry.shadowed`."""
    remembered: dict[tuple[str, bool], CarryStatus] = {}
    for entry in observed.previous_status.carries:
        if carry_remembered(entry, observed, records):
            remembered[(entry.layout, entry.back)] = entry
    forward = {layout: entry for (layout, back), entry in remembered.items() if not back}
    carries: dict[str, Carry] = {}
    for (layout, back), entry in sorted(remembered.items()):
        shadowed = forward.get(layout) if back else None
        carries[layout] = Carry(layout, entry.from_layout, remembered=entry, back=back, shadowed=shadowed)
    for carrier in observed.carriers:
        before = remembered.get((carrier.layout, carrier.back))
        carries[carrier.layout] = Carry(
            carrier.layout,
            carrier.source,
            carrier=carrier,
            remembered=before if before is not None and before.from_layout == carrier.source else None,
            back=carrier.back,
            shadowed=forward.get(carrier.layout) if carrier.back else None,
        )
    planned = _planned(spec, observed, target, carries)
    if planned is not None:
        carries[target.id] = planned
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
        if carry.done:
            if carrier is not None:
                source_id = carry.source
                proposals.append(DeleteCarrier(layout_id, f"the carry from layout {source_id} is done"))
            continue
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
        prior = not carry.back and carry.source in carries and carries[carry.source].built_with_carry
        hand_over = carrier.hand_over_requested if carrier is not None else None
        back = carry.back
        if layout_id == serving:
            finish = carrier.finish_requested if carrier is not None else None
            if finish is None and not router.switch_in_flight:
                finish = request_id(observed, "finish")
            reason = f"layout {layout_id} serves; forwarding the writes layout {source.id} still takes"
            proposals.append(
                EnsureCarrier(layout, source, reason, prior, hand_over=hand_over, finish=finish, back=back)
            )
        elif active:
            # A revived target (an earlier open request) starts a new hand-over from scratch.
            usable = carrier is not None and carrier.open_requested is None and not carrier.hand_over_failed
            if not usable:
                hand_over = None
            if hand_over is None and switch_awaits_hand_over:
                hand_over = request_id(observed, "hand-over")
            reason = (
                f"layout {layout_id} is kept; carrying back the item writes layout {source.id} logs"
                if back
                else f"layout {layout_id} carries the item writes layout {source.id} logs"
            )
            proposals.append(EnsureCarrier(layout, source, reason, prior, hand_over=hand_over, back=back))
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
                    back=back,
                )
            )
    return proposals


def carry_events(observed: Observed, accepted: Sequence[Action]) -> list[RecordEvent]:
    """Events for the carry steps this pass takes: a carrier created (a carry back says so), a
    hand-over or an open requested (each once: the request is new), a carrier removed (done, or
    abandoned)."""
    events: list[RecordEvent] = []
    for action in accepted:
        if isinstance(action, DeleteCarrier):
            gone = observed.carrier(action.layout_id)
            if gone is None or gone.done:
                back = " back" if gone is not None and gone.back else ""
                events.append(
                    RecordEvent(
                        "Normal",
                        "WritesCarriedBack" if back else "WritesCarried",
                        f"the carrier of layout {action.layout_id} is done",
                    )
                )
            else:
                events.append(RecordEvent("Normal", "CarrierRemoved", action.reason))
        if not isinstance(action, EnsureCarrier):
            continue
        carrier = observed.carrier(action.layout_id)
        into = f"layout {action.layout_id} from layout {action.source.id}"
        if carrier is None and action.back:
            events.append(
                RecordEvent(
                    "Normal",
                    "CarryingWritesBack",
                    f"rolling back to kept layout {action.layout_id}: carrying the item writes layout "
                    f"{action.source.id} logged back into it (its logs replayed from their start; no build)",
                )
            )
        elif carrier is None:
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
    """`status.carries`, by carrying layout (a layout carried back into: its own forward carry
    first, then the carry back)."""
    statuses: list[CarryStatus] = []
    for layout in sorted(carries):
        carry = carries[layout]
        if carry.shadowed is not None:
            statuses.append(carry.shadowed)
        statuses.append(carry.status())
    return statuses


__all__ = [
    "Carry",
    "carries_of",
    "carry_back_refusal",
    "carry_events",
    "carry_remembered",
    "carry_statuses",
    "carrying_source",
    "kept_layout",
    "propose_carriers",
    "request_id",
    "timed_carry_wait",
]
