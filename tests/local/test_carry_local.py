"""The local runtime's fold-in at the next version (tools/local/carry.py), without processes: the
cut copies the old leaders' logs, the forwarding sends the records after it to the new layout's
shards (re-partitioned, leader first, then the followers), and the gate holds the new layout back
until one pass caught up. The shards are an httpx.MockTransport."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from shardrec.api.commands import IndexBuildFlags
from shardrec.planning.layouts import LayoutSpec
from shardrec.serving.index.carry import Cut, carried_state, read_carry
from shardrec.serving.index.partitioning import shard_of
from shardrec.serving.index.write_log import WriteLog, WriteLogError, WriteRecord, encode_record, log_path
from shardrec.serving.shard.app import FENCE_PATH, REPLICATE_PATH, WRITES_PATH
from shardrec.tools.local.builds import build_commands
from shardrec.tools.local.carry import LocalCarry, abandoned_back, back_logs, unneeded, wants_carry_back
from shardrec.tools.local.state import StateDir


def _spec(version: str, shards: int) -> LayoutSpec:
    return LayoutSpec(
        version=version, source="/data/emb", shards=shards, partitioning="hash", dimension=2, metric="ip",
        hnsw_m=8, hnsw_ef_construction=40,
    )  # fmt: skip


def _append(state: StateDir, layout: LayoutSpec, item: str, upsert: bool) -> None:
    """What the router's write does to the leader of the item's shard: log it there."""
    shard = shard_of(item, layout.shards)
    log = WriteLog(log_path(state.write_log_dir(layout.id, 0), layout.shards, shard))
    vector = (1.0, 2.0) if upsert else None
    log.append([WriteRecord(log.last_sequence + 1, "upsert" if upsert else "delete", item, vector)])
    log.close()


class FakeShards:
    """Replicas that number (leader) or take numbered records (followers), as the shard server."""

    def __init__(self) -> None:
        self.logs: dict[str, list[dict[str, object]]] = {}
        self.fail: set[str] = set()
        self.fenced: set[str] = set()

    def handle(self, request: httpx.Request) -> httpx.Response:
        base = f"{request.url.scheme}://{request.url.host}:{request.url.port}"
        assert request.headers["authorization"] == "Bearer t0ken"
        if base in self.fail:
            return httpx.Response(503, json={"error": {"code": "not_ready", "message": "down"}})
        body = json.loads(request.content)
        log = self.logs.setdefault(base, [])
        if request.url.path == FENCE_PATH:
            (self.fenced.add if body["fenced"] else self.fenced.discard)(base)
            return httpx.Response(200, json={"fenced": body["fenced"], "last_sequence": len(log)})
        if request.url.path == WRITES_PATH:
            first = len(log) + 1
            log.extend({**op, "seq": first + n} for n, op in enumerate(body["ops"]))
            return httpx.Response(200, json={"sequences": list(range(first, len(log) + 1))})
        assert request.url.path == REPLICATE_PATH
        fresh = [r for r in body["records"] if r["seq"] > len(log)]
        if fresh and fresh[0]["seq"] != len(log) + 1:
            return httpx.Response(409, json={"applied_sequence": len(log)})
        log.extend(fresh)
        return httpx.Response(200, json={"applied_sequence": len(log)})


def _urls(layout: LayoutSpec, replicas: int = 2) -> dict[tuple[int, int], str]:
    return {
        (s, r): f"http://127.0.0.1:{9000 + 10 * s + r}" for s in range(layout.shards) for r in range(replicas)
    }


def test_the_cut_copies_the_leader_logs_and_keeps_its_sequences(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    old, new = _spec("v1", 2), _spec("v2", 3)
    for n in range(10):
        _append(state, old, f"a{n}", upsert=n % 3 != 0)
    carry = LocalCarry(state, httpx.Client, "t0ken")
    folder = carry.take_cut(new, old)
    cut, logs = read_carry(folder)
    assert cut.from_layout == old.id and sum(cut.upto) == 10
    assert {r.item_id for records in logs.values() for r in records} == {f"a{n}" for n in range(10)}
    _append(state, old, "late", upsert=True)
    assert read_carry(carry.take_cut(new, old))[0] == cut  # a restarted supervisor keeps its cut
    assert carry.holds_back(new.id) and not carry.holds_back(old.id)


def test_forwarding_sends_the_writes_after_the_cut_to_the_new_owners_then_opens_the_gate(
    tmp_path: Path,
) -> None:
    state = StateDir(tmp_path)
    old, new = _spec("v1", 2), _spec("v2", 3)
    _append(state, old, "before", upsert=True)
    shards = FakeShards()
    carry = LocalCarry(state, lambda: httpx.Client(transport=httpx.MockTransport(shards.handle)), "t0ken")
    carry.take_cut(new, old)
    after = [f"b{n}" for n in range(20)]
    for n, item in enumerate(after):
        _append(state, old, item, upsert=n % 4 != 0)
    urls = _urls(new)
    assert carry.forward(new, urls, {old.id, new.id}) == 20
    assert not carry.holds_back(new.id)
    for (shard, _replica), url in urls.items():
        got = shards.logs.get(url, [])
        assert all(shard_of(str(r["id"]), new.shards) == shard for r in got)
        assert [r["seq"] for r in got] == list(range(1, len(got) + 1))
    sent = {str(r["id"]) for url in urls.values() for r in shards.logs.get(url, [])}
    assert sent == set(after)  # "before" is in the build's carry, not forwarded
    for shard in range(new.shards):
        assert shards.logs.get(urls[(shard, 0)]) == shards.logs.get(urls[(shard, 1)])

    # nothing new: nothing sent; the old layout gone: one more pass ends the forwarding
    assert carry.forward(new, urls, {old.id, new.id}) == 0
    _append(state, old, "c", upsert=True)
    assert carry.forward(new, urls, {new.id}) == 1
    assert carry.forward(new, urls, {new.id}) == 0
    progress = carry.progress(new.id)
    assert progress is not None and progress.done and progress.forwarded == 21


def test_a_follower_behind_gets_the_leaders_records_first(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    old, new = _spec("v1", 1), _spec("v2", 1)
    shards = FakeShards()
    carry = LocalCarry(state, lambda: httpx.Client(transport=httpx.MockTransport(shards.handle)), "t0ken")
    carry.take_cut(new, old)
    urls = _urls(new)
    # the new leader already holds two records the follower missed (as if it had been restarting)
    leader = WriteLog(log_path(state.write_log_dir(new.id, 0), 1, 0))
    leader.append([WriteRecord(1, "upsert", "x", (1.0, 0.0)), WriteRecord(2, "delete", "y")])
    leader.close()
    shards.logs[urls[(0, 0)]] = [{"seq": 1, "op": "upsert", "id": "x"}, {"seq": 2, "op": "delete", "id": "y"}]
    _append(state, old, "z", upsert=True)
    assert carry.forward(new, urls, {old.id, new.id}) == 1
    assert [r["id"] for r in shards.logs[urls[(0, 1)]]] == ["x", "y", "z"]


def test_a_failed_pass_forwards_nothing_and_keeps_the_gate_shut(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    old, new = _spec("v1", 2), _spec("v2", 2)
    shards = FakeShards()
    carry = LocalCarry(state, lambda: httpx.Client(transport=httpx.MockTransport(shards.handle)), "t0ken")
    carry.take_cut(new, old)
    for n in range(6):
        _append(state, old, f"i{n}", upsert=True)
    urls = _urls(new)
    shards.fail = set(urls.values())
    assert carry.forward(new, urls, {old.id, new.id}) == 0
    assert carry.holds_back(new.id)
    shards.fail = set()
    assert carry.forward(new, urls, {old.id, new.id}) == 6
    assert not carry.holds_back(new.id)


def test_a_chain_of_layouts_carries_what_the_middle_one_had_carried(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    v1, v2, v3 = _spec("v1", 2), _spec("v2", 3), _spec("v3", 1)
    _append(state, v1, "kept", upsert=True)
    _append(state, v1, "gone", upsert=False)
    carry = LocalCarry(state, httpx.Client, "t0ken")
    carry.take_cut(v2, v1)
    _append(state, v2, "on-v2", upsert=True)
    state_v3 = carried_state(carry.take_cut(v3, v2))[1]
    assert set(state_v3) == {"kept", "gone", "on-v2"} and state_v3["gone"] is None


def test_every_build_part_gets_the_carry_folder() -> None:
    commands = build_commands(_spec("v2", 3), "/state/layouts/x", carry_dir="/state/carry/x")
    for argv in commands:
        assert argv[argv.index(IndexBuildFlags.CARRY_DIR) + 1] == "/state/carry/x"
    assert all(IndexBuildFlags.CARRY_DIR not in argv for argv in build_commands(_spec("v2", 3), "/o"))


def test_write_logs_go_only_when_no_layout_needs_them() -> None:
    present = ["deleted", "kept-artifact", "known", "source-of-a-forwarding"]
    gone = unneeded(present, {"known"}, {"kept-artifact"}, {"source-of-a-forwarding"})
    assert gone == ["deleted"]


def test_collect_keeps_the_source_until_its_forwarding_ended(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    old, new = _spec("v1", 1), _spec("v2", 1)
    _append(state, old, "a", upsert=True)
    shards = FakeShards()
    carry = LocalCarry(state, lambda: httpx.Client(transport=httpx.MockTransport(shards.handle)), "t0ken")
    carry.take_cut(new, old)
    _append(state, old, "b", upsert=True)
    # v1 deleted (not known, no artifact) while v2 still has to forward "b": its logs stay
    assert carry.collect({new.id}) == []
    assert carry.forward(new, _urls(new), {new.id}) == 1
    assert carry.forward(new, _urls(new), {new.id}) == 0  # the last pass
    assert carry.collect({new.id}) == [old.id]
    assert not state.write_log_dir(old.id, 0).exists() and (tmp_path / "carry" / new.id).exists()


def test_a_corrupt_old_log_stops_neither_the_pass_nor_opens_the_gate(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    old, new = _spec("v1", 1), _spec("v2", 1)
    shards = FakeShards()
    carry = LocalCarry(state, lambda: httpx.Client(transport=httpx.MockTransport(shards.handle)), "t0ken")
    carry.take_cut(new, old)
    path = log_path(state.write_log_dir(old.id, 0), 1, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        encode_record(WriteRecord(1, "delete", "a"))
        + b"junk" * 8
        + encode_record(WriteRecord(2, "delete", "b"))
    )
    assert carry.forward(new, _urls(new), {old.id, new.id}) == 0
    assert carry.holds_back(new.id)
    with pytest.raises(WriteLogError, match="corrupt"):
        carry.take_cut(_spec("v3", 1), old)


def test_the_hand_over_fences_the_old_leaders_and_forwards_the_rest(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    old, new = _spec("v1", 2), _spec("v2", 3)
    shards = FakeShards()
    carry = LocalCarry(state, lambda: httpx.Client(transport=httpx.MockTransport(shards.handle)), "t0ken")
    carry.take_cut(new, old)
    urls = _urls(new)
    old_leaders = {0: "http://127.0.0.1:8000", 1: "http://127.0.0.1:8010"}
    assert carry.forward(new, urls, {old.id, new.id}) == 0 and not carry.holds_back(new.id)
    _append(state, old, "just-before-the-switch", upsert=True)

    # a new leader down: no switch, and the old leaders take writes again
    shards.fail = {urls[(shard_of("just-before-the-switch", 3), 0)]}
    assert not carry.hand_over(new, old_leaders, urls, {old.id, new.id})
    assert shards.fenced == set()
    shards.fail = set()
    assert carry.hand_over(new, old_leaders, urls, {old.id, new.id})
    assert shards.fenced == set(old_leaders.values())
    sent = {str(r["id"]) for url in urls.values() for r in shards.logs.get(url, [])}
    assert sent == {"just-before-the-switch"}
    assert carry.source(new.id) == old.id and carry.source(old.id) is None


def test_fenced_layouts_are_remembered_on_disk(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    carry = LocalCarry(state, httpx.Client, "t0ken")
    carry.mark_fenced("v1", True)
    carry.mark_fenced("v2", True)
    carry.mark_fenced("v1", False)
    assert LocalCarry(state, httpx.Client, "t0ken").fenced_layouts() == {"v2"}


# --- the carry back ------------------------------------------------------------------------------


def test_a_carry_back_goes_to_a_kept_layout_while_another_one_serves() -> None:
    assert wants_carry_back("v1", "v2", target_built=True, target_carries_from=None)
    assert wants_carry_back("v2", "v1", target_built=True, target_carries_from="v0")  # an old carry
    assert not wants_carry_back("v2", "v1", target_built=True, target_carries_from="v1")  # forward
    assert not wants_carry_back("v2", "v1", target_built=False, target_carries_from=None)  # building
    assert not wants_carry_back("v1", "v1", target_built=True, target_carries_from=None)  # serves
    assert not wants_carry_back("v1", None, target_built=True, target_carries_from=None)


def test_an_unfinished_carry_back_is_dropped_only_while_its_destination_does_not_serve() -> None:
    assert not abandoned_back("v1", "v2", target="v1", serving="v2")  # on its way
    assert abandoned_back("v1", "v2", target="v2", serving="v2")  # the spec went back to v2
    assert abandoned_back("v1", "v2", target="v3", serving="v2")  # or on to v3
    assert not abandoned_back("v1", "v2", target="v3", serving="v1")  # switched: it runs on


def test_a_carry_back_replays_the_sources_carry_folder_only_when_cut_from_a_third_layout() -> None:
    leaders = [Path("/s/writes/v3/0"), Path("/s/writes/v3/1")]
    folder = Path("/s/carry/v3")
    assert back_logs(None, "v1", leaders, folder) == leaders
    assert back_logs(Cut("v1", 2, (4, 5)), "v1", leaders, folder) == leaders  # v1's own records
    chain = back_logs(Cut("v2", 3, (1, 2, 3)), "v1", leaders, folder)
    assert chain == [folder / "prior.log", *(folder / f"shard-000{s}.log" for s in range(3)), *leaders]


def test_a_carry_back_replays_the_serving_layouts_logs_into_the_kept_layout(tmp_path: Path) -> None:
    """v1 (2 shards) -> v2 (3 shards) carried, v2 takes writes, the spec goes back to v1: v1 is
    held back until every record of v2's logs (forwarded ones and its own, from the first) went to
    v1, re-partitioned to 2 shards; the hand-over fences v2's leaders and forwards the rest."""
    state = StateDir(tmp_path)
    v1, v2 = _spec("v1", 2), _spec("v2", 3)
    shards = FakeShards()
    carry = LocalCarry(state, lambda: httpx.Client(transport=httpx.MockTransport(shards.handle)), "t0ken")
    _append(state, v1, "on-v1-before-the-cut", upsert=True)
    carry.take_cut(v2, v1)
    _append(state, v2, "forwarded-from-v1", upsert=True)  # as the forwarding logs it on v2
    for n in range(12):
        _append(state, v2, f"on-v2-{n}", upsert=n % 3 != 0)
    urls = _urls(v1)

    carry.start_back(v1.id, v2.id)
    assert carry.holds_back(v1.id) and not carry.back_begun(v1.id, v2.id)
    assert carry.forward(v1, urls, {v1.id, v2.id}) == 0  # nothing before it began
    carry.begin_back(v1.id, v2)
    assert carry.forward(v1, urls, {v1.id, v2.id}) == 13
    assert not carry.holds_back(v1.id)
    sent = {str(r["id"]) for url in urls.values() for r in shards.logs.get(url, [])}
    assert sent == {"forwarded-from-v1"} | {f"on-v2-{n}" for n in range(12)}
    for (shard, _replica), url in urls.items():
        assert all(shard_of(str(r["id"]), v1.shards) == shard for r in shards.logs.get(url, []))

    _append(state, v2, "just-before-the-switch", upsert=False)
    v2_leaders = {s: f"http://127.0.0.1:{8000 + 10 * s}" for s in range(3)}
    assert carry.hand_over(v1, v2_leaders, urls, {v1.id, v2.id}, back_from=v2.id)
    assert shards.fenced == set(v2_leaders.values())
    leader = urls[(shard_of("just-before-the-switch", 2), 0)]
    assert shards.logs[leader][-1] == {
        "op": "delete",
        "id": "just-before-the-switch",
        "seq": len(shards.logs[leader]),
    }

    # v2 deleted after the switch: its logs stay until the last pass, then they go with the folder
    assert carry.collect({v1.id}) == []
    assert carry.forward(v1, urls, {v1.id}) == 0
    assert carry.collect({v1.id}) == [v2.id]
    assert carry.backs() == [] and not state.write_log_dir(v2.id, 0).exists()


