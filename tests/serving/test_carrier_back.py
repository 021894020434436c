"""A carry back (`CarrierConfig.back`: a rollback to a kept layout the old layout was carried from)
in the Kubernetes carrier (serving/carry/carrier.py), against the fake shards of test_carrier: no
cut and no carry folder, the kept layout's leaders opened first, the old logs forwarded from their
first record, progress in `carry-back/<to>/<from>/forwarded.json`, the same requests and report.

Here the "new" replicas of test_carrier (3 shards x 2) play the kept layout, the "old" leaders (2
shards) the layout that serves and is rolled back from.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from shardrec.api.carry import (
    FINISH_REQUESTED_ANNOTATION,
    HAND_OVER_REQUESTED_ANNOTATION,
    OPEN_REQUESTED_ANNOTATION,
    CarrierConfig,
)
from shardrec.serving.carry.carrier import Carrier, CarrierState
from shardrec.serving.carry.forwarding import ShardCalls
from shardrec.serving.carry.store import CarryStore
from shardrec.serving.index.carry import CARRY_FILE, PROGRESS_FILE
from shardrec.serving.shard.app import FENCE_PATH
from tests.serving.test_carrier import NEW, OLD, TOKEN, FakeKube, FakeShards, _config, _old_write, _on_new


class _Shards(FakeShards):
    """FakeShards whose leaders in `refuse_fence` are ready but answer the fence with a 500."""

    def __init__(self, shard_of_url: dict[str, int]) -> None:
        super().__init__(shard_of_url)
        self.refuse_fence: set[str] = set()

    def handle(self, request: httpx.Request) -> httpx.Response:
        base = f"{request.url.scheme}://{request.url.host}:{request.url.port}"
        if request.url.path == FENCE_PATH and base in self.refuse_fence:
            return httpx.Response(500, json={"error": {"code": "internal", "message": "boom"}})
        return super().handle(request)


def _back_world(tmp_path: Path) -> tuple[Carrier, _Shards, FakeKube]:
    urls = {url: shard for shard, url in enumerate(OLD)}
    urls |= {url: shard for shard, replicas in enumerate(NEW) for url in replicas}
    shards = _Shards(urls)
    shards.fenced |= {replicas[0] for replicas in NEW}  # the kept layout's leaders, since its hand-over
    config = _config(str(tmp_path / "carry-back" / "new" / "old"), back=True)
    calls = ShardCalls(httpx.Client(transport=httpx.MockTransport(shards.handle)), TOKEN)
    kube = FakeKube()
    return Carrier(config, CarryStore(config.carry_store), calls, kube), shards, kube


def _again(carrier: Carrier, kube: FakeKube) -> Carrier:
    """The same carrier restarted: a new process reading its progress from the store."""
    return Carrier(carrier.config, CarryStore(carrier.config.carry_store), carrier.calls, kube)


def test_the_back_flag_is_in_the_config_json_only_when_true() -> None:
    forward = _config("/store/demo/carry/new")
    assert "back" not in json.loads(forward.model_dump_json()) and not forward.back
    back = _config("/store/demo/carry-back/new/old", back=True)
    assert json.loads(back.model_dump_json())["back"] is True
    assert CarrierConfig.model_validate_json(back.model_dump_json()) == back


def test_a_carry_back_cuts_nothing_opens_the_kept_leaders_and_forwards_from_the_first_record(
    tmp_path: Path,
) -> None:
    carrier, shards, kube = _back_world(tmp_path)
    for n in range(12):
        _old_write(shards, f"item{n}")
    _old_write(shards, "item3", "delete")
    carrier.step()
    report = kube.last
    assert (report.phase, report.cut, report.caught_up, report.forwarded) == ("forwarding", None, True, 13)
    assert report.after == [len(shards.logs[url]) for url in OLD]
    assert not shards.fenced, "the kept layout's leaders were opened"
    assert _on_new(shards) == _on_new(shards, 1), "followers replicated"
    assert _on_new(shards)["item3"] == "delete" and len(_on_new(shards)) == 12
    folder = tmp_path / "carry-back" / "new" / "old"
    assert not (folder / CARRY_FILE).exists() and (folder / PROGRESS_FILE).exists()
    assert json.loads((folder / PROGRESS_FILE).read_text())["cut"] is None


def test_a_carry_back_hands_over_finishes_and_a_restart_forwards_nothing_twice(tmp_path: Path) -> None:
    carrier, shards, kube = _back_world(tmp_path)
    for n in range(5):
        _old_write(shards, f"a{n}")
    carrier.step()
    _old_write(shards, "b0")
    again = _again(carrier, kube)
    again.step()
    assert kube.last.forwarded == 6 and sum(len(shards.logs[r[0]]) for r in NEW) == 6
    kube.annotations[HAND_OVER_REQUESTED_ANNOTATION] = "hand-over-1"
    _old_write(shards, "just-before")
    again.step()
    assert kube.last.handed_over == "hand-over-1" and set(OLD) <= shards.fenced
    assert "just-before" in _on_new(shards)
    kube.annotations[FINISH_REQUESTED_ANNOTATION] = "finish-1"
    again.step()
    assert kube.last.done and kube.last.phase == "done"


def test_a_second_rollback_between_the_same_layouts_resumes_after_the_first_ones_progress(
    tmp_path: Path,
) -> None:
    """old -> kept (done), kept -> old again, then old -> kept a second time: the progress of the
    first carry back is on the store, done. Its records are on the kept layout already (and may be
    overwritten there since); what the old leaders logged after them is what it lacks."""
    carrier, shards, kube = _back_world(tmp_path)
    for n in range(4):
        _old_write(shards, f"first{n}")
    kube.annotations[HAND_OVER_REQUESTED_ANNOTATION] = "hand-over-1"
    kube.annotations[FINISH_REQUESTED_ANNOTATION] = "finish-1"
    carrier.step()
    carrier.step()
    assert kube.last.done
    shards.fenced.clear()  # the old layout served again (its own carry back opened its leaders)
    for url in [replicas[0] for replicas in NEW]:
        shards.fenced.add(url)  # and the kept layout's were fenced by that hand-over
    _old_write(shards, "second")
    new_sizes = sum(len(shards.logs[r[0]]) for r in NEW)
    kube.annotations.clear()  # a new Deployment: no requests yet
    second = _again(carrier, kube)
    second.step()
    report = kube.last
    assert (report.done, report.handed_over, report.phase, report.caught_up) == (
        False,
        None,
        "forwarding",
        True,
    )
    assert sum(len(shards.logs[r[0]]) for r in NEW) == new_sizes + 1, "only what came after"
    assert not (set(OLD) & shards.fenced), "the serving layout's leaders are not fenced again"
    state = CarrierState.from_dict(json.loads((tmp_path / "carry-back/new/old" / PROGRESS_FILE).read_text()))
    assert not state.fenced and state.handed_over is None


def test_a_kept_leader_that_does_not_answer_holds_the_forwarding_not_the_requests(tmp_path: Path) -> None:
    carrier, shards, kube = _back_world(tmp_path)
    _old_write(shards, "x")
    shards.refuse_fence.add(NEW[1][0])
    carrier.step()
    assert "not opened" in kube.last.message and kube.last.forwarded == 0
    kube.annotations[OPEN_REQUESTED_ANNOTATION] = "open-1"  # an abandoned carry back
    carrier.step()
    assert kube.last.opened == "open-1", "the serving layout's leaders are opened regardless"
    shards.refuse_fence.clear()
    carrier.step()
    assert kube.last.forwarded == 1 and kube.last.message == ""
