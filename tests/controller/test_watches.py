"""Children's watch events wake their cluster; the API server filters the watches by label."""

from __future__ import annotations

import kopf
from kopf._cogs.structs.references import Resource

from shardrec_operator import handlers
from shardrec_operator.reconcile import resources as kinds
from shardrec_operator.runtime import Runtime, Schedule
from tests.controller.fake_api import FakeClusterApi


def test_every_watched_kind_has_a_wake_handler() -> None:
    registry = kopf.get_default_registry()
    ids = {handler.id for handler in registry._watching._handlers}
    assert {f"wake-on-{kind.plural}" for kind in kinds.WATCHED} <= ids


def test_watches_of_children_carry_a_server_side_label_selector_and_the_clusters_none() -> None:
    settings = kopf.OperatorSettings()
    memo = kopf.Memo(runtime=Runtime(api=FakeClusterApi()))
    handlers.configure(settings=settings, memo=memo)
    selectors = settings.watching.label_selectors
    expected = ["app.kubernetes.io/managed-by=shardrec-operator,shardrec.io/cluster"]
    assert list(selectors.collect(Resource("", "v1", "pods"))) == expected
    assert list(selectors.collect(Resource("apps", "v1", "statefulsets"))) == expected
    assert list(selectors.collect(Resource("shardrec.io", "v1alpha1", "recommenderclusters"))) == []


def test_a_child_event_wakes_the_cluster_named_by_its_label() -> None:
    clock = [10.0]
    runtime = Runtime(api=FakeClusterApi())
    runtime.schedule = Schedule(resync_seconds=300, clock=lambda: clock[0])
    runtime.clusters.remember("ns", "recs", "uid-1")
    runtime.schedule.passed("uid-1", None)
    memo = kopf.Memo(runtime=runtime)
    handlers.wake_on_child_change(memo=memo, namespace="ns", labels={"shardrec.io/cluster": "other"})
    assert not runtime.schedule.is_due("uid-1")
    handlers.wake_on_child_change(memo=memo, namespace="ns", labels={"shardrec.io/cluster": "recs"})
    assert runtime.schedule.is_due("uid-1")
