"""Fold-in at the next version on the local runtime: item writes survive a rollout that also
changes the shard count.

`recctl up` serves v1 on 2 shards x 2 replicas; upserts and deletes go through the router; then
v2 (another source) on 3 shards is applied while a writer keeps writing, through the build, the
start of the new shards and the switch. Afterwards, on v2: every acknowledged upsert is there
(`/v1/similar` finds its vector, and a query with its vector returns it), no acknowledged delete
is (`/v1/similar` answers 404, and no query returns it); and a reader aiming at deleted items
through the whole rollout never got one back from a read that started after the delete's
acknowledgement. Writes whose outcome the client did not learn (no 200 after bounded retries of
503s) are left out of the checks. Bounded loops; nothing asserts on speed.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from shardrec.tools.local.ports import free_port
from tests.local.test_local_cluster import _recctl, _status, _wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

ITEMS, DIM = 1500, 8
KEY = {"x-api-key": "k-writer"}
BEFORE_UPSERTS, BEFORE_DELETES = 200, 60
MAX_DURING = 3000  # writes while v2 builds and starts (the writer stops at the switch or here)
AFTER_WRITES = 40  # writes on v2 after the switch
MAX_TRIES = 100
MAX_READS = 4000


def _write_embeddings(folder: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    np.save(folder / "items.npy", rng.normal(size=(ITEMS, DIM)).astype(np.float32))
    (folder / "item_ids.txt").write_text("".join(f"item-{i}\n" for i in range(ITEMS)))


def _manifest(source: Path, version: str, shards: int, keys: Path) -> dict[str, Any]:
    return {
        "apiVersion": "shardrec.io/v1alpha1",
        "kind": "RecommenderCluster",
        "metadata": {"name": "carry"},
        "spec": {
            "shards": shards,
            "replicasPerShard": 2,
            "index": {"version": version, "source": str(source), "dimension": DIM, "metric": "cosine"},
            "router": {"timeoutMs": 2000},
            "auth": {"apiKeysFile": str(keys)},
            "writes": {"enabled": True},
            "rollout": {"keepPreviousLayouts": 1, "rollbackWindowSeconds": 2, "drainSeconds": 1},
        },
    }


@dataclass
class Writes:
    """What the client knows: the last acknowledged op per item, and items with an unknown outcome."""

    present: dict[str, list[float]] = field(default_factory=dict)
    deleted: set[str] = field(default_factory=set)
    unknown: set[str] = field(default_factory=set)
    vectors: dict[str, list[float]] = field(default_factory=dict)  # every upsert sent, the last vector
    sent: int = 0
    retries: int = 0
    acknowledged: int = 0
    by_layout: dict[str, int] = field(default_factory=dict)
    deleted_at: dict[str, float] = field(default_factory=dict)  # monotonic time of the delete's ack
    progress: int = 0  # the writer's loop counter (read by the reader thread)

    def send(self, client: httpx.Client, item: str, vector: list[float] | None) -> None:
        self.sent += 1
        if vector is not None:
            self.vectors[item] = vector
        for _ in range(MAX_TRIES):  # a 503 (e.g. the old leaders fenced at the switch) is retried
            try:
                if vector is None:
                    answer = client.delete(f"/v1/items/{item}", headers=KEY)
                else:
                    answer = client.put(f"/v1/items/{item}", json={"vector": vector}, headers=KEY)
            except httpx.HTTPError:
                self.unknown.add(item)
                return
            if answer.status_code != 503:
                break
            self.retries += 1
            time.sleep(0.05)
        if answer.status_code != 200:
            self.unknown.add(item)  # maybe logged, maybe not: checked neither way
            return
        self.acknowledged += 1
        layout = answer.json()["layout"]
        self.by_layout[layout] = self.by_layout.get(layout, 0) + 1
        if vector is None:
            self.present.pop(item, None)
            self.deleted.add(item)
            self.deleted_at[item] = time.monotonic()
        else:
            self.deleted.discard(item)
            self.present[item] = vector


def _vector(rng: np.random.Generator) -> list[float]:
    return [float(x) for x in rng.normal(size=DIM)]


def up_v1(tmp_path: Path) -> tuple[Path, Path, Path, str]:
    """Embeddings of v1 and v2, a writer key, and v1 on 2 shards x 2 replicas served by `recctl up`:
    (manifest, keys, state folder, router URL)."""
    for version, seed in (("v1", 1), ("v2", 2)):
        _write_embeddings(tmp_path / f"emb-{version}", seed)
    keys = tmp_path / "keys.txt"
    keys.write_text("writer:k-writer read,write\n")
    manifest = tmp_path / "cluster.yaml"
    manifest.write_text(yaml.safe_dump(_manifest(tmp_path / "emb-v1", "v1", 2, keys)))
    state = tmp_path / "state"
    port = free_port()
    _recctl(
        "up", "-f", str(manifest), "--state-dir", str(state), "--port", str(port), "--detach", "--wait", "90"
    )
    return manifest, keys, state, f"http://127.0.0.1:{port}"


def test_acknowledged_writes_survive_a_new_version_on_more_shards(tmp_path: Path) -> None:
    manifest, keys, state, url = up_v1(tmp_path)
    writes = Writes()
    rng = np.random.default_rng(5)
    try:
        with httpx.Client(base_url=url, timeout=10) as client:
            # on v1: new items, then deletes of original items and of new ones
            for n in range(BEFORE_UPSERTS):
                writes.send(client, f"new-{n}", _vector(rng))
            for n in range(BEFORE_DELETES // 2):
                writes.send(client, f"item-{n}", None)
                writes.send(client, f"new-{n}", None)
            v1_layout = next(iter(writes.by_layout))

            # roll v2 on 3 shards while a writer keeps writing through the build and the switch
            switched = threading.Event()
            during = Writes()

            def writer() -> None:
                local = np.random.default_rng(9)
                with httpx.Client(base_url=url, timeout=10) as own:
                    for n in range(MAX_DURING):
                        if switched.is_set():
                            return
                        during.progress = n
                        during.send(own, f"mid-{n}", _vector(local))
                        if n % 5 == 4:  # delete some of what was just written, and originals
                            during.send(own, f"mid-{n - 2}", None)
                            during.send(own, f"item-{100 + n // 5}", None)
                        time.sleep(0.002)

            reads: list[tuple[float, list[str]]] = []
            read_errors: list[str] = []
            reads_done = threading.Event()

            def reader() -> None:
                """Queries aimed at deleted items: the vector of a `mid-` item the writer deleted
                (the same draws as the writer's), or a random one."""
                drawn = np.random.default_rng(9)
                aimed = [_vector(drawn) for _ in range(MAX_DURING)]
                pick = np.random.default_rng(13)
                with httpx.Client(base_url=url, timeout=10) as own:
                    while not reads_done.is_set() and len(reads) < MAX_READS:
                        victims = during.progress // 5
                        vector = aimed[5 * int(pick.integers(victims)) + 2] if victims else _vector(pick)
                        started = time.monotonic()
                        try:
                            answer = own.post("/v1/recommend", json={"vector": vector, "k": 10}, headers=KEY)
                        except httpx.HTTPError as exc:
                            read_errors.append(repr(exc))
                            continue
                        if answer.status_code == 200:
                            reads.append((started, [hit["item_id"] for hit in answer.json()["items"]]))
                        else:
                            read_errors.append(f"{answer.status_code} {answer.text[:100]}")
                        time.sleep(0.01)

            thread = threading.Thread(target=writer, daemon=True)
            thread.start()
            reading = threading.Thread(target=reader, daemon=True)
            reading.start()
            manifest.write_text(yaml.safe_dump(_manifest(tmp_path / "emb-v2", "v2", 3, keys)))
            _recctl("apply", "-f", str(manifest), "--state-dir", str(state))
            try:
                _wait_for(lambda: _status(state).get("activeVersion") == "v2", "v2 to serve", timeout_s=150)
            finally:
                switched.set()
                thread.join(timeout=30)
            # a few writes on v2 itself
            for n in range(AFTER_WRITES):
                writes.send(client, f"late-{n}", _vector(rng) if n % 4 else None)
            reads_done.set()
            reading.join(timeout=30)
            _wait_for(lambda: len(_status(state)["layouts"]) == 1, "v1 to be deleted", timeout_s=60)
            merged = _merge(writes, during)
            found, missing, wrong_version, resurrected = _check(client, merged)
            self_hits, returned_deleted = _query(client, merged)
            progress_files = list((state / "carry").glob("*/forwarded.json"))
            if progress_files:
                _wait_for(lambda: _progress(progress_files[0])["done"], "the last forwarding pass")
    finally:
        _recctl("down", "--state-dir", str(state), check=False)

    progress = _progress(progress_files[0]) if progress_files else {}
    carry = _progress(progress_files[0].parent / "carry.json") if progress_files else {}
    deleted_at = {**writes.deleted_at, **during.deleted_at}
    stale = [
        f"{item} returned by a read {started - deleted_at[item]:.3f}s after its delete was acknowledged"
        for started, ids in reads
        for item in ids
        if item in deleted_at and deleted_at[item] < started and item in merged.deleted
    ]
    print(
        f"\nreads during the rollout {len(reads)} (errors {len(read_errors)}), "
        f"deleted items they returned after the delete's ack {len(stale)}; "
        f"writes sent {writes.sent + during.sent}, "
        f"acknowledged {writes.acknowledged + during.acknowledged} "
        f"(v1 before the apply {BEFORE_UPSERTS + BEFORE_DELETES}, during the build and start "
        f"{during.acknowledged} of {during.sent}: {during.by_layout}), "
        f"unknown outcome {len(merged.unknown)}, 503s retried {writes.retries + during.retries}; "
        f"cut {carry.get('upto')}, forwarded after the cut {progress.get('forwarded')}; "
        f"after the rollout on v2: upserts found {found} of {len(merged.present)}, "
        f"returned by a query with their vector {self_hits}; "
        f"deletes answered 404 {len(merged.deleted) - len(resurrected)} of {len(merged.deleted)}, "
        f"deleted ids in query answers {len(returned_deleted)}"
    )
    assert during.by_layout.get(v1_layout, 0) > 0, "no write reached v1 while v2 was built"
    assert stale == [], stale[:10]
    assert len(reads) > 50, read_errors[:5]
    assert missing == [], (len(missing), missing[:10])
    assert wrong_version == [], wrong_version[:10]
    assert resurrected == [], (len(resurrected), resurrected[:10])
    assert returned_deleted == [], returned_deleted[:10]
    assert found == len(merged.present) > BEFORE_UPSERTS // 2
    assert progress["forwarded"] > 0 and progress["done"]


def _progress(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _merge(first: Writes, *others: Writes) -> Writes:
    """The writers' records as one, a later writer's last op on an item over an earlier one's
    (they are given in the order they wrote: an item's last acknowledged op wins)."""
    merged = Writes(present=dict(first.present), deleted=set(first.deleted))
    merged.unknown = set(first.unknown)
    merged.vectors = dict(first.vectors)
    for other in others:
        for item in other.deleted:
            merged.present.pop(item, None)
        merged.deleted = (merged.deleted - set(other.present)) | other.deleted
        merged.present.update(other.present)
        merged.unknown |= other.unknown
        merged.vectors.update(other.vectors)
    for item in merged.unknown:
        merged.present.pop(item, None)
        merged.deleted.discard(item)
    return merged


def _check(
    client: httpx.Client, writes: Writes, version: str = "v2"
) -> tuple[int, list[str], list[str], list[str]]:
    found, missing, wrong_version, resurrected = 0, [], [], []
    for item in sorted(writes.present):
        answer = client.post("/v1/similar", json={"item_id": item, "k": 3}, headers=KEY)
        if answer.status_code != 200:
            missing.append(f"{item}: {answer.status_code} {answer.text[:120]}")
        elif answer.json()["index_version"] != version:
            wrong_version.append(item)
        else:
            found += 1
    for item in sorted(writes.deleted):
        answer = client.post("/v1/similar", json={"item_id": item, "k": 3}, headers=KEY)
        if answer.status_code != 404:
            resurrected.append(f"{item}: {answer.status_code} {answer.text[:120]}")
    return found, missing, wrong_version, resurrected


def _query(client: httpx.Client, writes: Writes) -> tuple[int, list[str]]:
    """Vector queries: with each acknowledged upsert's vector (how many return the item itself),
    and with the last vector of each deleted item that had one (no answer may hold a deleted id)."""
    self_hits, returned = 0, []
    for item, vector in sorted(writes.present.items()):
        answer = client.post("/v1/recommend", json={"vector": vector, "k": 10}, headers=KEY)
        assert answer.status_code == 200, answer.text
        ids = {hit["item_id"] for hit in answer.json()["items"]}
        self_hits += item in ids
        returned += sorted(ids & writes.deleted)
    for item in sorted(writes.deleted & set(writes.vectors)):
        answer = client.post("/v1/recommend", json={"vector": writes.vectors[item], "k": 10}, headers=KEY)
        assert answer.status_code == 200, answer.text
        returned += sorted({hit["item_id"] for hit in answer.json()["items"]} & writes.deleted)
    return self_hits, returned


def test_a_rollback_within_the_window_takes_writes_on_the_old_layout_again(tmp_path: Path) -> None:
    """The switch to v2 fenced v1's leaders; rolling back to v1 while its processes still run must
    open them again (a write is acknowledged on v1), and v2's layout keeps v1's earlier writes."""
    for version, seed in (("v1", 1), ("v2", 2)):
        _write_embeddings(tmp_path / f"emb-{version}", seed)
    keys = tmp_path / "keys.txt"
    keys.write_text("writer:k-writer read,write\n")
    manifest = _manifest(tmp_path / "emb-v1", "v1", 2, keys)
    manifest["spec"]["rollout"]["rollbackWindowSeconds"] = 60
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(manifest))
    state, port = tmp_path / "state", free_port()
    url = f"http://127.0.0.1:{port}"
    _recctl("up", "-f", str(path), "--state-dir", str(state), "--port", str(port), "--detach", "--wait", "90")

    def apply(version: str, shards: int) -> None:
        path.write_text(yaml.safe_dump(_manifest(tmp_path / f"emb-{version}", version, shards, keys)))
        _recctl("apply", "-f", str(path), "--state-dir", str(state))
        _wait_for(
            lambda: _status(state).get("activeVersion") == version, f"{version} to serve", timeout_s=150
        )

    writes = Writes()
    rng = np.random.default_rng(11)
    try:
        with httpx.Client(base_url=url, timeout=10) as client:
            for n in range(20):
                writes.send(client, f"early-{n}", _vector(rng))
            apply("v2", 3)
            on_v2 = client.post("/v1/similar", json={"item_id": "early-3", "k": 3}, headers=KEY)
            apply("v1", 2)  # within the window: v1's processes (fenced at the switch) still run
            writes.send(client, "after-rollback", _vector(rng))
            on_v1 = client.post("/v1/similar", json={"item_id": "after-rollback", "k": 3}, headers=KEY)
    finally:
        _recctl("down", "--state-dir", str(state), check=False)
    assert on_v2.status_code == 200 and on_v2.json()["index_version"] == "v2", on_v2.text
    assert "after-rollback" in writes.present and writes.unknown == set(), (writes.unknown, writes.retries)
    assert on_v1.status_code == 200 and on_v1.json()["index_version"] == "v1", on_v1.text


class Traffic:
    """A writer and a reader running through a switch: the writer upserts new items, replaces
    items and deletes some (retrying 503s), the reader queries with the vectors of items the writer
    deleted, or random ones. `stop` ends both."""

    def __init__(self, url: str, prefix: str, seed: int) -> None:
        self.url, self.prefix, self.seed = url, prefix, seed
        self.writes = Writes()
        self.reads: list[tuple[float, list[str]]] = []
        self.read_errors: list[str] = []
        self.stop = threading.Event()
        self._threads = [threading.Thread(target=f, daemon=True) for f in (self._writer, self._reader)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def join(self) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _writer(self) -> None:
        rng = np.random.default_rng(self.seed)
        with httpx.Client(base_url=self.url, timeout=10) as own:
            for n in range(MAX_DURING):
                if self.stop.is_set():
                    return
                self.writes.progress = n
                self.writes.send(own, f"{self.prefix}-{n}", _vector(rng))
                if n % 5 == 4:  # delete one just written, replace an original item, delete another
                    self.writes.send(own, f"{self.prefix}-{n - 2}", None)
                    self.writes.send(own, f"item-{300 + n // 5}", _vector(rng))
                    self.writes.send(own, f"item-{700 + n // 5}", None)
                time.sleep(0.002)

    def _reader(self) -> None:
        pick = np.random.default_rng(self.seed + 1)
        with httpx.Client(base_url=self.url, timeout=10) as own:
            while not self.stop.is_set() and len(self.reads) < MAX_READS:
                deleted = [
                    self.writes.vectors[i] for i in list(self.writes.deleted_at) if i in self.writes.vectors
                ]
                vector = deleted[int(pick.integers(len(deleted)))] if deleted else _vector(pick)
                started = time.monotonic()
                try:
                    answer = own.post("/v1/recommend", json={"vector": vector, "k": 10}, headers=KEY)
                except httpx.HTTPError as exc:
                    self.read_errors.append(repr(exc))
                    continue
                if answer.status_code == 200:
                    self.reads.append((started, [hit["item_id"] for hit in answer.json()["items"]]))
                else:
                    self.read_errors.append(f"{answer.status_code} {answer.text[:100]}")
                time.sleep(0.01)

    def stale(self, final: Writes) -> list[str]:
        """Reads that returned an item whose delete was acknowledged before the read started (and
        that stayed deleted)."""
        return [
            f"{item} returned by a read {started - self.writes.deleted_at[item]:.3f}s after its delete"
            for started, ids in self.reads
            for item in ids
            if item in self.writes.deleted_at
            and self.writes.deleted_at[item] < started
            and item in final.deleted
        ]


@pytest.mark.timeout(480)
def test_a_rollback_within_the_window_carries_the_writes_made_on_the_newer_layout_back(
    tmp_path: Path,
) -> None:
    """v1 (2 shards) serves and takes writes; v2 (3 shards) is rolled out (carried) and takes
    writes of its own: new items, items replaced, items deleted. Rolling back to v1 within its
    window, while a writer and a reader keep going, must bring every write acknowledged on v2 to v1
    (its artifact and logs know none of them): upserts found by id and by their vector, deletes
    answering 404 and in no answer; and no read fails. Then a roll forward to v2 again (still kept)
    must bring what v1 took since."""
    manifest, keys, state, url = up_v1(tmp_path)

    def apply(version: str, shards: int) -> None:
        document = _manifest(tmp_path / f"emb-{version}", version, shards, keys)
        document["spec"]["rollout"]["rollbackWindowSeconds"] = 600  # v1, then v2, stay kept
        manifest.write_text(yaml.safe_dump(document))
        _recctl("apply", "-f", str(manifest), "--state-dir", str(state))

    def serves(version: str) -> None:
        _wait_for(
            lambda: _status(state).get("activeVersion") == version, f"{version} to serve", timeout_s=150
        )

    rng = np.random.default_rng(21)
    on_v1, on_v2 = Writes(), Writes()
    try:
        with httpx.Client(base_url=url, timeout=10) as client:
            apply("v1", 2)  # the same layout, with the long window
            for n in range(BEFORE_UPSERTS // 2):
                on_v1.send(client, f"v1new-{n}", _vector(rng))
            for n in range(BEFORE_DELETES // 2):
                on_v1.send(client, f"item-{n}", None)
            apply("v2", 3)
            serves("v2")
            # on v2: new items, replacements of v1's new items and of originals, deletes of both
            for n in range(BEFORE_UPSERTS // 2):
                on_v2.send(client, f"v2new-{n}", _vector(rng))
            for n in range(0, BEFORE_UPSERTS // 2, 3):
                on_v2.send(client, f"v1new-{n}", _vector(rng))
                on_v2.send(client, f"item-{100 + n}", _vector(rng))
            for n in range(1, BEFORE_UPSERTS // 2, 5):
                on_v2.send(client, f"v1new-{n}", None)
                on_v2.send(client, f"v2new-{n}", None)
                on_v2.send(client, f"item-{200 + n}", None)
            v2_acked = on_v2.acknowledged
            v1_id, v2_id = _layout(state, "v1"), _layout(state, "v2")

            back = Traffic(url, "back", 31)  # through the rollback
            back.start()
            try:
                apply("v1", 2)
                serves("v1")
                _wait_for(lambda: back.writes.by_layout.get(v1_id, 0) >= 10, "writes on v1")
            finally:
                back.join()
            after_back = _merge(on_v1, on_v2, back.writes)
            found, missing, wrong_version, resurrected = _check(client, after_back, "v1")
            self_hits, returned_deleted = _query(client, after_back)
            back_progress = list((state / "carry-back").glob("*/*/forwarded.json"))

            again = Traffic(url, "again", 41)  # v1 -> v2 again (v2 is still kept)
            again.start()
            try:
                apply("v2", 3)
                serves("v2")
                _wait_for(lambda: again.writes.by_layout.get(v2_id, 0) >= 10, "writes on v2")
            finally:
                again.join()
            after_again = _merge(on_v1, on_v2, back.writes, again.writes)
            found2, missing2, wrong_version2, resurrected2 = _check(client, after_again, "v2")
            self_hits2, returned_deleted2 = _query(client, after_again)
    finally:
        _recctl("down", "--state-dir", str(state), check=False)

    stale = back.stale(after_back)
    stale2 = again.stale(after_again)
    print(
        f"\nbefore the rollback: acknowledged on v1 {on_v1.acknowledged} of {on_v1.sent}, on v2 {v2_acked} "
        f"of {on_v2.sent}; through the rollback: writes sent {back.writes.sent}, acknowledged "
        f"{back.writes.acknowledged} {back.writes.by_layout}, 503s retried {back.writes.retries}, unknown "
        f"{len(back.writes.unknown)}; reads {len(back.reads)} (errors {len(back.read_errors)}, deleted "
        f"items returned after their delete's ack {len(stale)}); carry-back progress "
        f"{[_progress(p) for p in back_progress]}; on v1 afterwards: upserts found {found} of "
        f"{len(after_back.present)} (missing {len(missing)}, first for their own vector {self_hits}), "
        f"deletes answering 404 {len(after_back.deleted) - len(resurrected)} of {len(after_back.deleted)}, "
        f"deleted ids in answers {len(returned_deleted)}"
        f"\nroll forward again: writes sent {again.writes.sent}, acknowledged {again.writes.acknowledged} "
        f"{again.writes.by_layout}, 503s retried {again.writes.retries}, "
        f"unknown {len(again.writes.unknown)}; "
        f"reads {len(again.reads)} (errors {len(again.read_errors)}, stale {len(stale2)}); on v2: upserts "
        f"found {found2} of {len(after_again.present)} (missing {len(missing2)}, own vector {self_hits2}), "
        f"deletes answering 404 {len(after_again.deleted) - len(resurrected2)} of "
        f"{len(after_again.deleted)}, deleted ids in answers {len(returned_deleted2)}"
    )
    assert v2_acked == on_v2.sent and back.writes.by_layout.get(v2_id, 0) > 0
    assert back.read_errors == [] and len(back.reads) > 20, back.read_errors[:5]
    assert missing == [], (len(missing), missing[:10])
    assert wrong_version == [], wrong_version[:10]
    assert resurrected == [], (len(resurrected), resurrected[:10])
    assert returned_deleted == [], returned_deleted[:10]
    assert stale == [], stale[:10]
    assert again.read_errors == [] and len(again.reads) > 20, again.read_errors[:5]
    assert (missing2, wrong_version2, resurrected2, returned_deleted2, stale2) == ([], [], [], [], [])


def _layout(state: Path, version: str) -> str:
    """The id of the layout of `version` in the status."""
    return next(str(entry["name"]) for entry in _status(state)["layouts"] if entry["version"] == version)


@pytest.mark.timeout(480)
def test_a_kept_artifact_started_again_after_its_window_gets_the_writes_carried_back(tmp_path: Path) -> None:
    """v1 -> v2 (carried) -> v1 (carried back), then v2's window passes (its processes stop; its
    artifact and logs stay: keepPreviousLayouts 1) and the spec names v2 again: its shards start
    from the artifact and their own logs, and must get what v1 took since before serving. (Before
    the carry back this held by another route: the forward carry v1 -> v2 never ended while v1
    lived. Now that one is ended at the rollback, and a carry back that replays nothing loses 58 of
    the 82 upserts here.)"""
    manifest, keys, state, url = up_v1(tmp_path)

    def apply(version: str, shards: int, window: int) -> None:
        document = _manifest(tmp_path / f"emb-{version}", version, shards, keys)
        document["spec"]["rollout"]["rollbackWindowSeconds"] = window
        manifest.write_text(yaml.safe_dump(document))
        _recctl("apply", "-f", str(manifest), "--state-dir", str(state))
        _wait_for(
            lambda: _status(state).get("activeVersion") == version, f"{version} to serve", timeout_s=150
        )

    rng = np.random.default_rng(51)
    phases = [Writes() for _ in range(3)]
    try:
        with httpx.Client(base_url=url, timeout=10) as client:
            apply("v1", 2, 600)
            apply("v2", 3, 600)
            v2_id = _layout(state, "v2")
            for n in range(40):
                phases[0].send(client, f"on-v2-{n}", _vector(rng) if n % 4 else None)
            apply("v1", 2, 1)  # back to v1, and v2 goes once its short window passed
            for n in range(40):
                phases[1].send(client, f"on-v1-{n}", _vector(rng) if n % 4 else None)
                phases[1].send(client, f"on-v2-{n}", _vector(rng) if n % 5 else None)
            _wait_for(lambda: v2_id not in {e["name"] for e in _status(state)["layouts"]}, "v2 deleted")
            assert (state / "writes" / v2_id).is_dir(), "v2's logs went although its artifact is kept"
            for n in range(40, 60):
                phases[2].send(client, f"on-v1-{n}", _vector(rng))
            apply("v2", 3, 600)
            merged = _merge(*phases)
            found, missing, wrong_version, resurrected = _check(client, merged, "v2")
            self_hits, returned_deleted = _query(client, merged)
    finally:
        _recctl("down", "--state-dir", str(state), check=False)
    print(
        f"\nkept artifact started again: writes acknowledged {[w.acknowledged for w in phases]}; on v2: "
        f"upserts found {found} of {len(merged.present)} (own vector {self_hits}), deletes answering "
        f"404 {len(merged.deleted) - len(resurrected)} of {len(merged.deleted)}"
    )
    assert sum(w.acknowledged for w in phases) == sum(w.sent for w in phases)
    assert (missing, wrong_version, resurrected, returned_deleted) == ([], [], [], [])
    assert found == len(merged.present) > 60
