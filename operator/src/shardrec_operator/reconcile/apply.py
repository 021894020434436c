"""The one generic way the operator writes a child: server-side apply, skipped when nothing changed.

Every builder's output goes through `apply_child`. It stamps the manifest with a hash of itself
(`shardrec.io/applied-hash`); when the object in the cluster already carries that hash *and* still
holds every field the manifest sets (`drift.drifted_fields`), nothing is sent, so a reconcile with
nothing to change writes nothing (and does not even send no-op patches). A matching hash with
drifted fields (`kubectl scale`, `kubectl edit` of an owned field) is re-applied, and the caller
learns which fields drifted (for the DriftCorrected Event). Otherwise it is a server-side apply
under one field manager, `shardrec-operator`, so fields other managers set (an HPA's replicas, a
human's extra label) are left alone.

`force=True` only on objects this cluster controls (its owner reference with controller=true):
there every field we declare is ours, and a conflict means someone edited our field by hand.
An object with our name that another owner controls is never touched (ForeignObjectError).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Final

from shardrec_operator.reconcile.cluster_api import ClusterApi, Obj
from shardrec_operator.reconcile.drift import drifted_fields
from shardrec_operator.reconcile.resources import resource_of

FIELD_MANAGER: Final = "shardrec-operator"
APPLIED_HASH_ANNOTATION: Final = "shardrec.io/applied-hash"


class ForeignObjectError(Exception):
    """An object with a child's name exists but another owner (or nobody) controls it."""


def manifest_hash(manifest: Obj) -> str:
    canonical = json.dumps(manifest, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def stamped(manifest: Obj) -> Obj:
    """A copy of `manifest` carrying its own hash as an annotation."""
    meta = dict(manifest["metadata"])
    meta["annotations"] = {**meta.get("annotations", {}), APPLIED_HASH_ANNOTATION: manifest_hash(manifest)}
    return {**manifest, "metadata": meta}


def controller_uid(obj: Obj) -> str | None:
    for ref in obj.get("metadata", {}).get("ownerReferences", []):
        if ref.get("controller"):
            return str(ref.get("uid"))
    return None


def is_current(observed: Obj, manifest: Obj) -> bool:
    """Whether `observed` was applied from exactly this manifest."""
    annotations = observed.get("metadata", {}).get("annotations") or {}
    return bool(annotations.get(APPLIED_HASH_ANNOTATION) == manifest_hash(manifest))


@dataclass(frozen=True)
class Applied:
    """What `apply_child` sent: the object as stored, and the drifted fields it corrected."""

    stored: Obj
    drifted: tuple[str, ...] = ()
    """Non-empty when the manifest was current but the live object no longer held these fields."""


def apply_child(
    api: ClusterApi, manifest: Obj, observed: Obj | None, *, owner_uid: str, create_only: bool = False
) -> Applied | None:
    """Make `manifest` true in the cluster; returns what was sent, or None when nothing was.

    `observed` is the object as the caller last saw it (None: not seen, so it is looked up first,
    which keeps us from taking over a same-named object nobody told us about). `create_only`
    is for kinds whose spec is immutable once created (Jobs): an existing one is left as it is.
    """
    if observed is None:
        meta = manifest["metadata"]
        observed = api.get(resource_of(manifest), meta.get("namespace"), meta["name"])
    if observed is not None:
        if controller_uid(observed) != owner_uid:
            meta = observed["metadata"]
            raise ForeignObjectError(
                f"{manifest['kind']} {meta.get('namespace')}/{meta['name']} exists and is not controlled "
                "by this RecommenderCluster; delete or rename it"
            )
        if create_only:
            return None
        if is_current(observed, manifest):
            drifted = tuple(drifted_fields(manifest, observed))
            if not drifted:
                return None
            return Applied(api.apply(stamped(manifest), field_manager=FIELD_MANAGER, force=True), drifted)
    return Applied(api.apply(stamped(manifest), field_manager=FIELD_MANAGER, force=True))
