"""The JSON answers of the recommend routes: each stated as a dict, written by orjson.

A version that spliced the batch answer from bytes (two orjson calls and templates instead of a
dict per item) was dropped after `make bench-ab`: this plain version needed only 1.04x its CPU per
answer (geometric mean over batches of 1 and 64 at k=10 and k=100; 0.74x to 1.40x), under the
1.3x a hand-written hot path must win by (docs/router.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import orjson

Scores = npt.NDArray[np.float32]
Results = Sequence[tuple[list[str], Scores]]

_NUMPY = orjson.OPT_SERIALIZE_NUMPY


def short_floats(rows: list[Scores]) -> list[list[float]]:
    """float32 scores as Python floats that print as their shortest float32 form (0.3, not
    0.30000001192092896): orjson writes float32 arrays that way, and reading it back keeps it.
    Two C calls for all rows instead of a numpy scalar per score."""
    result: list[list[float]] = orjson.loads(orjson.dumps(rows, option=_NUMPY))
    return result


def items(ids: list[str], scores: list[float]) -> list[dict[str, object]]:
    return [{"item_id": item, "score": score} for item, score in zip(ids, scores, strict=True)]


def encode_one(
    result: tuple[list[str], Scores], version: str, partial: bool, answered: int, total: int
) -> bytes:
    return orjson.dumps(
        {
            "items": items(result[0], short_floats([result[1]])[0]),
            "index_version": version,
            "partial": partial,
            "shards": {"answered": answered, "total": total},
        }
    )


def encode_batch(results: Results, version: str, partial: bool, answered: int, total: int) -> bytes:
    return orjson.dumps(
        {
            "results": [
                {"items": items(ids, scores)}
                for (ids, _), scores in zip(results, short_floats([r[1] for r in results]), strict=True)
            ],
            "index_version": version,
            "partial": partial,
            "shards": {"answered": answered, "total": total},
        }
    )
