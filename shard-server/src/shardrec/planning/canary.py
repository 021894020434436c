"""The canary state machine of `rollout.strategy: Canary`: pure, one step per planner pass.

A candidate layout (the spec's target, built and Ready) is compared with the active layout
(the one the routers serve) through `rollout.canary.steps`, each a shadow (the routers mirror a
sample of live queries to the candidate off the request's path) or a weight (a sticky share of
users is answered by the candidate). The routers measure each step and the hands report the sums
(`CanaryStats`, keyed by candidate and step so a number from another step is never used):

                     +---------------------- command abort -------------------> Aborted
                     |                                                           (terminal)
    (target Ready) --+--> Running(step 0) --pass--> Running(step 1) ... Running(step n-1)
                             |   ^                        |                      |
                             |   +-- hold (too early,     |                      +--pass--> Promoted
                             |       too few requests,    |                      |          (switch)
                             |       no measurements)     |                      |
                             +-------- fail --------------+----------------------+--> RolledBack
                             |                                                        (terminal)
                             +---------------------- command promote ---------------> Promoted

- hold: fewer than `minRequests` measured, or the analysis passes but `minDurationSeconds` has not
  elapsed since the step began (`step_started_at`).
- fail: at least `minRequests` measured and an analysis predicate (`ANALYSIS`) fails; a failing
  step rolls back without waiting out its duration. The planner then marks the candidate Failed
  (the active layout never stopped serving), with an Event, the `CanaryRolledBack` condition and
  the measured numbers in `status.canary.analysis` (a passed step's, in `passed_steps`).
- pass: every predicate passes after min duration AND min requests: the next step, or after the
  last one `Promoted` (the planner switches the routers to the candidate).
- commands: the annotation `shardrec.io/canary-command: promote|abort` (see `command_of`).

Restart-safe: the whole memory is `status.canary` (`CanaryStatus`); a fresh process that reads it
back with the same stats decides the same. A different candidate or active layout starts over
at step 0.

Why an annotation rather than a spec field for the commands: a command is a one-shot act on the
running canary, not desired state. A spec field would bump the generation (which retries failed
layouts and restarts rollout clocks), would stay set and silently promote the *next* candidate
too, and would be reverted by whoever re-applies the manifest from git. An annotation changes no
generation and stays outside GitOps-managed spec. A command already present when a canary starts
is recorded as `ignored_command` and not applied, so a stale `promote` left from an earlier
canary never skips a new candidate's analysis; remove and set it again to apply it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from shardrec.api.canary import CanaryStats
from shardrec.api.v1alpha1 import (
    CanaryAnalysisSpec,
    CanaryAnalysisStatus,
    CanarySpec,
    CanaryStatus,
    CanaryStep,
)
from shardrec.planning.timestamps import format_time, parse_time

CanaryCommand = Literal["promote", "abort"]
Verdict = Literal["hold", "advance", "promote", "rollback", "abort"]
COMMANDS: tuple[CanaryCommand, ...] = ("promote", "abort")


# --- analysis: named predicates, each returns why the step fails or None ----------------------

AnalysisCheck = Callable[[CanaryAnalysisSpec, CanaryAnalysisStatus], str | None]


def overlap_at10_at_least_minimum(spec: CanaryAnalysisSpec, seen: CanaryAnalysisStatus) -> str | None:
    """The candidate's top 10 shares enough items with the active's for the same queries."""
    if seen.overlap_at10 is not None and seen.overlap_at10 < spec.min_overlap_at10:
        return (
            f"overlap@10 {seen.overlap_at10:.3f} < {spec.min_overlap_at10} "
            f"over {seen.compared} compared answers"
        )
    return None


def candidate_p99_within_ratio(spec: CanaryAnalysisSpec, seen: CanaryAnalysisStatus) -> str | None:
    """Candidate p99 <= maxP99Ratio x active p99 + p99SlackMilliseconds."""
    if seen.candidate_p99_ms is None or seen.active_p99_ms is None:
        return None
    allowed = spec.max_p99_ratio * seen.active_p99_ms + spec.p99_slack_milliseconds
    if seen.candidate_p99_ms > allowed:
        return (
            f"candidate p99 {seen.candidate_p99_ms:.1f} ms > {spec.max_p99_ratio} x active "
            f"{seen.active_p99_ms:.1f} ms + {spec.p99_slack_milliseconds} ms"
        )
    return None


def error_rate_within_increase(spec: CanaryAnalysisSpec, seen: CanaryAnalysisStatus) -> str | None:
    """Candidate error rate <= active error rate + maxErrorRateIncrease."""
    if seen.candidate_error_rate is None:
        return None
    active = seen.active_error_rate or 0.0
    if seen.candidate_error_rate > active + spec.max_error_rate_increase:
        return (
            f"candidate error rate {seen.candidate_error_rate:.4f} > active {active:.4f} "
            f"+ {spec.max_error_rate_increase}"
        )
    return None


def unknown_users_within_share(spec: CanaryAnalysisSpec, seen: CanaryAnalysisStatus) -> str | None:
    """The candidate knows the users the active knows (share of unknown <= maxUnknownUserShare)."""
    if seen.unknown_user_share is not None and seen.unknown_user_share > spec.max_unknown_user_share:
        return f"unknown-user share {seen.unknown_user_share:.3f} > {spec.max_unknown_user_share}"
    return None


ANALYSIS: tuple[tuple[str, AnalysisCheck], ...] = (
    ("overlap_at10_at_least_minimum", overlap_at10_at_least_minimum),
    ("candidate_p99_within_ratio", candidate_p99_within_ratio),
    ("error_rate_within_increase", error_rate_within_increase),
    ("unknown_users_within_share", unknown_users_within_share),
)


def analysis_failures(spec: CanaryAnalysisSpec, seen: CanaryAnalysisStatus) -> list[tuple[str, str]]:
    """(predicate, reason) of every analysis predicate the measurements fail."""
    failures = []
    for name, check in ANALYSIS:
        reason = check(spec, seen)
        if reason is not None:
            failures.append((name, reason))
    return failures


# --- the state machine ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CanaryInput:
    """One pass's input: the spec's canary, the two layouts, the stored state, the measurements,
    the command annotation's value (None when unset) and the time."""

    canary: CanarySpec
    candidate: str
    candidate_version: str
    active: str
    previous: CanaryStatus | None
    stats: CanaryStats | None
    command: str | None
    now: datetime