def test_a_forwarding_into_the_serving_layout_is_finished_before_a_carry_back_out_of_it(
    tmp_path: Path,
) -> None:
    """v1 -> v2 forwards while v1 lives; a rollback to v1 first ends it (v1's leaders fenced again,
    a last pass), or v1's carried-back records would be forwarded into v2 again."""
    state = StateDir(tmp_path)
    v1, v2 = _spec("v1", 1), _spec("v2", 2)
    shards = FakeShards()
    carry = LocalCarry(state, lambda: httpx.Client(transport=httpx.MockTransport(shards.handle)), "t0ken")
    carry.take_cut(v2, v1)
    _append(state, v1, "late-on-v1", upsert=True)
    (forwarding,) = carry.running_into(v2.id)
    v1_leaders = ["http://127.0.0.1:8000"]
    shards.fail = set(v1_leaders)
    assert not carry.finish(forwarding, v2, v1_leaders, _urls(v2), {v1.id, v2.id})  # not fenced
    shards.fail = set()
    assert carry.finish(forwarding, v2, v1_leaders, _urls(v2), {v1.id, v2.id}) is False  # sent one
    assert carry.finish(forwarding, v2, v1_leaders, _urls(v2), {v1.id, v2.id})
    assert carry.running_into(v2.id) == [] and shards.fenced == set(v1_leaders)
    assert v1.id in carry.fenced_layouts()


