"""k-way top-k merge of shard answers.

Scores are "higher is better" for every metric (`shardrec.serving.index.scoring`), so this is a
max-merge. Ties are broken by item id (ascending) so the same inputs always give the same order,
whatever order the shards answered in. An item seen twice keeps its best score (shards never
overlap, but a merge that trusted that would silently return duplicates the day they do).
"""

from __future__ import annotations

from collections.abc import Container, Sequence

import numpy as np
import numpy.typing as npt

Scores = npt.NDArray[np.float32]


def merge_top_k(
    parts: Sequence[tuple[Sequence[str], Scores]], k: int, exclude: Container[str] | None = None
) -> tuple[list[str], list[np.float32]]:
    """The best `k` distinct items over all `parts` (each: ids and their scores), best first.

    Items in `exclude` are dropped (shards already exclude them; this keeps the guarantee in one
    place even if a shard does not). NaN scores are dropped: they compare false with everything
    and would make the order undefined.
    """
    if k <= 0:
        return [], []
    if len(parts) == 1:
        ids: Sequence[str] = parts[0][0]
        scores = np.asarray(parts[0][1], dtype=np.float32)
    else:
        ids = [item for part_ids, _ in parts for item in part_ids]
        scores = np.concatenate([np.asarray(s, dtype=np.float32) for _, s in parts]) if parts else _EMPTY
    if len(ids) != len(scores):
        raise ValueError(f"merge: {len(ids)} ids but {len(scores)} scores")
    if not ids:
        return [], []
    # argsort puts NaN last; a stable sort of the negated scores keeps equal scores in input order,
    # and the final sort below orders them by id.
    order = np.argsort(-scores, kind="stable")
    valid = len(order) - int(np.count_nonzero(np.isnan(scores)))
    taken: dict[str, np.float32] = {}
    boundary: np.float32 | None = None
    for position in order[:valid].tolist():
        score = scores[position]
        if boundary is not None and score < boundary:
            break
        item = ids[position]
        if item in taken or (exclude is not None and item in exclude):
            continue  # sorted best first, so the kept copy has the best score
        taken[item] = score
        if boundary is None and len(taken) == k:
            boundary = score  # keep collecting items tied with the k-th, then order ties by id
    ranked = sorted(taken.items(), key=_best_then_id)[:k]
    return [item for item, _ in ranked], [score for _, score in ranked]


def _best_then_id(entry: tuple[str, np.float32]) -> tuple[float, str]:
    return (-float(entry[1]), entry[0])


_EMPTY: Scores = np.zeros(0, dtype=np.float32)


Ids = npt.NDArray[np.str_]
Counts = npt.NDArray[np.uint32]
BlockPart = tuple[Ids, Scores, Counts]

# Below this many rows a per-row merge is cheaper than the fixed cost of the vectorised one.
_VECTORISED_FROM_ROWS = 4


def merge_block(
    parts: Sequence[BlockPart], k: int, exclude: Sequence[Sequence[str] | None] | None = None
) -> list[tuple[list[str], Scores]]:
    """Per row of a block of queries: the best `k` distinct items over the shards' answers.

    Each part is one shard's answer for the block: (rows, width) ids and scores, of which the first
    counts[r] are real (padding has -inf scores). Same order and tie rule as `merge_top_k`; rows
    that hold a duplicate or an excluded id fall back to it, so the rule has a single definition.
    """
    if not parts:
        return []
    rows = len(parts[0][2])
    if exclude is not None and any(exclude):
        return [_merge_row(parts, row, k, exclude[row]) for row in range(rows)]
    if rows < _VECTORISED_FROM_ROWS:
        return [_merge_one(parts, row, k) for row in range(rows)]
    ids = np.concatenate([part[0] for part in parts], axis=1) if len(parts) > 1 else parts[0][0]
    scores = np.concatenate([part[1] for part in parts], axis=1) if len(parts) > 1 else parts[0][1]
    nan = np.isnan(scores)
    if nan.any():  # NaN would make the order undefined; treat it as padding
        scores = np.where(nan, np.float32(-np.inf), scores)
    # Sort by score only (floats sort fast); rows where a tie touches the top k, or where an id
    # repeats, take the exact per-row path, which also orders ties by id.
    width = min(k + 1, scores.shape[1])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :width]
    row_index = np.arange(rows)[:, None]
    top_scores = scores[row_index, order]
    tied = ((top_scores[:, 1:] == top_scores[:, :-1]) & (top_scores[:, 1:] > -np.inf)).any(axis=1).tolist()
    top_ids = ids[row_index, order[:, :k]]
    top_scores = top_scores[:, :k]
    valid = (top_scores > -np.inf).sum(axis=1).tolist()
    # One tolist and one split into row views for the block, not two numpy calls per row.
    id_rows: list[list[str]] = top_ids.tolist()
    score_rows = list(top_scores)
    full = top_scores.shape[1]
    results: list[tuple[list[str], Scores]] = []
    for row, count in enumerate(valid):
        row_ids = id_rows[row] if count == full else id_rows[row][:count]
        if tied[row] or len(set(row_ids)) != count:
            results.append(_merge_row(parts, row, k, None))
        else:
            results.append((row_ids, score_rows[row] if count == full else score_rows[row][:count]))
    return results


def _merge_one(parts: Sequence[BlockPart], row: int, k: int) -> tuple[list[str], Scores]:
    """One row with numpy on 1-d arrays: the common single-query case, no per-candidate Python."""
    if len(parts) == 1:
        ids, scores = parts[0][0][row], parts[0][1][row]
    else:
        ids = np.concatenate([part[0][row] for part in parts])
        scores = np.concatenate([part[1][row] for part in parts])
    if np.isnan(scores).any():
        return _merge_row(parts, row, k, None)
    order = np.argsort(-scores, kind="stable")[: k + 1]
    top = scores[order]
    count = int(np.count_nonzero(top[:k] > -np.inf))
    if count and ((top[1:] == top[:-1]) & (top[1:] > -np.inf)).any():
        return _merge_row(parts, row, k, None)  # a tie near the top: order it by id exactly
    top_ids = ids[order[:count]].tolist()
    if len(set(top_ids)) != count:
        return _merge_row(parts, row, k, None)
    return top_ids, top[:count]


def _merge_row(
    parts: Sequence[BlockPart], row: int, k: int, exclude: Sequence[str] | None
) -> tuple[list[str], Scores]:
    """One row, in plain Python: for the few dozen candidates of a single query this is cheaper
    than numpy's per-call overhead. Same rule as `merge_top_k` (a test holds them equal)."""
    candidates: list[tuple[float, str]] = []
    for ids, scores, counts in parts:
        count = int(counts[row])
        if count:
            negated = -scores[row, :count]
            if np.isnan(negated).any():  # NaN would make the sort order undefined: drop it
                keep = ~np.isnan(negated)
                candidates += zip(negated[keep].tolist(), ids[row, :count][keep].tolist(), strict=True)
            else:
                candidates += zip(negated.tolist(), ids[row, :count].tolist(), strict=True)
    candidates.sort()  # best score first (negated), ties by id ascending: the final order
    banned = set(exclude) if exclude else ()
    taken: dict[str, float] = {}
    for negated_score, item in candidates:
        if item in taken or item in banned:
            continue  # sorted best first, so the kept copy has the best score
        taken[item] = -negated_score
        if len(taken) == k:
            break
    return list(taken), np.array(list(taken.values()), dtype=np.float32)
