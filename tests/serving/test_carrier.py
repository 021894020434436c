"""The Kubernetes carrier (serving/carry/carrier.py) without processes or a cluster: its pure state
logic (which requests are new, the report, the state kept on the store), and whole steps against
fake shards (an httpx.MockTransport that numbers, replicates, fences and serves its log, as the
shard server does) with a fake Kubernetes edge holding the annotations in memory."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from pydantic import ValidationError

from shardrec.api.carry import (
    CARRY_PROGRESS_ANNOTATION,
    FINISH_REQUESTED_ANNOTATION,
    HAND_OVER_REQUESTED_ANNOTATION,
    OPEN_REQUESTED_ANNOTATION,
    CarrierConfig,
    CarryProgress,
)
from shardrec.serving.carry.carrier import (
    Carrier,
    CarrierState,
    config_problems,
    progress_report,
    requests_todo,
)
from shardrec.serving.carry.forwarding import OldRead, Progress, ShardCalls, forward_pass
from shardrec.serving.carry.kube import CarryRequests, InClusterKube, KubeError
from shardrec.serving.carry.store import CarryFolderError, CarryStore, fetch_carry
from shardrec.serving.index.carry import carried_state, log_file_name
from shardrec.serving.index.partitioning import shard_of
from shardrec.serving.index.write_log import WriteRecord
from shardrec.serving.shard.app import FENCE_PATH, REPLICATE_PATH, WRITES_PATH

TOKEN = "t0ken"


class FakeKube:
    """The carrier's Kubernetes edge in memory: the Deployment's annotations, the pod's reports."""

    def __init__(self) -> None:
        self.annotations: dict[str, str] = {}
        self.reports: list[CarryProgress] = []

    def requests(self) -> CarryRequests:
        return CarryRequests.from_annotations(dict(self.annotations))

    def report(self, progress: CarryProgress) -> None:
        self.reports.append(progress)

    @property
    def last(self) -> CarryProgress:
        return self.reports[-1]


class FakeShards:
    """Shard replicas keyed by base URL: a leader numbers and logs ops, a follower takes numbered
    records (409 on a gap), a fenced leader answers 503, GET /v1/admin/writes pages the log."""

    def __init__(self, shard_of_url: dict[str, int]) -> None:
        self.shard_of_url = shard_of_url
        self.logs: dict[str, list[dict[str, object]]] = {}
        self.fenced: set[str] = set()
        self.down: set[str] = set()

    def write(self, url: str, op: str, item: str) -> None:
        """A write the router sends to a leader."""
        log = self.logs.setdefault(url, [])
        log.append(
            {"seq": len(log) + 1, "op": op, "id": item, **({"vector": [1.0, 0.0]} if op == "upsert" else {})}
        )

    def handle(self, request: httpx.Request) -> httpx.Response:
        base = f"{request.url.scheme}://{request.url.host}:{request.url.port}"
        if base in self.down:
            raise httpx.ConnectError("down", request=request)
        if request.url.path == "/readyz":
            return httpx.Response(200, json={"ready": True})
        assert request.headers["authorization"] == f"Bearer {TOKEN}"
        log = self.logs.setdefault(base, [])
        if request.method == "GET":
            after = int(request.url.params["after"])
            limit = int(request.url.params["limit"])
            page = [r for r in log if int(str(r["seq"])) > after][:limit]
            return httpx.Response(
                200, json={"shard": self.shard_of_url[base], "last_sequence": len(log), "records": page}
            )
        body = json.loads(request.content)
        if request.url.path == FENCE_PATH:
            (self.fenced.add if body["fenced"] else self.fenced.discard)(base)
            return httpx.Response(200, json={"fenced": body["fenced"], "last_sequence": len(log)})
        if request.url.path == WRITES_PATH:
            if base in self.fenced:
                return httpx.Response(503, json={"error": {"code": "fenced", "message": "fenced"}})
            first = len(log) + 1
            log.extend({**op, "seq": first + n} for n, op in enumerate(body["ops"]))
            return httpx.Response(200, json={"sequences": list(range(first, len(log) + 1))})
        assert request.url.path == REPLICATE_PATH
        fresh = [r for r in body["records"] if r["seq"] > len(log)]
        if fresh and fresh[0]["seq"] != len(log) + 1:
            return httpx.Response(409, json={"applied_sequence": len(log)})
        log.extend(fresh)
        return httpx.Response(200, json={"applied_sequence": len(log)})


OLD = ["http://127.0.0.1:7000", "http://127.0.0.1:7001"]
NEW = [[f"http://127.0.0.1:{8000 + 10 * s + r}" for r in range(2)] for s in range(3)]


