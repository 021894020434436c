"""The one rendering of a `PlanPreview`: text for people (`recctl plan`, `status.planPreview.text`)
and a JSON document (`recctl plan --json`). Pure."""

from __future__ import annotations

import dataclasses
from typing import Any

from shardrec.api.v1alpha1 import PlanPreviewStatus
from shardrec.planning.preview import PlanPreview, PodChange, Requests

GIB = 1024**3
STATUS_TEXT_LIMIT = 16384
"""status.planPreview.text's schema bound."""


def gib(value: float) -> str:
    return f"{value / GIB:.2f} GiB"


def duration(seconds: float) -> str:
    """`42 s`, `3 min 20 s`, `1 h 05 min`."""
    whole = round(seconds)
    if whole < 60:
        return f"{max(whole, 0)} s" if seconds >= 0.5 or whole else "< 1 s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def requests_text(requests: Requests) -> str:
    cpu = "cpu: not requested" if requests.cpu is None else f"cpu {requests.cpu:g} cores"
    memory = "memory: not requested" if requests.memory is None else f"memory {gib(requests.memory)}"
    return f"{cpu}, {memory}"


def _pod_line(change: PodChange) -> str:
    counts = [
        f"+{change.added}" if change.added else "",
        f"-{change.removed}" if change.removed else "",
        f"~{change.replaced} replaced" if change.replaced else "",
    ]
    where = f" layout {change.layout}" if change.layout else ""
    note = f" ({change.note})" if change.note else ""
    return f"  {change.kind:<6}{where}: {' '.join(c for c in counts if c)}{note}"


def render_text(plan: PlanPreview) -> str:
    """The preview as lines of text, ending with a newline."""
    lines = [
        f"Plan for RecommenderCluster {plan.cluster}: {plan.summary}",
        f"Current: {plan.current}",
        "Changes:",
        *(f"  - {change}" for change in plan.changes),
    ]
    if plan.builds:
        lines.append("Builds:")
        for build in plan.builds:
            items = (
                "items unknown"
                if build.items_per_shard is None
                else f"~{build.items_per_shard:,} items per shard"
            )
            seconds = "" if build.seconds is None else f", ~{duration(build.seconds)}"
            if build.reuses_artifacts:
                seconds += " (stored already: verified, not rebuilt)"
            lines.append(
                f"  layout {build.layout} (version {build.version}): {build.shards} shards, {items}, "
                f"{build.pods} build pod(s){seconds}"
            )
    if plan.pods:
        lines.append("Pods (+ added, - removed, ~ replaced):")
        lines.extend(_pod_line(change) for change in plan.pods)
    if plan.peak_extra_pods:
        lines.append(
            f"Peak extra: {plan.peak_extra_pods} pod(s); requests to schedule: "
            f"{requests_text(plan.peak_extra_requests)}"
        )
        if plan.peak_extra_resident_bytes is not None:
            lines.append(
                f"  measured estimate of their shard memory (resident): {gib(plan.peak_extra_resident_bytes)}"
            )
    if plan.duration_seconds is not None:
        hold = (
            f"; extra pods held ~{duration(plan.holds_extra_seconds)} (with the rollback window)"
            if plan.holds_extra_seconds is not None and plan.holds_extra_seconds > plan.duration_seconds
            else ""
        )
        lines.append(
            f"Expected duration: ~{duration(plan.duration_seconds)} (build and load at measured rates; "
            f"image pulls and scheduling not included){hold}"
        )
    availability = "CAN BREAK AVAILABILITY" if plan.breaks_availability else "keeps availability"
    lines.append(f"Availability: {availability}")
    lines.extend(f"  [{risk.severity}] {risk.code}: {risk.message}" for risk in plan.risks)
    lines.extend(f"Note: {note}" for note in plan.notes)
    lines.extend(f"Not computed: {what}" for what in plan.unresolved)
    if plan.rates_source:
        lines.append(f"Rates: {plan.rates_source}")
    return "\n".join(lines) + "\n"


def to_json(plan: PlanPreview) -> dict[str, Any]:
    """The preview as a JSON-ready document (the dataclass fields, plus the derived verdicts)."""
    document: dict[str, Any] = dataclasses.asdict(plan)
    document["breaks_availability"] = plan.breaks_availability
    return document


def to_status(plan: PlanPreview, generation: int) -> PlanPreviewStatus:
    """The preview as `status.planPreview` (the operator's and the local runtime's)."""
    text = render_text(plan)
    if len(text) > STATUS_TEXT_LIMIT:
        text = text[: STATUS_TEXT_LIMIT - 16] + "\n[truncated]\n"
    return PlanPreviewStatus(
        generation=generation,
        kind=plan.kind,
        summary=plan.summary[:1024],
        disruptive=plan.disruptive,
        breaks_availability=plan.breaks_availability,
        text=text,
    )
