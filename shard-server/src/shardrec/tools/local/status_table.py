"""`recctl status` as a readable table, from the files the supervisor writes; and the canary's
analysis table (`recctl status`, `recctl demo --canary`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import ValidationError

from shardrec.api.v1alpha1 import (
    CanaryAnalysisSpec,
    CanaryAnalysisStatus,
    CanarySpec,
    CanaryStatus,
    RecommenderCluster,
)
from shardrec.planning.canary import (
    AnalysisCheck,
    candidate_p99_within_ratio,
    describe_step,
    error_rate_within_increase,
    overlap_at10_at_least_minimum,
    unknown_users_within_share,
)
from shardrec.tools.local.processes import processes_of_state_dir
from shardrec.tools.local.state import StateDir, is_supervisor_running, read_json


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows)


def _condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    for condition in status.get("conditions", []):
        if condition.get("type") == kind:
            return dict(condition)
    return {}


def render_status(state: StateDir) -> str:
    status: dict[str, Any] = read_json(state.status_file) if state.status_file.exists() else {}
    runtime: dict[str, Any] = read_json(state.runtime_file) if state.runtime_file.exists() else {}
    running = is_supervisor_running(state)
    # Processes of this cluster with no supervisor (it was killed): they serve, unwatched.
    orphans = 0 if running else sum(1 for _ in processes_of_state_dir(state.root))
    phase = status.get("phase", "Pending") if running else ("Unsupervised" if orphans else "Stopped")
    ready = _condition(status, "Ready")
    summary = _table(
        [
            ["NAME", "SHARDS", "READY-REPLICAS", "ACTIVE", "TARGET", "PHASE", "READY", "ROUTER"],
            [
                state.root.name,
                str(len(status.get("shards", []))),
                f"{status.get('readyReplicas', 0)}/{status.get('replicas', 0)}",
                status.get("activeVersion", "") or "-",
                status.get("targetVersion", "") or "-",
                phase,
                ready.get("status", "Unknown"),
                runtime.get("router_url", "-") if running or orphans else "-",
            ],
        ]
    )
    parts = [summary]
    if orphans:
        parts.append(
            f"no supervisor runs, but {orphans} processes of this cluster do: `recctl up` adopts "
            "them, `recctl down` stops them"
        )
    shards = status.get("shards", [])
    if shards:
        parts.append(
            _table(
                [["SHARD", "READY", "REPLICAS"]]
                + [[str(s["shard"]), str(s["readyReplicas"]), str(s["replicas"])] for s in shards]
            )
        )
    layouts = status.get("layouts", [])
    if layouts:
        parts.append(
            _table(
                [["LAYOUT", "VERSION", "SHARDS", "STATE", "SINCE", "MESSAGE"]]
                + [
                    [
                        layout["name"],
                        layout["version"],
                        str(layout["shards"]),
                        layout["state"],
                        layout["stateSince"],
                        layout.get("message", ""),
                    ]
                    for layout in layouts
                ]
            )
        )
    for kind in ("Progressing", "Degraded"):
        condition = _condition(status, kind)
        if condition.get("status") == "True":
            parts.append(f"{kind}: {condition.get('reason', '')}: {condition.get('message', '')}")
    if status.get("canary"):
        parts.append(
            render_canary_analysis(CanaryStatus.model_validate(status["canary"]), _canary_spec(state))
        )
    return "\n\n".join(parts)


def _canary_spec(state: StateDir) -> CanarySpec | None:
    """The applied spec's canary settings (its thresholds), None when it is not a Canary (any more)."""
    try:
        data = yaml.safe_load(state.spec_file.read_text(encoding="utf-8"))
        return RecommenderCluster.model_validate(data).spec.rollout.canary_spec()
    except (OSError, yaml.YAMLError, ValidationError):
        return None


# --- the canary's analysis -------------------------------------------------------------------