def _config(store: str, **changes: object) -> CarrierConfig:
    data: dict[str, object] = {
        "cluster": "demo",
        "from_layout": "old",
        "from_shards": 2,
        "to_layout": "new",
        "to_shards": 3,
        "old_leaders": OLD,
        "new_replicas": NEW,
        "carry_store": store,
        "prior_carry": None,
        "token_file": "/etc/shardrec/shard-token/send",
        "ca_file": None,
        "tls_name": None,
        "deployment": "demo-carry-new",
        "poll_seconds": 0.01,
    }
    return CarrierConfig.model_validate({**data, **changes})


def _world(tmp_path: Path, **changes: object) -> tuple[Carrier, FakeShards, FakeKube]:
    urls = {url: shard for shard, url in enumerate(OLD)}
    urls |= {url: shard for shard, replicas in enumerate(NEW) for url in replicas}
    shards = FakeShards(urls)
    kube = FakeKube()
    config = _config(str(tmp_path / "carry" / "new"), **changes)
    calls = ShardCalls(httpx.Client(transport=httpx.MockTransport(shards.handle)), TOKEN)
    return Carrier(config, CarryStore(config.carry_store), calls, kube), shards, kube


def _old_write(shards: FakeShards, item: str, op: str = "upsert") -> None:
    shards.write(OLD[shard_of(item, 2)], op, item)


def _on_new(shards: FakeShards, replica: int = 0) -> dict[str, str]:
    """item -> its last op, as every new shard's `replica` holds it (each id on its owner only)."""
    found: dict[str, str] = {}
    for shard, replicas in enumerate(NEW):
        for record in shards.logs.get(replicas[replica], []):
            assert shard_of(str(record["id"]), 3) == shard
            found[str(record["id"])] = str(record["op"])
    return found


# --- the pure parts ------------------------------------------------------------------------------


def test_the_contract_example_config_parses_and_a_wrong_url_count_is_refused() -> None:
    config = _config("s3://bucket/prefix/carry/new/")
    assert config.poll_seconds == 0.01 and config_problems(config) == []
    assert config_problems(_config("/x", old_leaders=OLD[:1])) == ["old_leaders: 1 URLs for 2 old shards"]
    assert config_problems(_config("/x", new_replicas=[*NEW[:2], []]))[0].startswith("new_replicas")
    with pytest.raises(ValidationError):
        _config("/x", surprise=1)  # extra keys are refused: both sides share this one model


def test_a_request_is_handled_once_and_an_open_wins_over_a_hand_over_seen_with_it() -> None:
    state = CarrierState(Progress([3, 4]), [3, 4])
    assert requests_todo(state, CarryRequests()).hand_over is None
    assert requests_todo(state, CarryRequests(hand_over="g7")).hand_over == "g7"
    state.handed_over = "g7"
    assert requests_todo(state, CarryRequests(hand_over="g7")).hand_over is None
    state.hand_over_failed = "g8"
    assert requests_todo(state, CarryRequests(hand_over="g8")).hand_over is None
    both = requests_todo(state, CarryRequests(hand_over="g9", open="o1", finish="f"))
    assert (both.hand_over, both.hand_over_refused, both.open, both.final) == (None, "g9", "o1", True)
    state.opened = "o1"
    again = requests_todo(state, CarryRequests(hand_over="g9", open="o1"))
    assert (again.hand_over, again.open) == ("g9", None)


def test_the_state_on_the_store_round_trips_and_reads_the_local_runtimes_file() -> None:
    state = CarrierState(Progress([5, 0], True, False, 12), [2, 0], "g1", None, "o1", [1], fenced=True)
    assert CarrierState.from_dict(json.loads(json.dumps(state.as_dict()))) == state
    local = Progress([7, 1], caught_up=True, forwarded=3).as_dict()  # what LocalCarry writes
    assert CarrierState.from_dict(local).progress == Progress([7, 1], True, False, 3)


