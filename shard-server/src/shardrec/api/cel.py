"""Evaluate the models' CEL rules in Python, so the API server and the local runtime enforce the
very same rule text: one source for every cross-field and transition rule.

Rules that mention `oldSelf` are transition rules; they apply on update only (`transition_errors`).
The others run as part of pydantic validation (`ApiModel` calls `check_rules`).
"""

from __future__ import annotations

from functools import cache
from typing import Any

import celpy
from celpy.adapter import json_to_cel

CEL_RULES_KEY = "x-kubernetes-validations"

_ENV = celpy.Environment()


@cache
def _program(rule: str) -> Any:
    return _ENV.program(_ENV.compile(rule))


def rules_of(config_extra: object) -> list[dict[str, str]]:
    """The CEL rules declared in a model's `json_schema_extra`."""
    if not isinstance(config_extra, dict):
        return []
    rules = config_extra.get(CEL_RULES_KEY, [])
    return list(rules) if isinstance(rules, list) else []


def is_transition_rule(rule: str) -> bool:
    return "oldSelf" in rule


def evaluate(rule: str, self_value: dict[str, Any], old_value: dict[str, Any] | None = None) -> bool:
    activation: dict[str, Any] = {"self": json_to_cel(self_value)}
    if old_value is not None:
        activation["oldSelf"] = json_to_cel(old_value)
    return bool(_program(rule).evaluate(activation))


def failed_messages(
    rules: list[dict[str, str]],
    self_value: dict[str, Any],
    old_value: dict[str, Any] | None = None,
) -> list[str]:
    """Messages of the rules that do not hold. Without `old_value`, transition rules are skipped."""
    failed = []
    for entry in rules:
        transition = is_transition_rule(entry["rule"])
        if transition != (old_value is not None):
            continue
        if not evaluate(entry["rule"], self_value, old_value):
            failed.append(entry["message"])
    return failed
