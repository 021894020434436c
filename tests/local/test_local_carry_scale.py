"""Item writes at the issue's scale across a rollout on the local runtime (not in CI: minutes).

`SHARDREC_CARRY_SCALE=1 .venv/bin/pytest -s -p no:cacheprovider tests/local/test_local_carry_scale.py`

10,000 upserts and 1,000 deletes from 4 writers (60% before the apply, the rest during the rollout;
then 160 more upserts on v2), v1 on 2 shards x 2 replicas -> v2 on 3 shards x 2, while a reader
queries throughout and a follower of v1 (while v2 builds) and a follower of v2 (before the switch)
are SIGKILLed; the supervisor restarts them, they replay their logs and catch up. Afterwards, on v2,
the checks of test_local_carry.py for every write: each acknowledged upsert is found by id and by
its vector, each acknowledged delete answers 404 and appears in no answer, and no read that started
after a delete's acknowledgement returned the item. Writes with an unknown outcome (no 200 after
bounded retries) are left out. One `SCALE` line reports the counts; nothing asserts on speed.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from tests.local.test_local_carry import (
    ITEMS,
    KEY,
    Writes,
    _check,
    _manifest,
    _merge,
    _query,
    _vector,
    up_v1,
)
from tests.local.test_local_cluster import _recctl, _status, _wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(2400),
    pytest.mark.skipif(
        os.environ.get("SHARDREC_CARRY_SCALE") != "1",
        reason="minutes of writes: SHARDREC_CARRY_SCALE=1 runs it",
    ),
]

WRITERS = 4
UPSERTS, DELETES = 10_000, 1_000  # in all
BEFORE_SHARE = 0.6
MAX_READS = 100_000
AFTER_SWITCH = 40  # upserts per writer on v2 after the switch


def _processes(state: Path) -> list[dict[str, object]]:
    runtime = json.loads((state / "runtime.json").read_text())
    return list(runtime["processes"])


def _kill_follower(state: Path, layout: str, shard: int) -> str:
    """SIGKILL replica 1 (a follower) of `shard` of `layout` by its PID in runtime.json."""
    name = f"shard-{layout}-{shard}-1"
    victim = next(p for p in _processes(state) if p["name"] == name)
    os.kill(int(str(victim["pid"])), signal.SIGKILL)
    return name


def _back(state: Path, name: str) -> bool:
    return any(
        p["name"] == name and int(str(p["restarts"])) >= 1 and bool(p["ready"]) for p in _processes(state)
    )


def _layouts(state: Path) -> dict[str, str]:
    """Layout name -> version, from the runtime's status."""
    return {str(entry["name"]): str(entry["version"]) for entry in _status(state)["layouts"]}


def _writer(url: str, prefix: str, upserts: int, seed: int) -> Writes:
    """`upserts` new items `<prefix>-<n>`; after every 20th, the item written two before it is
    deleted again, and so is an original item of the source: 1 delete per 10 upserts, half of them
    of items that exist only through writes."""
    writes = Writes()
    rng = np.random.default_rng(seed)
    with httpx.Client(base_url=url, timeout=10) as client:
        for n in range(upserts):
            writes.progress = n
            writes.send(client, f"{prefix}-{n}", _vector(rng))
            if n % 20 == 19:
                writes.send(client, f"{prefix}-{n - 2}", None)
                writes.send(client, f"item-{(seed * 997 + n // 20) % ITEMS}", None)
    return writes


def _run_writers(url: str, phase: str, per_writer: int, results: list[Writes]) -> list[threading.Thread]:
    threads = []
    for i in range(WRITERS):

        def run(i: int = i) -> None:
            results.append(_writer(url, f"{phase}{i}", per_writer, seed=100 * len(phase) + i))

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        threads.append(thread)
    return threads


