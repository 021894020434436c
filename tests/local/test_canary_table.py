"""The canary's analysis table (`recctl demo --canary`, `recctl status`): one column per measured
step, the spec's thresholds, the planner's predicates marking what fails, and the decision."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from shardrec.api.v1alpha1 import CanaryAnalysisStatus, CanarySpec, CanaryStatus
from shardrec.tools.local.state import StateDir
from shardrec.tools.local.status_table import render_canary_analysis, render_status

SPEC = CanarySpec.model_validate(
    {
        "steps": [
            {"shadow": {"sampleRate": 0.5}, "minDurationSeconds": 5, "minRequests": 100},
            {"weight": 25, "minDurationSeconds": 5, "minRequests": 50},
        ],
        "analysis": {"p99SlackMilliseconds": 50},
    }
)
GOOD = CanaryAnalysisStatus(
    requests=120,
    compared=118,
    overlap_at10=0.7012,
    rank_correlation=0.81234,
    score_shift=0.01234,
    candidate_p99_ms=12.34,
    active_p99_ms=10.0,
    candidate_error_rate=0.0,
    active_error_rate=0.0,
    unknown_user_share=0.0,
)


def _canary(
    phase: str,
    step: int,
    message: str,
    analysis: CanaryAnalysisStatus | None,
    passed: tuple[CanaryAnalysisStatus, ...] = (),
) -> CanaryStatus:
    return CanaryStatus.model_validate(
        {
            "layout": "b2",
            "version": "v2",
            "activeLayout": "a1",
            "phase": phase,
            "step": step,
            "steps": 2,
            "stepStartedAt": "2026-12-05T22:00:00Z",
            "analysis": analysis.model_dump(by_alias=True) if analysis is not None else None,
            "passedSteps": [a.model_dump(by_alias=True) for a in passed],
            "message": message,
        }
    )


def _rows(text: str) -> dict[str, str]:
    """Row label -> the rest of the line (labels are the table's first column)."""
    lines = text.splitlines()
    width = lines[1].index("step")
    return {line[:width].strip(): line[width:].rstrip() for line in lines[2:-1]}


def test_a_promoted_canary_shows_every_step_its_thresholds_and_the_decision() -> None:
    second = GOOD.model_copy(update={"requests": 64, "compared": 30, "overlap_at10": 0.69})
    message = "promoted: every step passed (last step 2/2 (weight 25%), 64 requests)"
    text = render_canary_analysis(_canary("Promoted", 1, message, second, passed=(GOOD,)), SPEC)
    lines = text.splitlines()
    assert lines[0] == "Canary of version v2 (layout b2) against layout a1: promoted"
    assert lines[1].split() == [
        "step",
        "1/2",
        "(shadow",
        "50%)",
        "step",
        "2/2",
        "(weight",
        "25%)",
        "threshold",
    ]
    rows = _rows(text)
    assert rows["requests"].split() == ["120", "(min", "100)", "64", "(min", "50)", "-"]
    assert rows["overlap@10"].split() == ["0.701", "0.690", ">=", "0.3"]
    assert rows["rank correlation"].split()[:2] == ["0.812", "0.812"]
    assert rows["score shift"].split()[0] == "0.0123"
    assert rows["p99 ms active / candidate"].split()[:3] == ["10.0", "/", "12.3"]
    assert rows["p99 ms active / candidate"].endswith("candidate <= 1.5 x active + 50")
    assert rows["error rate active / candidate"].split()[:3] == ["0.0000", "/", "0.0000"]
    assert rows["decision"].split() == ["passed", "promoted"]
    assert "FAIL" not in text
    assert lines[-1].strip().startswith("promoted: every step passed")


def test_a_rolled_back_step_marks_the_failing_measure_with_the_planners_predicate() -> None:
    broken = GOOD.model_copy(update={"overlap_at10": 0.02, "candidate_p99_ms": 70.0})
    canary = _canary("RolledBack", 0, "rolled back at step 1/2 (shadow 50%): overlap@10 0.020 < 0.3", broken)
    rows = _rows(render_canary_analysis(canary, SPEC))
    assert rows["overlap@10"].split()[:2] == ["0.020", "FAIL"]
    # 70 > 1.5 x 10 + 50: the p99 predicate fails too; the error-rate one does not.
    assert rows["p99 ms active / candidate"].split()[:4] == ["10.0", "/", "70.0", "FAIL"]
    assert "FAIL" not in rows["error rate active / candidate"]
    assert rows["decision"].split() == ["ROLLED", "BACK"]


def test_without_the_spec_values_are_shown_unjudged_and_missing_ones_as_dashes() -> None:
    empty = CanaryAnalysisStatus(requests=3)
    canary = _canary("Running", 0, "step 1/2 (shadow 50%): 3/100 requests, 1s/5s", empty)
    text = render_canary_analysis(canary, None)
    rows = _rows(text)
    assert "threshold" not in text.splitlines()[1]
    assert rows["requests"].split() == ["3"]
    assert rows["overlap@10"].split() == ["-"]
    assert rows["p99 ms active / candidate"].split() == ["-", "/", "-"]
    assert rows["decision"].split() == ["running"]


def test_no_measurement_yet_is_said() -> None:
    canary = _canary("Running", 0, "step 1/2 (shadow 50%): waiting for the routers' measurements", None)
    assert render_canary_analysis(canary, SPEC).splitlines()[1:] == [
        "  no measurements yet",
        "  step 1/2 (shadow 50%): waiting for the routers' measurements",
    ]


def test_recctl_status_shows_every_steps_analysis_with_the_applied_thresholds(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    spec = {
        "shards": 1,
        "index": {"version": "v2", "source": "/data/v2", "dimension": 8},
        "rollout": {"strategy": "Canary", "canary": SPEC.model_dump(by_alias=True, exclude_none=True)},
    }
    cluster = {"apiVersion": "shardrec.io/v1alpha1", "kind": "RecommenderCluster", "metadata": {"name": "c"}}
    state.spec_file.write_text(yaml.safe_dump({**cluster, "spec": spec}))
    first = GOOD.model_copy(update={"requests": 130})
    canary = _canary("Running", 1, "step 2/2 (weight 25%): 10/50 requests, 2s/5s", GOOD, passed=(first,))
    state.status_file.write_text(json.dumps({"canary": canary.model_dump(by_alias=True, mode="json")}))
    text = render_status(state)
    section = text[text.index("Canary of version v2") :]
    rows = _rows(section)
    assert rows["requests"].split() == ["130", "(min", "100)", "120", "(min", "50)", "-"]
    assert rows["decision"].split() == ["passed", "running"]
    assert ">= 0.3" in section
