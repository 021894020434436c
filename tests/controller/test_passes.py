"""The kopf edge: `run_pass` / `run_cleanup` with the API double, and the handler registration."""

from __future__ import annotations

import copy
from typing import Any

import kopf
import pytest

from shardrec.planning import RecordEvent
from shardrec_operator import handlers
from shardrec_operator.config import OperatorConfig
from shardrec_operator.desired import names
from shardrec_operator.passes import run_cleanup, run_pass
from shardrec_operator.reconcile import resources as kinds
from shardrec_operator.runtime import Runtime
from tests.controller.fake_api import FakeClusterApi
from tests.controller.samples import NAME, NAMESPACE, T0, body


class Recorder:
    def __init__(self) -> None:
        self.events: list[RecordEvent] = []

    def __call__(self, _body: Any, event: RecordEvent) -> None:
        self.events.append(event)

    def reasons(self) -> list[str]:
        return [event.reason for event in self.events]


def runtime_with(api: FakeClusterApi) -> Runtime:
    return Runtime(api=api, config=OperatorConfig(resync_seconds=15, conflict_retry_seconds=3))


def apply_patch(document: dict[str, Any], patch: dict[str, Any]) -> None:
    if "status" in patch:
        document.setdefault("status", {}).update(copy.deepcopy(patch["status"]))


def test_a_change_pass_writes_status_once_and_posts_the_planner_events() -> None:
    api, recorder, document = FakeClusterApi(), Recorder(), body()
    runtime = runtime_with(api)
    patch: dict[str, Any] = {}
    run_pass(runtime, document, patch, trigger="create", post_event=recorder, now=T0)
    assert patch["status"]["phase"] == "Building"
    assert patch["status"]["observedGeneration"] == 1
    assert "BuildingLayout" in recorder.reasons()
    apply_patch(document, patch)
    sample = runtime.metrics.registry.get_sample_value
    assert sample("shardrec_operator_reconciles_total", {"trigger": "create", "outcome": "ok"}) == 1
    assert (
        sample(
            "shardrec_operator_cluster_phase", {"namespace": NAMESPACE, "cluster": NAME, "phase": "Building"}
        )
        == 1
    )
    assert (
        sample("shardrec_operator_cluster_phase", {"namespace": NAMESPACE, "cluster": NAME, "phase": "Ready"})
        == 0
    )
    assert (sample("shardrec_operator_api_writes_total") or 0) > 0
    assert sample("shardrec_operator_status_writes_total") == 1
    runtime.schedule.forget(document["metadata"]["uid"])
    second: dict[str, Any] = {}
    run_pass(runtime, document, second, trigger="timer", post_event=recorder, now=T0)
    assert second["status"]["routerEndpoint"] == "http://recs-router.ml.svc:8080", "the Service exists now"
    apply_patch(document, second)
    runtime.schedule.forget(document["metadata"]["uid"])
    third: dict[str, Any] = {}
    run_pass(runtime, document, third, trigger="timer", post_event=recorder, now=T0)
    assert "status" not in third, "an unchanged status is not written again"
    assert sample("shardrec_operator_status_writes_total") == 2


def test_timer_ticks_cost_nothing_until_the_cluster_is_due() -> None:
    api, document = FakeClusterApi(), body()
    runtime = runtime_with(api)
    run_pass(runtime, document, {}, trigger="create", post_event=Recorder(), now=T0)
    reads = api.reads
    run_pass(runtime, document, {}, trigger="timer", post_event=Recorder(), now=T0)
    assert api.reads == reads, "a tick before the planner's requeue makes no API call"
    runtime.schedule.forget(document["metadata"]["uid"])
    run_pass(runtime, document, {}, trigger="timer", post_event=Recorder(), now=T0)
    assert api.reads > reads


def test_a_busy_cluster_makes_the_timer_skip_instead_of_waiting() -> None:
    api, document = FakeClusterApi(), body()
    runtime = runtime_with(api)
    with runtime.locks.hold(document["metadata"]["uid"]):
        run_pass(runtime, document, {}, trigger="timer", post_event=Recorder(), now=T0)
    assert api.reads == 0


