"""Flatten RBAC rules into a permission matrix: (apiGroup, resource) -> verbs."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

Matrix = dict[tuple[str, str], set[str]]


def matrix_of(rules: Iterable[dict[str, Any]]) -> Matrix:
    matrix: Matrix = {}
    for rule in rules:
        for group in rule.get("apiGroups", []):
            for resource in rule.get("resources", []):
                matrix.setdefault((group, resource), set()).update(rule.get("verbs", []))
    return matrix


def format_matrix(matrix: Matrix, title: str) -> str:
    width = max((len(f"{g or 'core'}/{r}") for g, r in matrix), default=10)
    lines = [title]
    for (group, resource), verbs in sorted(matrix.items()):
        name = f"{group or 'core'}/{resource}"
        lines.append(f"  {name:<{width}}  {','.join(sorted(verbs))}")
    return "\n".join(lines)
