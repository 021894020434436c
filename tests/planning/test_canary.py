"""The canary state machine (`planning.canary`): every step, pass / fail / hold, the commands, and
restarts (the status read back as JSON decides the same)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from shardrec.api.canary import CanaryStats, merged
from shardrec.api.v1alpha1 import CanarySpec, CanaryStatus, RolloutSpec
from shardrec.planning.canary import (
    CanaryDecision,
    CanaryInput,
    advance,
    analysis_failures,
    command_of,
)
from tests.planning.world import T0

CANARY = CanarySpec.model_validate(
    {
        "steps": [
            {"shadow": {"sampleRate": 0.5}, "minDurationSeconds": 30, "minRequests": 100},
            {"weight": 10, "minDurationSeconds": 30, "minRequests": 100},
            {"weight": 50, "minDurationSeconds": 60, "minRequests": 200},
        ]
    }
)


def good(step: int, requests: int = 1000, layout: str = "cand") -> CanaryStats:
    return CanaryStats(
        layout=layout,
        step=step,
        requests=requests,
        errors=0,
        active_requests=requests * 4,
        active_errors=0,
        compared=requests,
        overlap_sum=0.9 * requests,
        rank_correlation_sum=0.8 * requests,
        user_queries=requests,
        unknown_users=0,
        candidate_p99_ms=12.0,
        active_p99_ms=10.0,
    )


def bad(step: int, requests: int = 1000) -> CanaryStats:
    """Item ids shuffled: answers overlap almost nothing with the active layout's."""
    return CanaryStats(
        layout="cand",
        step=step,
        requests=requests,
        compared=requests,
        overlap_sum=0.01 * requests,
        user_queries=requests,
        candidate_p99_ms=10.0,
        active_p99_ms=10.0,
    )


def run(
    previous: CanaryStatus | None,
    stats: CanaryStats | None,
    seconds: float = 0.0,
    command: str | None = None,
    canary: CanarySpec = CANARY,
) -> CanaryDecision:
    return advance(
        CanaryInput(
            canary=canary,
            candidate="cand",
            candidate_version="v2",
            active="act",
            previous=previous,
            stats=stats,
            command=command,
            now=T0 + timedelta(seconds=seconds),
        )
    )


def restarted(status: CanaryStatus) -> CanaryStatus:
    """The status as a fresh process reads it back from the API server."""
    return CanaryStatus.model_validate(status.model_dump(by_alias=True, mode="json"))


def started() -> CanaryStatus:
    return run(None, None).status


def test_a_new_candidate_starts_at_the_first_step_mirroring_its_sample_rate() -> None:
    decision = run(None, good(0))
    assert decision.verdict == "hold"
    status = decision.status
    assert (status.phase, status.step, status.steps) == ("Running", 0, 3)
    assert (status.weight, status.shadow_sample_rate) == (0, 0.5)
    assert status.layout == "cand" and status.active_layout == "act" and status.version == "v2"


def test_a_passing_step_waits_for_both_its_requests_and_its_duration() -> None:
    status = started()
    too_few = run(status, good(0, requests=99), seconds=600)
    assert too_few.verdict == "hold" and "99/100 requests" in too_few.status.message
    too_early = run(status, good(0), seconds=29)
    assert too_early.verdict == "hold" and "analysis passes" in too_early.status.message
    passed = run(status, good(0), seconds=30)
    assert passed.verdict == "advance"
    assert (passed.status.step, passed.status.weight) == (1, 10)
    assert passed.status.shadow_sample_rate == CANARY.analysis.compare_sample_rate
    assert passed.status.step_started_at == "2026-01-01T12:00:30Z"
    assert passed.status.analysis is None


def test_every_step_passes_in_order_and_the_last_one_promotes() -> None:
    status, clock = started(), 0.0
    weights = []
    for index in range(3):
        clock += 60
        decision = run(restarted(status), good(index, requests=1000 + index), seconds=clock)
        status = decision.status
        weights.append(status.weight)
        assert decision.verdict == ("promote" if index == 2 else "advance")
    assert weights == [10, 50, 100]
    # Every step's measurements stay in the status, each passed one as it passed (restart-safe).
    assert [a.requests for a in status.passed_steps] == [1000, 1001]
    assert status.analysis is not None and status.analysis.requests == 1002
    assert status.phase == "Promoted" and status.finished_at
    # A finished canary stays finished whatever is measured next.
    assert run(status, bad(2), seconds=clock + 60).verdict == "promote"


