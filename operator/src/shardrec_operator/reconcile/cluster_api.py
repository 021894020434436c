"""The operator's view of the Kubernetes API: four verbs, plain dicts, typed errors.

`reconcile` code depends on this Protocol only. `kubernetes_api.KubernetesClusterApi` implements it
against a real API server; the tests implement it with an in-memory double. Reads go straight to
the API server (no informer cache), so a pass always sees its own previous writes; what may
still lag is *other controllers'* view (a StatefulSet's status), which `observe` checks through
`observedGeneration`.
"""

from __future__ import annotations

from typing import Any, Protocol

from shardrec_operator.reconcile.resources import Resource

Obj = dict[str, Any]


class ApiError(Exception):
    """The API server refused a request; `status` is the HTTP code."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class ConflictError(ApiError):
    """HTTP 409: optimistic-lock or precondition failure; retrying soon is the cure."""


class NotFoundError(ApiError):
    """HTTP 404: the object, or its kind (a missing CRD), does not exist."""


def error_for(status: int, message: str) -> ApiError:
    if status == 409:
        return ConflictError(status, message)
    if status == 404:
        return NotFoundError(status, message)
    return ApiError(status, message)


class ClusterApi(Protocol):
    """What the reconcile layer needs from Kubernetes."""

    def get(self, resource: Resource, namespace: str | None, name: str) -> Obj | None:
        """The object, or None when it does not exist."""
        ...

    def list(self, resource: Resource, namespace: str | None, label_selector: str = "") -> list[Obj]:
        """Objects of a kind (in a namespace, or cluster-wide for cluster-scoped kinds), each with
        its `apiVersion` and `kind` set (the API server omits them from list items)."""
        ...

    def apply(self, manifest: Obj, *, field_manager: str, force: bool) -> Obj:
        """Server-side apply; returns the object as stored."""
        ...

    def delete(
        self,
        resource: Resource,
        namespace: str | None,
        name: str,
        *,
        uid: str | None = None,
        grace_period_seconds: int | None = None,
    ) -> bool:
        """Delete (background propagation); False when it was already gone. With `uid`, only
        that incarnation is deleted (409 otherwise), so a recreated object is never hit."""
        ...