def test_an_invalid_spec_is_a_permanent_error_with_a_condition_naming_the_field() -> None:
    api, document = FakeClusterApi(), body()
    document["spec"]["index"].pop("store")
    runtime = runtime_with(api)
    patch: dict[str, Any] = {}
    with pytest.raises(kopf.PermanentError, match=r"spec\.index\.store\.persistentVolumeClaim"):
        run_pass(runtime, document, patch, trigger="update", post_event=Recorder(), now=T0)
    ready = next(c for c in patch["status"]["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    assert "persistentVolumeClaim" in ready["message"]
    assert patch["status"]["phase"] == "Failed"
    assert api.writes == [], "nothing is created for an invalid spec"
    apply_patch(document, patch)
    runtime.schedule.forget(document["metadata"]["uid"])
    second: dict[str, Any] = {}
    run_pass(runtime, document, second, trigger="timer", post_event=Recorder(), now=T0)
    assert second == {}, "the timer neither raises nor rewrites an unchanged verdict"


def test_schema_errors_from_an_older_crd_name_the_field_too() -> None:
    document = body(shards=0)
    with pytest.raises(kopf.PermanentError, match="shards"):
        run_pass(runtime_with(FakeClusterApi()), document, {}, trigger="create", post_event=Recorder())


def test_an_api_conflict_becomes_a_short_temporary_error() -> None:
    api = FakeClusterApi()
    api.conflict_on_apply.add("ServiceAccount")
    runtime = runtime_with(api)
    with pytest.raises(kopf.TemporaryError) as raised:
        run_pass(runtime, body(), {}, trigger="create", post_event=Recorder(), now=T0)
    assert raised.value.delay == 3
    sample = runtime.metrics.registry.get_sample_value
    assert sample("shardrec_operator_reconciles_total", {"trigger": "create", "outcome": "conflict"}) == 1


def test_a_foreign_object_is_reported_in_an_event_and_retried_later() -> None:
    api, recorder = FakeClusterApi(), Recorder()
    api.put(
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "recs-shard", "namespace": NAMESPACE},
        }
    )
    with pytest.raises(kopf.TemporaryError):
        run_pass(runtime_with(api), body(), {}, trigger="create", post_event=recorder, now=T0)
    assert recorder.reasons() == ["ObjectNotOwned"]


def test_artifact_cleanup_runs_a_job_and_lets_the_deletion_finish_when_it_completes() -> None:
    api, recorder = FakeClusterApi(), Recorder()
    runtime = runtime_with(api)
    document = body(deleteArtifactsOnDelete=True)
    with pytest.raises(kopf.TemporaryError, match="started Job"):
        run_cleanup(runtime, document, retry_after=1, post_event=recorder)
    (job,) = api.of_kind(kinds.JOB)
    assert job["metadata"]["name"] == names.cleanup_job(NAME)
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert "'/store/recs'" in command[-1]
    with pytest.raises(kopf.TemporaryError, match="waiting"):
        run_cleanup(runtime, document, retry_after=1, post_event=recorder)
    api.run_controllers()
    run_cleanup(runtime, document, retry_after=1, post_event=recorder)
    assert recorder.reasons() == ["ArtifactsDeleted"]


def test_a_failed_cleanup_still_lets_the_deletion_finish_with_a_warning() -> None:
    api, recorder = FakeClusterApi(), Recorder()
    api.failing_jobs.add(names.cleanup_job(NAME))
    runtime = runtime_with(api)
    document = body(deleteArtifactsOnDelete=True)
    with pytest.raises(kopf.TemporaryError):
        run_cleanup(runtime, document, retry_after=1, post_event=recorder)
    api.run_controllers()
    run_cleanup(runtime, document, retry_after=1, post_event=recorder)
    assert recorder.events[-1].type == "Warning" and recorder.reasons() == ["ArtifactCleanupFailed"]


def test_only_the_artifact_cleanup_asks_kopf_for_a_finalizer() -> None:
    registry = kopf.get_default_registry()
    timers = [h for h in registry._spawning.get_all_handlers() if h.fn is handlers.reconcile_on_timer]
    assert len(timers) == 1 and timers[0].requires_finalizer is False
    assert timers[0].interval == handlers.CONFIG.timer_seconds
    needing = [h for h in registry._changing.get_all_handlers() if h.requires_finalizer]
    assert [h.fn for h in needing] == [handlers.delete_artifacts]
    assert needing[0].when is not None
    assert needing[0].when(spec={"deleteArtifactsOnDelete": False}) is False
    assert needing[0].when(spec={"deleteArtifactsOnDelete": True}) is True


def test_change_handlers_cover_create_update_and_resume_with_one_function() -> None:
    registry = kopf.get_default_registry()
    reasons = {
        str(getattr(h.reason, "value", h.reason))
        for h in registry._changing.get_all_handlers()
        if h.fn is handlers.reconcile_on_change
    }
    initial = [
        h for h in registry._changing.get_all_handlers() if h.fn is handlers.reconcile_on_change and h.initial
    ]
    assert {"create", "update"} <= reasons and len(initial) == 1, "resume is the initial listing"