@pytest.mark.parametrize("step", [0, 1, 2])
def test_a_failing_step_rolls_back_as_soon_as_it_has_its_requests(step: int) -> None:
    status = started()
    for index in range(step):
        status = run(status, good(index), seconds=60 * (index + 1)).status
    clock = 60 * step + 1  # long before the step's minimum duration
    decision = run(status, bad(step, requests=CANARY.steps[step].min_requests), seconds=clock)
    assert decision.verdict == "rollback"
    assert decision.status.phase == "RolledBack" and decision.status.weight == 0
    assert [name for name, _ in decision.failures] == ["overlap_at10_at_least_minimum"]
    assert decision.status.analysis is not None and decision.status.analysis.overlap_at10 == 0.01
    assert "overlap@10 0.010 < 0.3" in decision.status.message
    assert run(restarted(decision.status), good(step), seconds=clock + 600).verdict == "rollback"


def test_too_few_requests_never_decide_even_when_they_look_bad() -> None:
    assert run(started(), bad(0, requests=99), seconds=3600).verdict == "hold"


def test_measurements_of_another_step_or_candidate_are_not_used() -> None:
    status = started()
    assert run(status, good(1), seconds=600).verdict == "hold"
    assert run(status, good(0, layout="other"), seconds=600).verdict == "hold"
    assert "waiting for the routers' measurements" in run(status, None, seconds=600).status.message


def test_another_candidate_or_active_layout_starts_over() -> None:
    status = run(started(), good(0), seconds=60).status
    assert status.step == 1
    moved = advance(
        CanaryInput(CANARY, "cand", "v2", "act2", status, good(1), None, T0 + timedelta(seconds=120))
    )
    assert moved.status.step == 0 and moved.status.active_layout == "act2"


def test_abort_and_promote_commands_end_the_running_canary() -> None:
    status = run(started(), good(0), seconds=60).status
    aborted = run(status, good(1, requests=1), seconds=61, command="abort")
    assert aborted.verdict == "abort" and aborted.status.phase == "Aborted" and aborted.status.weight == 0
    promoted = run(status, None, seconds=61, command=" Promote ")
    assert promoted.verdict == "promote" and promoted.status.weight == 100
    assert "promoted by command at step 2/3 (weight 10%)" in promoted.status.message
    assert run(status, good(1, requests=1), seconds=61, command="rollback-please").verdict == "hold"


def test_a_command_present_when_the_canary_starts_is_ignored_until_set_again() -> None:
    status = run(None, None, command="promote").status
    assert status.ignored_command == "promote"
    assert run(status, None, seconds=1, command="promote").verdict == "hold"
    removed = run(status, None, seconds=2, command=None).status
    assert removed.ignored_command == ""
    assert run(removed, None, seconds=3, command="promote").verdict == "promote"
    # A different command applies at once.
    assert run(status, None, seconds=1, command="abort").verdict == "abort"


def test_command_parsing() -> None:
    assert [command_of(v) for v in ("promote", "ABORT", " abort\n", "", None, "go")] == [
        "promote",
        "abort",
        "abort",
        None,
        None,
        None,
    ]


def test_each_analysis_threshold_fails_alone_at_its_boundary() -> None:
    spec = CANARY.analysis

    def failures(**changes: object) -> list[str]:
        seen = good(0).status().model_copy(update=changes)
        return [name for name, _ in analysis_failures(spec, seen)]

    assert failures() == []
    assert failures(overlap_at10=0.3) == []
    assert failures(overlap_at10=0.29) == ["overlap_at10_at_least_minimum"]
    assert failures(candidate_p99_ms=20.0, active_p99_ms=10.0) == []  # 1.5 x 10 + 5
    assert failures(candidate_p99_ms=20.1, active_p99_ms=10.0) == ["candidate_p99_within_ratio"]
    assert failures(candidate_error_rate=0.011, active_error_rate=0.01) == []
    assert failures(candidate_error_rate=0.0111, active_error_rate=0.01) == ["error_rate_within_increase"]
    assert failures(unknown_user_share=0.05) == []
    assert failures(unknown_user_share=0.06) == ["unknown_users_within_share"]
    assert failures(overlap_at10=None, candidate_p99_ms=None) == []  # not measured: not judged