def test_a_carry_back_past_a_middle_layout_replays_what_the_serving_layouts_build_carried(
    tmp_path: Path,
) -> None:
    """v1 -> v2 -> v3, rolled back to v1 (kept): v2's writes up to v3's cut are in v3's carry
    folder only (its build folded them in), so they go to v1 first, then v3's logs."""
    state = StateDir(tmp_path)
    v1, v2, v3 = _spec("v1", 1), _spec("v2", 2), _spec("v3", 1)
    shards = FakeShards()
    carry = LocalCarry(state, lambda: httpx.Client(transport=httpx.MockTransport(shards.handle)), "t0ken")
    _append(state, v1, "x", upsert=True)
    carry.take_cut(v2, v1)
    _append(state, v2, "x", upsert=False)  # v2 deletes x, then v3's build carries that
    _append(state, v2, "y", upsert=True)
    carry.take_cut(v3, v2)
    _append(state, v3, "y", upsert=False)
    carry.start_back(v1.id, v3.id)
    carry.begin_back(v1.id, v3)
    assert carry.forward(v1, _urls(v1), {v1.id, v2.id, v3.id}) == 4  # prior x, cut x y, then y
    got = [(r["op"], r["id"]) for r in shards.logs[_urls(v1)[(0, 0)]]]
    assert got[0] == ("upsert", "x") and got[-1] == ("delete", "y")  # oldest first, newest last
    assert set(got[1:3]) == {("delete", "x"), ("upsert", "y")}
