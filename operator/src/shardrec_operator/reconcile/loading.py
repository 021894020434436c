"""The boundary: a raw kopf body in, a validated RecommenderCluster out, or an InvalidSpecError.

The API server already enforces the schema and its CEL rules, so an invalid object here means
the CRD installed is older than the operator, or a Kubernetes-only requirement is missing
(`desired.validation`). Either way retrying cannot help: the handlers make it a permanent error,
and `invalid_spec_status` says what to fix in a `Ready=False, reason=InvalidSpec` condition.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from shardrec.api import v1alpha1 as api
from shardrec.api.errors import error_lines
from shardrec.planning.status import merge_condition
from shardrec_operator.desired.plan_preview import PLAN_PREVIEW_ANNOTATION
from shardrec_operator.desired.validation import kubernetes_spec_errors

INVALID_SPEC_REASON = "InvalidSpec"
PAUSE_ANNOTATION = "shardrec.io/paused"
"""`kubectl annotate recc NAME shardrec.io/paused=true`: the same freeze as `spec.paused`, without
a spec change (ECK's maintenance switch), e.g. for an operator upgrade or a cluster maintenance.
`shardrec.io/plan-preview: "true"` freezes the same way, for a dry run: while frozen, the status
carries `planPreview` (`desired.plan_preview`), what the spec would do once unfrozen."""


class InvalidSpecError(Exception):
    """The object cannot be reconciled until its spec is fixed; `messages` name the fields."""

    def __init__(self, messages: list[str]) -> None:
        super().__init__("; ".join(messages))
        self.messages = messages


def _pydantic_messages(error: ValidationError) -> list[str]:
    return error_lines(error.errors())


def load_cluster(body: Mapping[str, Any]) -> api.RecommenderCluster:
    """The typed object of a kopf body (status is not part of it: see `observe.previous_status`)."""
    document = {
        "apiVersion": body.get("apiVersion", api.API_VERSION),
        "kind": body.get("kind", api.KIND),
        "metadata": dict(body.get("metadata") or {}),
        "spec": dict(body.get("spec") or {}),
    }
    try:
        cluster = api.RecommenderCluster.model_validate(document)
    except ValidationError as error:
        raise InvalidSpecError(_pydantic_messages(error)) from error
    errors = kubernetes_spec_errors(cluster)
    if errors:
        raise InvalidSpecError(errors)
    annotations = document["metadata"].get("annotations") or {}
    frozen = any(annotations.get(name) == "true" for name in (PAUSE_ANNOTATION, PLAN_PREVIEW_ANNOTATION))
    if frozen and not cluster.spec.paused:
        cluster = cluster.model_copy(update={"spec": cluster.spec.model_copy(update={"paused": True})})
    return cluster


def _invalid_conditions(message: str) -> tuple[tuple[api.ConditionType, str], ...]:
    return (("Ready", message), ("Progressing", "nothing changes until the spec is fixed"))


def invalid_spec_status(
    previous: api.RecommenderClusterStatus, error: InvalidSpecError, generation: int, now: datetime
) -> api.RecommenderClusterStatus:
    """The previous status with the verdict on this generation: Failed, and why."""
    message = "; ".join(error.messages)
    conditions = [
        merge_condition(
            previous.conditions,
            type_=type_,
            status="False",
            reason=INVALID_SPEC_REASON,
            message=text,
            now=now,
            generation=generation,
        )
        for type_, text in _invalid_conditions(message)
    ]
    conditions += [entry for entry in previous.conditions if entry.type == "Degraded"]
    return previous.model_copy(
        update={"phase": "Failed", "observed_generation": generation, "conditions": conditions}
    )
