"""The JSON answers of the recommend routes.

`encode_batch_plain` states the batch answer as a dict for orjson: one dict per item, which for a
batch of 64 queries x 10 items is most of the encoding time. `encode_batch` writes the same bytes
from two orjson calls (all ids, all scores) and a few templates; a test holds the two equal.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import orjson

Scores = npt.NDArray[np.float32]
Results = Sequence[tuple[list[str], Scores]]

_NUMPY = orjson.OPT_SERIALIZE_NUMPY
_EMPTY_ROW = b'{"items":[]}'


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


def encode_batch_plain(results: Results, version: str, partial: bool, answered: int, total: int) -> bytes:
    """The batch answer, stated plainly (the reference for `encode_batch`)."""
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


def encode_batch(results: Results, version: str, partial: bool, answered: int, total: int) -> bytes:
    """Byte for byte `encode_batch_plain`, without a dict per item."""
    score_rows = short_floats([r[1] for r in results])
    counts = [len(ids) for ids, _ in results]
    if counts != list(map(len, score_rows)):
        return encode_batch_plain(results, version, partial, answered, total)  # raises, as it did
    tail = orjson.dumps(
        {"index_version": version, "partial": partial, "shards": {"answered": answered, "total": total}}
    )
    every_id = list(itertools.chain.from_iterable(ids for ids, _ in results))
    if not every_id:
        return b'{"results":[' + b",".join([_EMPTY_ROW] * len(results)) + b"]," + tail[1:]
    # Scores: orjson writes each number of a list exactly as it writes it in a dict, and no number
    # contains a comma.
    scores = orjson.dumps(list(itertools.chain.from_iterable(score_rows)))[1:-1].split(b",")
    if '"' in "".join(every_id):
        # A quote in an id would make the split below ambiguous: one orjson call per id.
        id_texts = list(map(orjson.dumps, every_id))
        head, middle = b'{"item_id":', b',"score":'
    else:
        # Without quotes in the ids, '","' occurs only between two ids of the JSON list.
        id_texts = orjson.dumps(every_id)[2:-2].split(b'","')
        head, middle = b'{"item_id":"', b'","score":'
    size = len(every_id)
    pieces = [b"}," + head] * (4 * size)  # piece 4i: what comes before item i within its row
    pieces[1::4] = id_texts
    pieces[2::4] = [middle] * size
    pieces[3::4] = scores
    # Row boundaries go into the piece before each row's first item; empty rows ride along.
    between = b'{"results":['
    start = 0
    for count in counts:
        if count:
            pieces[4 * start] = between + b'{"items":[' + head
            between = b"}]},"
            start += count
        else:
            between += _EMPTY_ROW + b","
    return b"".join(pieces) + between[:-1] + b"]," + tail[1:]
