"""`recctl evaluate` as a function: re-derive the held-out split, check it against the embeddings,
and evaluate exact top-k, sharded ANN (in process and/or via a router) and popularity."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from shardrec.api.commands import DEFAULT_EF_SEARCH
from shardrec.serving.index.embeddings import (
    METADATA_FILE,
    SEEN_FILE,
    USERS_FILE,
    EmbeddingsError,
    load_embeddings,
    read_metadata,
    read_seen_pairs,
)
from shardrec.tools.pipeline.evaluation import Candidate, Catalogue, EvaluationReport, evaluate
from shardrec.tools.pipeline.holdout import HoldoutSplit, leave_last_n_out
from shardrec.tools.pipeline.recommenders import (
    ExactRecommender,
    ItemCosineRecommender,
    PopularityRecommender,
    RandomRecommender,
)
from shardrec.tools.pipeline.router_client import RouterRecommender
from shardrec.tools.pipeline.sources import DataSource
from shardrec.tools.pipeline.training import metric_of

EXACT = "exact top-k (brute force)"
POPULARITY = "popularity baseline"
RANDOM = "random baseline"
ITEM_COSINE = "item-item cosine (implicit, K=50; not servable from embeddings)"
RANDOM_SEED = 7


class EvaluationSetupError(ValueError):
    """The embeddings and the data do not fit together for an honest evaluation."""


@dataclass(frozen=True)
class AnnSettings:
    shards: int = 4
    m: int = 16
    ef_construction: int = 200
    ef_search: int = DEFAULT_EF_SEARCH  # the RecommenderCluster default (spec.index.hnsw.efSearch)


def _holdout_from_metadata(metadata: dict[str, object], embeddings_dir: Path) -> int:
    holdout = metadata.get("holdout")
    if isinstance(holdout, dict) and isinstance(holdout.get("per_user"), int):
        return int(holdout["per_user"])
    raise EvaluationSetupError(
        f"{embeddings_dir / 'metadata.json'}: embeddings were trained on every interaction, so held-out "
        "items would leak; train with `recctl train --holdout N` and evaluate those"
    )


def _check_same_data(metadata: dict[str, object], source: dict[str, object], embeddings_dir: Path) -> None:
    trained = metadata.get("source")
    if not isinstance(trained, dict) or not isinstance(trained.get("sha256"), dict):
        return
    now = source.get("sha256")
    assert isinstance(now, dict)
    for name, digest in trained["sha256"].items():
        if name in now and now[name] != digest:
            raise EvaluationSetupError(
                f"{name}: sha256 {now[name]} differs from the data these embeddings were trained on "
                f"({digest}, recorded in {embeddings_dir / 'metadata.json'})"
            )


def _check_no_leak(split: HoldoutSplit, seen: dict[str, list[str]], embeddings_dir: Path) -> None:
    for user, items in split.relevant_by_user().items():
        leaked = items.intersection(seen.get(user, ()))
        if leaked:
            raise EvaluationSetupError(
                f"{embeddings_dir / 'seen.tsv'}: user {user} has held-out item {sorted(leaked)[0]} among "
                "its training interactions; these embeddings were not trained with this holdout"
            )


def _comparisons(split: HoldoutSplit, item_ids: list[str], *, item_cosine: bool) -> list[Candidate]:
    """The rows every model is read against: item-item cosine, popularity, random."""
    rows = []
    if item_cosine:
        neighbours = ItemCosineRecommender(split.train.users.tolist(), split.train.items.tolist())
        rows.append(Candidate(ITEM_COSINE, neighbours))
    rows.append(Candidate(POPULARITY, PopularityRecommender(split.train.items.tolist())))
    rows.append(Candidate(RANDOM, RandomRecommender(item_ids, seed=RANDOM_SEED)))
    return rows


def _add_ratio_notes(report: EvaluationReport, exact_name: str, k: int) -> None:
    for metric, label in (("hit_rate", f"hit-rate@{k}"), ("ndcg", f"NDCG@{k}")):
        mean, low, high = report.ratio(exact_name, POPULARITY, metric)
        report.notes.append(
            f"Exact model / popularity, {label}: {mean:.2f}x "
            f"(95% CI [{low:.2f}, {high:.2f}]x, paired bootstrap)."
        )


def _catalogue(split: HoldoutSplit, item_ids: list[str]) -> Catalogue:
    pairs = set(zip(split.train.users.tolist(), split.train.items.tolist(), strict=True))
    users_with_item: dict[str, int] = {}
    for _, item in pairs:
        users_with_item[item] = users_with_item.get(item, 0) + 1
    return Catalogue(
        items=len(item_ids),
        users_with_item=users_with_item,
        users=len({user for user, _ in pairs}),
    )


def evaluate_embeddings(
    embeddings_dir: Path,
    *,
    source: DataSource | None = None,
    holdout: int | None = None,
    k: int = 10,
    ann: AnnSettings | None = AnnSettings(),
    router_url: str | None = None,
    api_key: str | None = None,
    progress: bool = True,
    item_cosine: bool = True,
) -> EvaluationReport:
    import threadpoolctl  # type: ignore[import-untyped]

    metadata_path = embeddings_dir / METADATA_FILE
    metadata = read_metadata(metadata_path) if metadata_path.is_file() else {}
    trained_holdout = _holdout_from_metadata(metadata, embeddings_dir)
    holdout = trained_holdout if holdout is None else holdout
    if holdout != trained_holdout:
        raise EvaluationSetupError(
            f"--holdout {holdout}: the embeddings in {embeddings_dir} were trained holding out "
            f"{trained_holdout} per user; evaluate with the same holdout"
        )
    source = source or DataSource.from_metadata(metadata.get("source"))
    loaded = source.load(progress=progress)
    _check_same_data(metadata, loaded.source, embeddings_dir)
    split = leave_last_n_out(loaded.interactions, holdout)
    embeddings = load_embeddings(embeddings_dir)
    if embeddings.user_ids is None:
        raise EmbeddingsError(
            f"{embeddings_dir / USERS_FILE}: file missing (evaluation needs user embeddings)"
        )
    seen_path = embeddings_dir / SEEN_FILE
    _check_no_leak(split, read_seen_pairs(seen_path) if seen_path.is_file() else {}, embeddings_dir)
    metric = metric_of(embeddings)

    known_users = set(embeddings.user_ids)
    relevant = {user: items for user, items in split.relevant_by_user().items() if user in known_users}
    exclude: dict[str, set[str]] = {}
    for user, item in zip(split.train.users.tolist(), split.train.items.tolist(), strict=True):
        exclude.setdefault(user, set()).add(item)

    candidates = [Candidate(f"{EXACT}, {metric}", ExactRecommender(embeddings))]
    catalogue = set(embeddings.item_ids)
    unreachable = sum(1 for items in relevant.values() for item in items if item not in catalogue)
    notes = [
        f"{unreachable} held-out interactions name items absent from training (no embedding): "
        "misses for every recommender."
    ]
    router: RouterRecommender | None = None
    with tempfile.TemporaryDirectory(prefix="shardrec-eval-") as scratch:
        if ann is not None:
            from shardrec.tools.pipeline.sharded import InProcessShardedRecommender

            sharded = InProcessShardedRecommender.build(
                embeddings_dir,
                Path(scratch) / "layout",
                shards=ann.shards,
                metric=metric,
                m=ann.m,
                ef_construction=ann.ef_construction,
                ef_search=ann.ef_search,
                progress=progress,
            )
            name = f"sharded HNSW in process ({ann.shards} shards, M={ann.m}, efSearch={ann.ef_search})"
            candidates.append(Candidate(name, sharded, approximate=True))
        if router_url:
            router = RouterRecommender(router_url, api_key=api_key)
            candidates.append(Candidate(f"router {router_url}", router, approximate=True))
        candidates.extend(_comparisons(split, embeddings.item_ids, item_cosine=item_cosine))
        try:
            # One query at a time: a multi-threaded BLAS only adds contention to these small products.
            with threadpoolctl.threadpool_limits(1, "blas"):
                report = evaluate(
                    candidates,
                    relevant,
                    exclude,
                    k=k,
                    holdout=holdout,
                    notes=notes,
                    progress=progress,
                    catalogue=_catalogue(split, embeddings.item_ids),
                )
        finally:
            if router is not None:
                router.close()
    _add_ratio_notes(report, candidates[0].name, k)
    if router is not None:
        versions = ", ".join(f"{version} x{count}" for version, count in sorted(router.versions.items()))
        report.notes.append(
            f"Router answers by index version: {versions}; partial answers: {router.partial_answers}."
        )
    return report