def test_ten_thousand_writes_survive_a_rollout_with_killed_replicas(tmp_path: Path) -> None:
    manifest, keys, state, url = up_v1(tmp_path)
    per_writer = UPSERTS // WRITERS
    before = int(per_writer * BEFORE_SHARE)
    results: list[Writes] = []
    reads: list[tuple[float, list[str]]] = []
    read_errors: list[str] = []
    killed: list[str] = []
    reads_done = threading.Event()

    def reader() -> None:
        pick = np.random.default_rng(13)
        with httpx.Client(base_url=url, timeout=10) as client:
            while not reads_done.is_set() and len(reads) < MAX_READS:
                begun = time.monotonic()
                try:
                    answer = client.post(
                        "/v1/recommend", json={"vector": _vector(pick), "k": 10}, headers=KEY
                    )
                except httpx.HTTPError as exc:
                    read_errors.append(repr(exc))
                    continue
                if answer.status_code == 200:
                    reads.append((begun, [hit["item_id"] for hit in answer.json()["items"]]))
                else:
                    read_errors.append(f"{answer.status_code} {answer.text[:100]}")
                time.sleep(0.01)

    started = time.monotonic()
    reading = threading.Thread(target=reader, daemon=True)
    try:
        reading.start()
        for thread in _run_writers(url, "pre", before, results):
            thread.join(timeout=1200)
        before_s = time.monotonic() - started
        (v1_layout,) = _layouts(state)

        during = _run_writers(url, "mid", per_writer - before, results)
        manifest.write_text(yaml.safe_dump(_manifest(tmp_path / "emb-v2", "v2", 3, keys)))
        _recctl("apply", "-f", str(manifest), "--state-dir", str(state))
        time.sleep(1.0)
        killed.append(_kill_follower(state, v1_layout, 1))  # while v2 builds
        _wait_for(lambda: _back(state, killed[-1]), "the killed v1 follower to be back", timeout_s=180)
        _wait_for(
            lambda: any(
                str(p["name"]).startswith("shard-") and v1_layout not in str(p["name"])
                for p in _processes(state)
            ),
            "v2's shard processes",
            timeout_s=900,
        )
        v2_layout = next(name for name, version in _layouts(state).items() if version == "v2")
        _wait_for(
            lambda: any(p["name"] == f"shard-{v2_layout}-2-1" for p in _processes(state)),
            "v2's last follower",
            timeout_s=300,
        )
        killed.append(_kill_follower(state, v2_layout, 2))  # before the switch (or just after it)
        _wait_for(lambda: _status(state).get("activeVersion") == "v2", "v2 to serve", timeout_s=1200)
        switched_s = time.monotonic() - started
        for thread in during:
            thread.join(timeout=1200)
        for thread in _run_writers(url, "post", AFTER_SWITCH, results):  # on v2 itself
            thread.join(timeout=300)
        reads_done.set()
        reading.join(timeout=30)
        with httpx.Client(base_url=url, timeout=10) as client:
            _wait_for(lambda: len(_status(state)["layouts"]) == 1, "v1 to be deleted", timeout_s=180)
            merged = _merge(*results)
            found, missing, wrong_version, resurrected = _check(client, merged)
            self_hits, returned_deleted = _query(client, merged)
    finally:
        reads_done.set()
        _recctl("down", "--state-dir", str(state), check=False)

    deleted_at: dict[str, float] = {}
    by_layout: dict[str, int] = {}
    for writes in results:
        deleted_at.update(writes.deleted_at)
        for layout, count in writes.by_layout.items():
            by_layout[layout] = by_layout.get(layout, 0) + count
    stale = [
        item
        for begun, ids in reads
        for item in ids
        if item in merged.deleted and item in deleted_at and deleted_at[item] < begun
    ]
    sent = sum(w.sent for w in results)
    upserted = sum(len(w.vectors) for w in results)
    print(
        f"\nSCALE writes sent {sent} (upserts {upserted}, deletes {sent - upserted}), acknowledged "
        f"{sum(w.acknowledged for w in results)} by layout {by_layout}, unknown outcome "
        f"{len(merged.unknown)}, 503s retried {sum(w.retries for w in results)}; killed {killed}; "
        f"writes before the apply {before_s:.0f} s, v2 serving at {switched_s:.0f} s; reads "
        f"{len(reads)} (errors {len(read_errors)}), deleted items returned after their ack {len(stale)}; "
        f"on v2: upserts found {found} of {len(merged.present)}, returned by their vector {self_hits}; "
        f"deletes 404 {len(merged.deleted) - len(resurrected)} of {len(merged.deleted)}, "
        f"deleted ids in answers {len(returned_deleted)}"
    )
    assert len(results) == 3 * WRITERS
    assert upserted >= UPSERTS and sent - upserted >= DELETES
    assert by_layout.get(v1_layout, 0) > 0 and by_layout.get(v2_layout, 0) > 0, by_layout
    assert stale == [], stale[:10]
    assert missing == [], (len(missing), missing[:10])
    assert wrong_version == [], wrong_version[:10]
    assert resurrected == [], (len(resurrected), resurrected[:10])
    assert returned_deleted == [], returned_deleted[:10]
    assert found == len(merged.present) > UPSERTS // 2
