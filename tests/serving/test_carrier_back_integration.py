"""A carry back (`CarrierConfig.back`) against real shard processes on 127.0.0.1, over TLS with a
bearer token: layout v1 (2 shards x 2 replicas, with write logs) is carried forward into v2
(3 shards, built with the carry folder) by a forward carrier, v2 then takes writes of its own
(new items, updates and deletes of items v1 had), and the rollback carries them back into v1:
v1's leaders, fenced since the first hand-over, are opened, v2's logs are forwarded from their
first record while writes go on, the carrier is restarted mid-way, the hand-over fences v2's
leaders (a write to one gets 503). Afterwards every acknowledged write (on v1 before the roll,
on v2 after it) is on every v1 replica as its latest state, and v1's leaders take writes again.

Helpers (processes, writer, TLS) are tests/serving/test_carrier_integration.py's. Every loop is
bounded in count and time; processes are stopped by their PID.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from shardrec.api.carry import FINISH_REQUESTED_ANNOTATION, HAND_OVER_REQUESTED_ANNOTATION, CarrierConfig
from shardrec.serving.carry.carrier import Carrier, shard_client
from shardrec.serving.carry.forwarding import ShardCalls
from shardrec.serving.carry.store import CarryStore
from shardrec.serving.index.build import build_layout
from shardrec.serving.index.embeddings import write_embeddings_dir
from shardrec.serving.index.partitioning import shard_of
from shardrec.serving.index.synthetic import clustered
from shardrec.tools.cli.main import main as recctl
from shardrec.tools.local.ports import free_port
from tests.serving.test_carrier import FakeKube
from tests.serving.test_carrier_integration import (
    DIM,
    NAME,
    TOKEN,
    Processes,
    processes,  # noqa: F401 - a fixture
    tls_dir,  # noqa: F401 - a fixture
    vector,
    wait_ready,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ITEMS = 40
WRITES_DURING = 40
MAX_STEPS = 40


def _steps_until(carrier: Carrier, kube: FakeKube, done: str) -> None:
    for _ in range(MAX_STEPS):
        carrier.step()
        if getattr(kube.last, done):
            return
        time.sleep(0.05)
    raise AssertionError(f"the carrier never reported {done}: {kube.last}")


def _vectors(client: httpx.Client, url: str, items: list[str]) -> dict[str, object]:
    answer = client.post(
        f"{url}/v1/items/vectors", json={"item_ids": items},
        headers={"authorization": f"Bearer {TOKEN}"}, extensions={"sni_hostname": NAME},
    )  # fmt: skip
    assert answer.status_code == 200, answer.text
    body: dict[str, object] = answer.json()
    return body


def test_a_rollback_carries_every_write_the_newer_layout_took_back_into_the_kept_one(
    processes: Processes,  # noqa: F811 - the fixture
    tls_dir: Path,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    ids = [f"i{n}" for n in range(ITEMS)]
    emb = write_embeddings_dir(tmp_path / "emb", clustered(ITEMS, DIM, clusters=4, seed=3), ids)
    build_layout(
        emb, tmp_path / "v1", version="v1", shards=2, metric="ip", m=8, ef_construction=32, progress=False
    )
    ports = [free_port() for _ in range(7)]  # distinct: the allocator never repeats one
    v1_urls = [[f"https://127.0.0.1:{ports[2 * s + r]}" for r in range(2)] for s in range(2)]
    v1 = [
        processes.shard(f"v1-{s}-{r}", tmp_path / "v1", s, ports[2 * s + r])
        for s in range(2)
        for r in range(2)
    ]
    for shard in v1:
        wait_ready(shard)
    v1_leaders = [urls[0] for urls in v1_urls]
    writer = processes.writer(v1_leaders)
    for n in range(10):
        assert writer.write(f"a{n}", vector(n)) == 200
    assert writer.write("i1", None) == 200

    # v1 -> v2, carried forward (cut, build with the carry folder, hand-over, finish)
    v2_urls = [[f"https://127.0.0.1:{ports[4 + s]}"] for s in range(3)]
    forward = CarrierConfig(
        cluster="demo", from_layout="v1", from_shards=2, to_layout="v2", to_shards=3,
        old_leaders=v1_leaders, new_replicas=v2_urls, carry_store=str(tmp_path / "store/carry/v2"),
        token_file=str(tls_dir / "token"), ca_file=str(tls_dir / "ca.crt"), tls_name=NAME,
        deployment="demo-carry-v2", poll_seconds=0.05,
    )  # fmt: skip
    kube = FakeKube()
    with shard_client(forward.ca_file) as client:
        calls = ShardCalls(client, TOKEN, tls_name=NAME)
        Carrier(forward, CarryStore(forward.carry_store), calls, kube).step()  # the cut
        build = ["index", "build", "--embeddings", str(emb), "--out", str(tmp_path / "v2"), "--version", "v2",
                 "--shards", "3", "--metric", "ip", "--m", "8", "--ef-construction", "32", "--no-progress",
                 "--carry-dir", forward.carry_store]  # fmt: skip
        assert recctl(build) == 0
        for s in range(3):
            wait_ready(processes.shard(f"v2-{s}", tmp_path / "v2", s, ports[4 + s]))
        carrier = Carrier(forward, CarryStore(forward.carry_store), calls, kube)
        kube.annotations[HAND_OVER_REQUESTED_ANNOTATION] = "hand-over-1"
        _steps_until(carrier, kube, "handed_over")
        kube.annotations[FINISH_REQUESTED_ANNOTATION] = "finish-1"
        _steps_until(carrier, kube, "done")
        assert writer.write("a0", vector(99)) == 503, "v1's leaders are fenced"

        # v2 serves and takes writes of its own: new items, updates and deletes of v1's
        writer.leaders = [urls[0] for urls in v2_urls]
        for n in range(10):
            assert writer.write(f"b{n}", vector(100 + n)) == 200
        assert writer.write("a1", vector(201)) == 200 and writer.write("a2", None) == 200
        assert writer.write("i2", None) == 200 and writer.write("i3", vector(203)) == 200

        # the rollback: v2's logs carried back into v1 while writes go on
        back = forward.model_copy(
            update={
                "from_layout": "v2", "from_shards": 3, "to_layout": "v1", "to_shards": 2,
                "old_leaders": writer.leaders, "new_replicas": v1_urls,
                "carry_store": str(tmp_path / "store/carry-back/v1/v2"), "deployment": "demo-carry-v1",
                "back": True,
            }
        )  # fmt: skip
        kube = FakeKube()
        carrier = Carrier(back, CarryStore(back.carry_store), calls, kube)
        carrier.step()
        assert kube.last.cut is None and kube.last.message == "", kube.last

        def keep_writing() -> None:
            for n in range(WRITES_DURING):
                item = f"c{n}" if n % 4 else f"a{n % 10}"  # new items, and updates of v1's
                writer.write(item, vector(1000 + n) if n % 6 else None)
                time.sleep(0.01)

        during = threading.Thread(target=keep_writing)
        during.start()
        restarted = False
        for _ in range(MAX_STEPS):
            if not restarted and kube.last.forwarded > 0 and during.is_alive():
                carrier = Carrier(back, CarryStore(back.carry_store), calls, kube)  # a new process
                restarted = True
            carrier.step()
            if not during.is_alive():
                break
            time.sleep(0.05)
        during.join(30)
        assert not during.is_alive() and restarted
        assert writer.refused == [503], "only the write to a fenced v1 leader before the rollback"
        carrier.step()
        assert kube.last.caught_up and kube.last.message == "", kube.last

        assert writer.write("just-before", vector(7)) == 200
        kube.annotations[HAND_OVER_REQUESTED_ANNOTATION] = "hand-over-2"
        carrier.step()
        assert kube.last.handed_over == "hand-over-2", kube.last
        assert writer.write("too-late", vector(8)) == 503  # the router retries it on v1
        kube.annotations[FINISH_REQUESTED_ANNOTATION] = "finish-2"
        _steps_until(carrier, kube, "done")

        # every acknowledged write on every v1 replica as its latest state; every delete absent
        expected = writer.expected
        for shard, urls in enumerate(v1_urls):
            owned = sorted(item for item in {*expected, *ids} if shard_of(item, 2) == shard)
            for url in urls:
                body = _vectors(client, url, owned)
                vectors, missing = body["vectors"], body["missing"]
                assert isinstance(vectors, dict) and isinstance(missing, list)
                for item in owned:
                    wanted = expected.get(item, "source")
                    if wanted is None:
                        assert item in missing, (url, item)
                    elif wanted != "source":
                        assert np.allclose(vectors[item], wanted, atol=1e-5), (url, item)
                    else:
                        assert item in vectors, (url, item)

        # v1 serves again: its leaders take writes
        writer.leaders = v1_leaders
        assert writer.write("after", vector(9)) == 200
