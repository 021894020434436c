"""A `Recommender` over a real sharded layout, searched in process: the serving path minus HTTP.

It builds the layout with the index workstream's `build_layout`, loads every shard with the same
`ShardIndex` the shard server runs, takes user vectors from the layout's user table (as the router
does) and max-merges the shard answers with the router's merge. Evaluating it measures what the
partitioning + HNSW approximation cost, separately from the network.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from shardrec.serving.index.build import build_layout
from shardrec.serving.index.scoring import Metric
from shardrec.serving.index.shard_index import ShardIndex
from shardrec.serving.index.users import UserTable, load_user_table
from shardrec.serving.router.merge import merge_top_k
from shardrec.tools.pipeline.recommenders import UnknownUserError


class InProcessShardedRecommender:
    def __init__(self, shards: list[ShardIndex], users: UserTable) -> None:
        self._shards = shards
        self._users = users

    @classmethod
    def build(
        cls,
        embeddings_dir: Path,
        layout_dir: Path,
        *,
        shards: int,
        metric: str,
        m: int = 16,
        ef_construction: int = 200,
        ef_search: int = 100,
        version: str = "eval",
        progress: bool = True,
    ) -> InProcessShardedRecommender:
        if metric not in ("ip", "cosine", "l2"):
            raise ValueError(f"metric {metric!r} is not one of ip, cosine, l2")
        checked: Metric = metric  # type: ignore[assignment]
        build_layout(
            embeddings_dir,
            layout_dir,
            version=version,
            shards=shards,
            metric=checked,
            m=m,
            ef_construction=ef_construction,
            progress=progress,
        )
        return cls.load(layout_dir, ef_search=ef_search)

    @classmethod
    def load(cls, layout_dir: Path, *, ef_search: int = 100) -> InProcessShardedRecommender:
        users = load_user_table(layout_dir)
        first = ShardIndex.load(layout_dir, 0, ef_search=ef_search)
        rest = [ShardIndex.load(layout_dir, i, ef_search=ef_search) for i in range(1, first.layout.shards)]
        return cls([first, *rest], users)

    def __call__(self, user_id: str, k: int, exclude: Collection[str]) -> list[str]:
        vector = self._users.vector(user_id)
        if vector is None:
            raise UnknownUserError(user_id)
        banned = list(exclude)
        parts = []
        for shard in self._shards:
            result = shard.search(vector[None, :], k, [banned])
            count = int(result.counts[0])
            parts.append(([shard.ids[label] for label in result.labels[0, :count]], result.scores[0, :count]))
        ranked, _ = merge_top_k(parts, k, exclude)
        return ranked