def test_the_report_has_the_contracts_keys(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    config = _config(str(tmp_path))
    before = progress_report(config, None, "cutting", "", datetime(2026, 1, 1, tzinfo=UTC))
    assert before.cut is None and before.after == [0, 0] and not before.caught_up
    state = CarrierState(Progress([5, 6], True, False, 4), [1, 2], handed_over="g1")
    report = progress_report(config, state, "forwarding", "x" * 5000, datetime(2026, 1, 1, tzinfo=UTC))
    body = json.loads(report.model_dump_json())
    assert set(body) == {
        "to_layout", "from_layout", "phase", "cut", "after", "caught_up", "forwarded", "handed_over",
        "hand_over_failed", "opened", "done", "message", "at",
    }  # fmt: skip
    assert body["cut"] == [1, 2] and body["after"] == [5, 6] and body["handed_over"] == "g1"
    assert len(body["message"]) == 1000 and body["at"] == "2026-01-01T00:00:00+00:00"


class _Partial:
    def read(self, after: list[int]) -> OldRead:
        return OldRead({0: [WriteRecord(after[0] + 1, "delete", "a")]}, complete=False)


class _Sink:
    shards = 1

    def __init__(self) -> None:
        self.sent: list[WriteRecord] = []

    def send(self, shard: int, records: list[WriteRecord]) -> None:
        self.sent.extend(records)


def test_a_pass_that_read_part_of_a_backlog_is_not_caught_up_and_cannot_end() -> None:
    sink = _Sink()
    result = forward_pass(Progress([0]), _Partial(), sink, final=True)  # type: ignore[arg-type]
    assert result.sent == 1 and result.progress.after == [1]
    assert not result.progress.caught_up and not result.progress.done


# --- whole steps against fake shards -------------------------------------------------------------


def test_cut_forward_restart_hand_over_finish(tmp_path: Path) -> None:
    carrier, shards, kube = _world(tmp_path)
    for n in range(10):
        _old_write(shards, f"pre{n}")
    _old_write(shards, "pre3", "delete")
    carrier.step()
    cut = kube.last.cut
    assert cut is not None and sum(cut) == 11 and kube.last.phase == "forwarding" and kube.last.caught_up
    folder = fetch_carry(carrier.config.carry_store, tmp_path / "unused")
    assert carried_state(folder)[1]["pre3"] is None  # the build folds the cut in

    for n in range(20):
        _old_write(shards, f"post{n}")
    _old_write(shards, "pre4", "delete")
    carrier.step()
    assert kube.last.forwarded == 21 and _on_new(shards) == _on_new(shards, 1)
    assert set(_on_new(shards)) == {f"post{n}" for n in range(20)} | {"pre4"}

    # a restarted carrier resumes from the store: nothing is forwarded twice
    _old_write(shards, "late")
    again = Carrier(carrier.config, CarryStore(carrier.config.carry_store), carrier.calls, kube)
    again.step()
    assert kube.last.forwarded == 22 and sum(len(shards.logs[r[0]]) for r in NEW) == 22

    kube.annotations[HAND_OVER_REQUESTED_ANNOTATION] = "gen-7"
    _old_write(shards, "just-before")
    again.step()
    assert kube.last.handed_over == "gen-7" and shards.fenced == set(OLD)
    assert "just-before" in _on_new(shards) and "just-before" in _on_new(shards, 1)
    assert any(r.phase == "handing-over" for r in kube.reports)

    kube.annotations[FINISH_REQUESTED_ANNOTATION] = "fin"
    again.step()
    assert kube.last.done and kube.last.phase == "done"
    state = CarryStore(carrier.config.carry_store).read_progress()
    assert state is not None and state["done"] and state["handed_over"] == "gen-7"


def test_a_hand_over_that_cannot_forward_opens_the_leaders_again_and_says_why(tmp_path: Path) -> None:
    carrier, shards, kube = _world(tmp_path)
    carrier.step()
    _old_write(shards, "x")
    shards.down = {NEW[shard_of("x", 3)][0]}
    kube.annotations[HAND_OVER_REQUESTED_ANNOTATION] = "gen-1"
    carrier.step()
    assert kube.last.hand_over_failed == "gen-1" and kube.last.handed_over is None
    assert "gen-1" in kube.last.message and shards.fenced == set()
    carrier.step()  # the same id is not tried again
    assert kube.last.hand_over_failed == "gen-1" and kube.last.message == ""
    shards.down = set()
    kube.annotations[HAND_OVER_REQUESTED_ANNOTATION] = "gen-2"
    carrier.step()
    assert kube.last.handed_over == "gen-2" and shards.fenced == set(OLD)


def test_an_unfenceable_leader_fails_the_hand_over_and_one_that_cannot_be_opened_is_retried(
    tmp_path: Path,
) -> None:
    carrier, shards, kube = _world(tmp_path)
    carrier.step()
    shards.down = {OLD[1]}
    kube.annotations[HAND_OVER_REQUESTED_ANNOTATION] = "gen-1"
    carrier.step()
    assert kube.last.hand_over_failed == "gen-1" and shards.fenced == set()
    assert "could not be fenced" in kube.last.message


def test_open_requests_open_the_old_leaders(tmp_path: Path) -> None:
    carrier, shards, kube = _world(tmp_path)
    carrier.step()
    kube.annotations[HAND_OVER_REQUESTED_ANNOTATION] = "gen-1"
    carrier.step()
    assert shards.fenced == set(OLD)
    shards.fenced.discard(OLD[0])  # its leader restarted: a fence is held in memory
    carrier.step()
    assert shards.fenced == set(OLD)  # fenced again until an open request
    kube.annotations[OPEN_REQUESTED_ANNOTATION] = "rollback-1"
    carrier.step()
    assert kube.last.opened == "rollback-1" and shards.fenced == set()
    carrier.step()
    assert shards.fenced == set()  # handled once: the old hand-over request is not redone


def test_new_replicas_not_ready_make_the_pass_wait_without_an_error(tmp_path: Path) -> None:
    carrier, shards, kube = _world(tmp_path)
    shards.down = {NEW[2][1]}
    _old_write(shards, "a")
    carrier.step()
    assert kube.last.cut == [len(shards.logs.get(OLD[0], [])), len(shards.logs.get(OLD[1], []))]
    _old_write(shards, "b")
    carrier.step()
    assert not kube.last.caught_up and kube.last.message == "" and kube.last.forwarded == 0
    shards.down = set()
    carrier.step()
    assert kube.last.caught_up and kube.last.forwarded == 1


def test_a_carry_folder_of_another_layout_on_the_store_fails_the_carrier(tmp_path: Path) -> None:
    carrier, _shards, kube = _world(tmp_path)
    carrier.step()
    other = Carrier(
        _config(carrier.config.carry_store, from_layout="other"),
        CarryStore(carrier.config.carry_store),
        carrier.calls,
        kube,
    )
    other.step()
    assert kube.last.phase == "failed" and "other" in kube.last.message


def test_the_prior_carry_is_folded_into_the_cut(tmp_path: Path) -> None:
    first, shards, _ = _world(tmp_path / "a")
    _old_write(shards, "from-v1")
    _old_write(shards, "gone", "delete")
    first.step()
    second, shards2, _ = _world(tmp_path / "b", prior_carry=first.config.carry_store)
    _old_write(shards2, "on-v2")
    second.step()
    state = carried_state(Path(second.config.carry_store))[1]
    assert state == {"from-v1": (1.0, 0.0), "gone": None, "on-v2": (1.0, 0.0)}


def test_an_incomplete_carry_folder_is_refused(tmp_path: Path) -> None:
    carrier, shards, _ = _world(tmp_path)
    _old_write(shards, "a")
    carrier.step()
    folder = Path(carrier.config.carry_store)
    (folder / log_file_name(shard_of("a", 2))).unlink()
    with pytest.raises(CarryFolderError, match=r"carry\.json"):
        fetch_carry(str(tmp_path / "nowhere"), tmp_path / "dest")
    with pytest.raises(CarryFolderError, match="ends at sequence 0"):
        fetch_carry(str(folder), tmp_path / "dest")


class _Apis:
    """Stands in for CoreV1Api and AppsV1Api: what InClusterKube calls, and a failure on demand."""

    def __init__(self) -> None:
        self.patches: list[tuple[str, str, dict[str, object]]] = []
        self.fail = False

    def read_namespaced_deployment(self, name: str, namespace: str) -> object:
        if self.fail:
            raise RuntimeError("forbidden")
        annotations = {HAND_OVER_REQUESTED_ANNOTATION: "gen-3", "other": "x"}
        return SimpleNamespace(metadata=SimpleNamespace(annotations=annotations))

    def patch_namespaced_pod(self, name: str, namespace: str, body: dict[str, object]) -> None:
        if self.fail:
            raise RuntimeError("forbidden")
        self.patches.append((name, namespace, body))


def test_the_kubernetes_edge_reads_the_requests_and_patches_the_report() -> None:
    apis = _Apis()
    kube = InClusterKube("ml", "demo-carry-new-abc", "demo-carry-new")
    kube._apis = (apis, apis)  # no cluster: the client objects are replaced
    assert kube.requests() == CarryRequests(hand_over="gen-3")
    report = CarryProgress(to_layout="new", from_layout="old", phase="forwarding", after=[1, 2])
    kube.report(report)
    name, namespace, body = apis.patches[0]
    assert (name, namespace) == ("demo-carry-new-abc", "ml")
    assert body == {"metadata": {"annotations": {CARRY_PROGRESS_ANNOTATION: report.model_dump_json()}}}
    apis.fail = True
    with pytest.raises(KubeError, match="demo-carry-new"):
        kube.requests()
    with pytest.raises(KubeError, match="demo-carry-new-abc"):
        kube.report(report)