@dataclass(frozen=True)
class CanaryDecision:
    """What the planner does: `verdict`, and the new `status.canary`."""

    verdict: Verdict
    status: CanaryStatus
    failures: tuple[tuple[str, str], ...] = ()


def command_of(value: str | None) -> CanaryCommand | None:
    """`promote` or `abort` from the annotation's value (trimmed, any case); None otherwise."""
    text = (value or "").strip().lower()
    return "promote" if text == "promote" else "abort" if text == "abort" else None


def traffic_of(canary: CanarySpec, step: CanaryStep) -> tuple[int, float]:
    """(weight percent, mirror sample rate) of a step: a shadow step mirrors its sample rate; a
    weight step compares `analysis.compareSampleRate` of the candidate's answers."""
    if step.shadow is not None:
        return 0, step.shadow.sample_rate
    return step.weight or 0, canary.analysis.compare_sample_rate


def describe_step(canary: CanarySpec, index: int) -> str:
    """e.g. `step 2/4 (weight 25%)` or `step 1/4 (shadow 10%)`."""
    step = canary.steps[index]
    what = f"shadow {step.shadow.sample_rate:.0%}" if step.shadow is not None else f"weight {step.weight}%"
    return f"step {index + 1}/{len(canary.steps)} ({what})"


def _running(
    inp: CanaryInput,
    index: int,
    *,
    ignored: str,
    message: str,
    passed: tuple[CanaryAnalysisStatus, ...] = (),
) -> CanaryStatus:
    weight, rate = traffic_of(inp.canary, inp.canary.steps[index])
    return CanaryStatus(
        layout=inp.candidate,
        version=inp.candidate_version,
        active_layout=inp.active,
        phase="Running",
        step=index,
        steps=len(inp.canary.steps),
        step_started_at=format_time(inp.now),
        weight=weight,
        shadow_sample_rate=rate,
        passed_steps=list(passed),
        message=message,
        ignored_command=ignored,
    )


