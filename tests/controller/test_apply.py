"""The generic applier: hash-skip, ownership, create-only kinds."""

from __future__ import annotations

import pytest

from shardrec_operator.desired.index_build import build_index_job
from shardrec_operator.desired.rbac import build_router_role
from shardrec_operator.reconcile.apply import (
    APPLIED_HASH_ANNOTATION,
    ForeignObjectError,
    apply_child,
    manifest_hash,
)
from tests.controller.fake_api import FakeClusterApi
from tests.controller.samples import UID, cluster, layout_of

SAMPLE = cluster()


def test_first_apply_stamps_the_hash_and_a_repeat_sends_nothing() -> None:
    api = FakeClusterApi()
    role = build_router_role(SAMPLE)
    applied = apply_child(api, role, None, owner_uid=UID)
    assert applied is not None
    stored = applied.stored
    assert stored["metadata"]["annotations"][APPLIED_HASH_ANNOTATION] == manifest_hash(role)
    assert apply_child(api, role, stored, owner_uid=UID) is None
    assert api.writes == [("apply", "Role", "recs-router")]


def test_a_changed_manifest_is_applied_again() -> None:
    api = FakeClusterApi()
    role = build_router_role(SAMPLE)
    applied = apply_child(api, role, None, owner_uid=UID)
    assert applied is not None
    role["rules"][0]["verbs"] = ["get"]
    again = apply_child(api, role, applied.stored, owner_uid=UID)
    assert again is not None and again.drifted == (), "a spec change is not drift"
    assert len(api.writes) == 2


def test_create_only_kinds_are_never_reapplied() -> None:
    api = FakeClusterApi()
    job = build_index_job(SAMPLE, layout_of(SAMPLE), "a1")
    applied = apply_child(api, job, None, owner_uid=UID, create_only=True)
    assert applied is not None
    job["spec"]["backoffLimit"] = 9
    assert apply_child(api, job, applied.stored, owner_uid=UID, create_only=True) is None


def test_an_object_controlled_by_someone_else_is_refused() -> None:
    api = FakeClusterApi()
    role = build_router_role(SAMPLE)
    foreign = api.put({**role, "metadata": {**role["metadata"], "ownerReferences": []}})
    with pytest.raises(ForeignObjectError, match="recs-router"):
        apply_child(api, role, foreign, owner_uid=UID)
    with pytest.raises(ForeignObjectError):
        apply_child(api, role, None, owner_uid=UID)
    assert api.writes == []
