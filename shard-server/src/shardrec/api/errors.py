"""One text for pydantic validation errors, shared by every layer (CLI, router, shard, operator)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def error_lines(errors: Iterable[Mapping[str, Any]]) -> list[str]:
    """One `loc.path: msg` line per entry of pydantic's `errors()`; a top-level error is `(root)`."""
    return [f"{'.'.join(str(part) for part in entry['loc']) or '(root)'}: {entry['msg']}" for entry in errors]


def describe_errors(errors: Iterable[Mapping[str, Any]], *, limit: int | None = None) -> str:
    """`error_lines` joined with `; `.

    `limit` keeps only the first errors, for answers to clients (a large bad body must not
    produce a large error body).
    """
    lines = error_lines(errors)
    return "; ".join(lines if limit is None else lines[:limit])