def _finish(
    status: CanaryStatus, phase: Literal["Promoted", "RolledBack", "Aborted"], message: str, now: datetime
) -> CanaryStatus:
    return status.model_copy(
        update={
            "phase": phase,
            "weight": 100 if phase == "Promoted" else 0,
            "shadow_sample_rate": 0.0,
            "message": message[:4096],
            "finished_at": format_time(now),
        }
    )


_TERMINAL: dict[str, Verdict] = {"Promoted": "promote", "RolledBack": "rollback", "Aborted": "abort"}


def belongs(previous: CanaryStatus | None, candidate: str, active: str) -> bool:
    """Whether the stored canary is about this candidate against this active layout."""
    return previous is not None and previous.layout == candidate and previous.active_layout == active


def advance(inp: CanaryInput) -> CanaryDecision:
    """One transition of the diagram above."""
    raw_command = (inp.command or "").strip().lower()
    if not belongs(inp.previous, inp.candidate, inp.active):
        ignored = raw_command if command_of(raw_command) else ""
        note = f"; command {ignored!r} was already set and is ignored" if ignored else ""
        status = _running(inp, 0, ignored=ignored, message=f"started: {describe_step(inp.canary, 0)}{note}")
        return CanaryDecision("hold", status)
    assert inp.previous is not None
    previous = inp.previous
    if previous.phase in _TERMINAL:
        return CanaryDecision(_TERMINAL[previous.phase], previous)
    if previous.ignored_command and raw_command != previous.ignored_command:
        previous = previous.model_copy(update={"ignored_command": ""})  # re-arm: a new command applies
    index = min(previous.step, len(inp.canary.steps) - 1)
    where = describe_step(inp.canary, index)
    command = command_of(raw_command) if raw_command != previous.ignored_command else None
    if command == "abort":
        message = f"aborted by {raw_command!r} at {where}; the active layout {inp.active} keeps serving"
        return CanaryDecision("abort", _finish(previous, "Aborted", message, inp.now))
    if command == "promote":
        return CanaryDecision(
            "promote", _finish(previous, "Promoted", f"promoted by command at {where}", inp.now)
        )
    stats = inp.stats
    if stats is None or stats.layout != inp.candidate or stats.step != index:
        held = previous.model_copy(update={"message": f"{where}: waiting for the routers' measurements"})
        return CanaryDecision("hold", held)
    seen = stats.status()
    step = inp.canary.steps[index]
    elapsed = (inp.now - parse_time(previous.step_started_at)).total_seconds()
    measured = previous.model_copy(update={"analysis": seen})
    if seen.requests < step.min_requests:
        message = (
            f"{where}: {seen.requests}/{step.min_requests} requests, "
            f"{elapsed:.0f}s/{step.min_duration_seconds}s"
        )
        return CanaryDecision("hold", measured.model_copy(update={"message": message}))
    failures = tuple(analysis_failures(inp.canary.analysis, seen))
    if failures:
        reasons = "; ".join(f"{name}: {reason}" for name, reason in failures)
        message = f"rolled back at {where}: {reasons}"
        return CanaryDecision("rollback", _finish(measured, "RolledBack", message, inp.now), failures)
    if elapsed < step.min_duration_seconds:
        message = f"{where}: analysis passes; {elapsed:.0f}s/{step.min_duration_seconds}s"
        return CanaryDecision("hold", measured.model_copy(update={"message": message}))
    if index + 1 >= len(inp.canary.steps):
        message = f"promoted: every step passed (last {where}, {seen.requests} requests)"
        return CanaryDecision("promote", _finish(measured, "Promoted", message, inp.now))
    nxt = _running(
        inp,
        index + 1,
        ignored=previous.ignored_command,
        message=f"{where} passed ({seen.requests} requests); now {describe_step(inp.canary, index + 1)}",
        passed=(*previous.passed_steps, seen),
    )
    return CanaryDecision("advance", nxt)


def seconds_until_step_may_pass(canary: CanarySpec, status: CanaryStatus, now: datetime) -> float:
    """How long until the running step's minimum duration ends (0 when it has)."""
    step = canary.steps[min(status.step, len(canary.steps) - 1)]
    elapsed = (now - parse_time(status.step_started_at)).total_seconds()
    return max(step.min_duration_seconds - elapsed, 0.0)
