"""RFC 3339 timestamps as stored in `.status`: UTC, whole seconds, `Z` suffix.

The planner keeps its clocks (when a layout was planned, when it entered a state) in the status
so a restarted process resumes with the same deadlines; these two functions are the only way
times cross that boundary, so a round trip is exact.
"""

from __future__ import annotations

from datetime import UTC, datetime

_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def format_time(moment: datetime) -> str:
    """`moment` (timezone-aware) as `YYYY-MM-DDTHH:MM:SSZ` in UTC, truncated to whole seconds."""
    if moment.tzinfo is None:
        raise ValueError("planner times must be timezone-aware (use datetime.now(UTC))")
    return moment.astimezone(UTC).strftime(_FORMAT)


def parse_time(text: str) -> datetime:
    """Inverse of `format_time`; also accepts any ISO 8601 time with an offset."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as error:
        raise ValueError(f"not an RFC 3339 time: {text!r}") from error
    if moment.tzinfo is None:
        raise ValueError(f"RFC 3339 time without an offset: {text!r}")
    return moment.astimezone(UTC)