def test_reports_of_several_routers_add_up_and_keep_the_worst_p99() -> None:
    a = good(1, requests=100)
    b = CanaryStats(layout="cand", step=1, requests=300, errors=3, candidate_p99_ms=30.0, active_p99_ms=9.0)
    stale = good(0, requests=5000)
    total = merged([a, b, stale], "cand", 1)
    assert total is not None
    assert (total.requests, total.errors, total.candidate_p99_ms, total.active_p99_ms) == (400, 3, 30.0, 10.0)
    assert total.status().candidate_error_rate == 0.0075
    assert merged([stale], "cand", 1) is None
    report = {"layout": "cand", "step": 1, "requests": 7, "overlapSum": 3.5, "compared": 7, "bogus": "x"}
    assert CanaryStats.from_report(report).status().overlap_at10 == 0.5


def test_the_api_rejects_bad_canary_values() -> None:
    assert RolloutSpec().canary_spec() is None
    defaults = RolloutSpec(strategy="Canary").canary_spec()
    assert defaults is not None
    assert [s.weight for s in defaults.steps] == [None, 5, 25, 50]
    assert defaults.analysis.min_overlap_at10 == 0.3 and defaults.analysis.max_p99_ratio == 1.5
    assert defaults.analysis.max_error_rate_increase == 0.001
    bad_specs = [
        {"strategy": "BlueGreen", "canary": {}},
        {"strategy": "Canary", "canary": {"steps": []}},
        {"strategy": "Canary", "canary": {"steps": [{"weight": 10, "shadow": {"sampleRate": 0.1}}]}},
        {"strategy": "Canary", "canary": {"steps": [{"minRequests": 10}]}},
        {"strategy": "Canary", "canary": {"steps": [{"weight": 100}]}},
        {"strategy": "Canary", "canary": {"steps": [{"weight": 0}]}},
        {"strategy": "Canary", "canary": {"steps": [{"shadow": {"sampleRate": 0}}]}},
        {"strategy": "Canary", "canary": {"analysis": {"minOverlapAt10": 1.5}}},
        {"strategy": "Canary", "canary": {"analysis": {"maxP99Ratio": 0.5}}},
        {"strategy": "Rolling"},
    ]
    for body in bad_specs:
        with pytest.raises(ValidationError):
            RolloutSpec.model_validate(body)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["good", "bad", "few", "none", "stale"]),
            st.integers(min_value=0, max_value=90),
            st.sampled_from([None, None, None, "promote", "abort"]),
        ),
        min_size=1,
        max_size=25,
    )
)
def test_any_history_is_restart_safe_and_monotonic(
    history: list[tuple[str, int, str | None]],
) -> None:
    """Restarting (reading the status back) at any pass decides the same; steps never go back; a
    terminal phase never changes; a rollback only comes from measurements that fail."""
    status: CanaryStatus | None = None
    clock = 0.0
    for kind, seconds, command in history:
        clock += seconds
        step = status.step if status is not None else 0
        stats = {
            "good": good(step),
            "bad": bad(step),
            "few": good(step, requests=1),
            "none": None,
            "stale": good(step + 1),
        }[kind]
        decision = run(status, stats, seconds=clock, command=command)
        again = run(restarted(status) if status is not None else None, stats, seconds=clock, command=command)
        assert again == decision
        if status is not None:
            assert decision.status.step >= status.step
            if status.phase != "Running":
                assert decision.status == status
        if decision.verdict == "rollback" and (status is None or status.phase == "Running"):
            assert kind == "bad"
        status = decision.status
