"""User fold-in on a local cluster (real shard and router processes on 127.0.0.1): a layout built
from ALS embeddings records the fold-in and its Gram matrix; the router folds in a user from
recent_items whose vectors it fetches from the owning shards, and never returns those items."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from shardrec.serving.index.foldin import FoldInModel, FoldInSpec, fold_in, item_gram
from shardrec.serving.index.layout import read_layout_manifest
from shardrec.serving.index.manifest import ITEM_GRAM_FILE
from shardrec.serving.index.partitioning import shard_of
from tests.serving.test_failover_integration import (
    ROUTER,
    Cluster,
    start_layout,
    wait_ready,
    write_embeddings,
    write_topology,
)

pytestmark = pytest.mark.integration

SPEC = FoldInSpec("als", "als", regularization=0.1, alpha=0.5, default_weight=3.0)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    running = Cluster(tmp_path)
    try:
        yield running
    finally:
        running.stop()


def _als_layout(root: Path) -> Path:
    from shardrec.serving.index.build import build_layout

    embeddings = root / "emb"
    write_embeddings(embeddings, "v1", seed=5)
    metadata = {
        "metric": "ip",
        "trainer": {"model": "AlternatingLeastSquares", "params": {"regularization": 0.1, "alpha": 0.5}},
        "interactions": {"mean_rating": 3.0},
    }
    (embeddings / "metadata.json").write_text(json.dumps(metadata))
    layout = root / "layout"
    build_layout(
        embeddings,
        layout,
        version="v1",
        shards=2,
        metric="ip",
        m=16,
        ef_construction=200,
        workers=1,
        progress=False,
    )
    return layout


def test_recent_items_fold_in_through_real_shards_and_router(cluster: Cluster) -> None:
    layout = _als_layout(cluster.tmp)
    manifest = read_layout_manifest(layout)
    assert manifest.users is not None and manifest.users.fold_in is not None
    assert manifest.users.fold_in.method == "als" and manifest.users.fold_in.alpha == 0.5
    assert ITEM_GRAM_FILE in {entry.name for entry in manifest.users.files}
    items = np.load(cluster.tmp / "emb" / "items.npy")
    ids = [f"v1-item-{i}" for i in range(len(items))]

    shards = start_layout(cluster, layout, replicas=1)
    topology = cluster.tmp / "topology.json"
    write_topology(topology, 1, layout, shards)
    cache = {"enabled": True, "maxBytes": 1 << 20, "ttlSeconds": 60}
    router = cluster.router("router", topology, {**ROUTER, "cache": cache})
    wait_ready(router.url)

    clicks = ["v1-item-2", "v1-item-150", "v1-item-299"]
    assert {shard_of(item, 2) for item in clicks} == {0, 1}  # vectors come from both shards
    model = FoldInModel(SPEC, item_gram(items, "ip"))
    rows = np.stack([items[ids.index(item)] for item in clicks])
    vector = fold_in(model, rows, np.array([3.0, 3.0, 5.0]))
    scores = items @ vector
    exact = [ids[i] for i in np.argsort(-scores) if ids[i] not in clicks][:10]

    with httpx.Client(base_url=router.url, timeout=10) as client:
        before = client.post("/v1/recommend", json={"user_id": "user-4", "k": 10})
        assert before.status_code == 200, before.text
        body = {
            "user_id": "user-4",
            "recent_items": [
                {"item_id": clicks[0]},
                {"item_id": clicks[1]},
                {"item_id": clicks[2], "weight": 5},
            ],
            "k": 10,
        }
        after = client.post("/v1/recommend", json=body)
        assert after.status_code == 200, after.text
        got = [item["item_id"] for item in after.json()["items"]]
        seen = {f"v1-item-{(4 * 7 + j) % 300}" for j in range(3)}
        assert not (set(clicks) | seen) & set(got)
        wanted = [item for item in exact if item not in seen]
        assert len(set(got) & set(wanted[:10])) >= 9  # HNSW against exact search
        assert got != [item["item_id"] for item in before.json()["items"]]
        # Cold start: no user id, the same clicks.
        cold = client.post("/v1/recommend", json={"recent_items": body["recent_items"], "k": 10})
        assert cold.status_code == 200, cold.text
        cold_ids = [item["item_id"] for item in cold.json()["items"]]
        assert len(set(cold_ids) & set(exact)) >= 9 and not set(clicks) & set(cold_ids)
        again = client.post("/v1/recommend", json=body).json()
        assert again.pop("cached") is True and again == after.json()
        missing = client.post("/v1/recommend", json={"recent_items": [{"item_id": "nope"}]})
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "unknown_items"