@dataclass(frozen=True)
class _Measure:
    """One row of the analysis table: how a step's measurement and the spec's threshold read, and
    the planner's predicate that judges it (None: shown, not judged)."""

    label: str
    value: Callable[[CanaryAnalysisStatus], str]
    threshold: Callable[[CanaryAnalysisSpec], str]
    check: AnalysisCheck | None


def _number(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


_MEASURES: tuple[_Measure, ...] = (
    _Measure("compared answers", lambda a: str(a.compared), lambda s: "-", None),
    _Measure(
        "overlap@10",
        lambda a: _number(a.overlap_at10, 3),
        lambda s: f">= {s.min_overlap_at10:g}",
        overlap_at10_at_least_minimum,
    ),
    _Measure("rank correlation", lambda a: _number(a.rank_correlation, 3), lambda s: "-", None),
    _Measure("score shift", lambda a: _number(a.score_shift, 4), lambda s: "-", None),
    _Measure(
        "p99 ms active / candidate",
        lambda a: f"{_number(a.active_p99_ms, 1)} / {_number(a.candidate_p99_ms, 1)}",
        lambda s: f"candidate <= {s.max_p99_ratio:g} x active + {s.p99_slack_milliseconds:g}",
        candidate_p99_within_ratio,
    ),
    _Measure(
        "error rate active / candidate",
        lambda a: f"{_number(a.active_error_rate, 4)} / {_number(a.candidate_error_rate, 4)}",
        lambda s: f"candidate <= active + {s.max_error_rate_increase:g}",
        error_rate_within_increase,
    ),
    _Measure(
        "unknown-user share",
        lambda a: _number(a.unknown_user_share, 3),
        lambda s: f"<= {s.max_unknown_user_share:g}",
        unknown_users_within_share,
    ),
)

_OUTCOME = {"Running": "running", "Promoted": "promoted", "RolledBack": "ROLLED BACK", "Aborted": "aborted"}


def render_canary_analysis(canary: CanaryStatus, spec: CanarySpec | None) -> str:
    """`status.canary` as a table: one column per measured step (each passed step as it passed,
    then the current one), one row per measure, the thresholds of `spec` (None: the spec is not
    known, no thresholds and no judgement), and the decision. A value the planner's predicate
    fails is marked FAIL. Pure."""
    head = (
        f"Canary of version {canary.version} (layout {canary.layout}) against layout "
        f"{canary.active_layout}: {_OUTCOME[canary.phase]}"
    )
    measured = dict(enumerate(canary.passed_steps[: canary.step]))
    if canary.analysis is not None:
        measured[canary.step] = canary.analysis
    steps = sorted(measured)
    if not steps:
        return f"{head}\n  no measurements yet\n  {canary.message}"

    def title(index: int) -> str:
        if spec is not None and index < len(spec.steps):
            return describe_step(spec, index)
        return f"step {index + 1}/{canary.steps}"

    def requests(index: int) -> str:
        count = str(measured[index].requests)
        if spec is None or index >= len(spec.steps):
            return count
        return f"{count} (min {spec.steps[index].min_requests})"

    def cell(measure: _Measure, analysis: CanaryAnalysisStatus) -> str:
        text = measure.value(analysis)
        if spec is not None and measure.check is not None and measure.check(spec.analysis, analysis):
            text += " FAIL"
        return text

    def decision(index: int) -> str:
        return "passed" if index < canary.step else _OUTCOME[canary.phase]

    rows = [["", *(title(i) for i in steps), "threshold" if spec is not None else ""]]
    rows.append(["requests", *(requests(i) for i in steps), "-" if spec is not None else ""])
    for measure in _MEASURES:
        threshold = measure.threshold(spec.analysis) if spec is not None else ""
        rows.append([measure.label, *(cell(measure, measured[i]) for i in steps), threshold])
    rows.append(["decision", *(decision(i) for i in steps), ""])
    body = "\n".join(f"  {line}" for line in _table(rows).splitlines())
    return f"{head}\n{body}\n  {canary.message}"
