"""The binary router<->shard format round-trips and rejects malformed bodies with a named reason."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from shardrec.serving.shard.wire import (
    WireError,
    decode_answer,
    decode_request,
    encode_answer,
    encode_request,
)

LIMITS = {"max_queries": 64, "max_k": 100, "dimension": 4}


def _queries(n: int = 3, d: int = 4) -> np.ndarray:
    return np.arange(n * d, dtype=np.float32).reshape(n, d) / 7


def test_request_round_trip_with_and_without_exclusions() -> None:
    queries = _queries()
    plain = decode_request(encode_request(queries, 10, None, 250), **LIMITS)
    np.testing.assert_array_equal(plain.queries, queries)
    assert (plain.k, plain.timeout_ms, plain.exclude) == (10, 250, None)
    exclude = [["a", "é-ü"], [], ["c"]]
    full = decode_request(encode_request(queries, 5, exclude, 0), **LIMITS)
    assert full.exclude == exclude


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda b: b[:10], "shorter than the 28-byte header"),
        (lambda b: b"XXXX" + b[4:], "bad magic"),
        (lambda b: b[:-4], "shorter than its 3 x 4 queries"),
        (lambda b: b + b"\0", "header announces"),
    ],
)
def test_malformed_requests(mutate: object, reason: str) -> None:
    body = encode_request(_queries(), 10, None, 0)
    with pytest.raises(WireError, match=reason):
        decode_request(mutate(body), **LIMITS)  # type: ignore[operator]


def test_request_bounds() -> None:
    with pytest.raises(WireError, match="dimension 5 differs from the index dimension 4"):
        decode_request(encode_request(_queries(2, 5), 10, None, 0), **LIMITS)
    with pytest.raises(WireError, match=r"k 0 must be in 1..100"):
        decode_request(encode_request(_queries(), 0, None, 0), **LIMITS)
    with pytest.raises(WireError, match=r"k 101"):
        decode_request(encode_request(_queries(), 101, None, 0), **LIMITS)
    with pytest.raises(WireError, match=r"query count 65"):
        decode_request(encode_request(_queries(65), 10, None, 0), **LIMITS)
    bad = _queries()
    bad[1, 2] = np.nan
    with pytest.raises(WireError, match="NaN or inf"):
        decode_request(encode_request(bad, 10, None, 0), **LIMITS)


def test_exclusion_block_problems() -> None:
    body = bytearray(encode_request(_queries(), 10, [["a"], ["b"], ["c"]], 0))
    body[-1:] = b"\xff"
    with pytest.raises(WireError, match="not valid UTF-8"):
        decode_request(bytes(body), **LIMITS)
    body = bytearray(encode_request(_queries(), 10, [["a"], ["b"], ["c"]], 0))
    counts_at = 28 + 3 * 4 * 4
    struct.pack_into("<I", body, counts_at, 2)
    with pytest.raises(WireError, match="exclude counts announce"):
        decode_request(bytes(body), **LIMITS)
    body = bytearray(encode_request(_queries(), 10, [["a"], ["b"], ["c"]], 0))
    struct.pack_into("<I", body, counts_at + 3 * 4, 2)  # first id's length
    with pytest.raises(WireError, match="id lengths add up to 4, not 3 bytes"):
        decode_request(bytes(body), **LIMITS)


@pytest.mark.parametrize(
    "exclude",
    [
        [["a\nb", "c"], ["\n"], ["x\r\n\x00\t"]],
        [["\n\n\n"], [], ["é\nü", "東\n京", "\\n"]],
        [[], [], ["only"]],
    ],
)
def test_no_excluded_id_can_shift_its_neighbours(exclude: list[list[str]]) -> None:
    decoded = decode_request(encode_request(_queries(), 10, exclude, 0), **LIMITS)
    assert decoded.exclude == exclude


def test_newline_joined_bodies_of_earlier_routers_are_still_read() -> None:
    queries = _queries()
    blob = b"a\nb\nc"
    header = struct.pack("<4sHHIIIII", b"SRQ1", 0, 0, 3, 4, 10, 0, len(blob))
    counts = np.array([2, 0, 1], dtype="<u4").tobytes()
    decoded = decode_request(header + queries.astype("<f4").tobytes() + counts + blob, **LIMITS)
    assert decoded.exclude == [["a", "b"], [], ["c"]]


@pytest.mark.parametrize("ids", [["a", "bb", "ccc", "", "x", "y"], ["ü", "東京", "a", "b", "c", ""]])
def test_answer_round_trip(ids: list[str]) -> None:
    encoded = np.array([i.encode() for i in ids]).reshape(2, 3)
    scores = np.array([[3, 2, 1], [5, 4, -np.inf]], dtype=np.float32)
    body = encode_answer(3, b"v7", b"lay-x", np.array([3, 2]), scores, encoded, all(i.isascii() for i in ids))
    answer = decode_answer(body)
    assert (answer.shard, answer.version, answer.layout) == (3, "v7", "lay-x")
    assert answer.counts.tolist() == [3, 2]
    np.testing.assert_array_equal(answer.scores, scores)
    assert answer.ids.tolist() == [ids[:3], ids[3:]]
    with pytest.raises(WireError, match="header announces"):
        decode_answer(body[:-1])


def test_ef_search_travels_in_the_request_header() -> None:
    assert decode_request(encode_request(_queries(), 10, None, 0), **LIMITS).ef_search == 0
    assert decode_request(encode_request(_queries(), 10, None, 0, 300), **LIMITS).ef_search == 300
    with pytest.raises(ValueError, match="ef_search"):
        encode_request(_queries(), 10, None, 0, 70000)
