"""The binary search wire format between `ShardClient` and the shard server (private to both).

Designed so neither side parses per number: vectors and scores travel as raw little-endian
float32, ids as one fixed-width bytes block that numpy gathers and splits in C.

Request body (`POST /v1/search`, content type `application/x-shardrec-search`):
    header  <4s H H I I I I I  magic "SRQ2", flags, ef_search (0: the shard's default), n, dim, k,
                               timeout_ms, exclude_bytes
    float32[n*dim]             queries, row-major
    uint32[n]                  per-query count of excluded ids   (only when exclude_bytes > 0)
    uint32[sum of counts]      byte length of each excluded id   (only when exclude_bytes > 0)
    bytes[exclude_bytes]       the excluded ids, UTF-8, concatenated, query after query
Ids are length-prefixed, so no id (whatever characters it holds) can shift its neighbours'. The
decoder still reads "SRQ1" bodies (ids '\n'-joined, no lengths), which routers before SRQ2 send.
Response body (200, `application/x-shardrec-answer`):
    header  <4s H H I I I H H  magic "SRS1", flags (1 = ids are ASCII), shard, n, k, id_width,
                               version_len, layout_len
    bytes                      version, layout (UTF-8), then zero padding to a multiple of 4
    uint32[n]                  per-query result counts (<= k; the rest is padding)
    float32[n*k]               scores, higher is better, -inf padding
    bytes[n*k*id_width]        ids, fixed width, NUL padded
Every header is a multiple of 4 bytes so the float32 blocks stay aligned for zero-copy views.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

REQUEST_CONTENT_TYPE = "application/x-shardrec-search"
ANSWER_CONTENT_TYPE = "application/x-shardrec-answer"
REQUEST_MAGIC = b"SRQ2"
REQUEST_MAGIC_JOINED = b"SRQ1"  # '\n'-joined ids: read for compatibility, never written
ANSWER_MAGIC = b"SRS1"
_REQUEST = struct.Struct("<4sHHIIIII")
_ANSWER = struct.Struct("<4sHHIIIHH")
FLAG_ASCII_IDS = 1

Floats = npt.NDArray[np.float32]


class WireError(ValueError):
    """A malformed body; the message says which part."""


@dataclass(frozen=True)
class SearchRequest:
    queries: Floats
    k: int
    timeout_ms: int
    exclude: list[list[str]] | None
    ef_search: int = 0
    """HNSW ef to search with; 0: the shard's own default."""


def encode_request(
    queries: Floats,
    k: int,
    exclude: Sequence[Sequence[str]] | None,
    timeout_ms: int,
    ef_search: int = 0,
) -> bytes:
    """`ef_search`: the HNSW ef the shard should search with (0: its default; at most 65535)."""
    if not 0 <= ef_search <= 0xFFFF:
        raise ValueError(f"ef_search {ef_search} must be in 0..65535")
    n, dim = queries.shape
    parts: list[bytes] = []
    blob = b""
    if exclude is not None and any(exclude):
        if len(exclude) != n:
            raise ValueError(f"exclude has {len(exclude)} lists for {n} queries")
        counts = np.fromiter((len(ids) for ids in exclude), dtype="<u4", count=n)
        encoded = [item.encode("utf-8") for ids in exclude for item in ids]
        lengths = np.fromiter(map(len, encoded), dtype="<u4", count=len(encoded))
        blob = b"".join(encoded)
        # Only empty ids (which exclude nothing: no item has one) leave nothing to send.
        parts = [counts.tobytes(), lengths.tobytes(), blob] if blob else []
    header = _REQUEST.pack(REQUEST_MAGIC, 0, ef_search, n, dim, k, timeout_ms, len(blob))
    return b"".join((header, np.ascontiguousarray(queries, dtype="<f4").tobytes(), *parts))


def decode_request(body: bytes, *, max_queries: int, max_k: int, dimension: int) -> SearchRequest:
    """Parse and bound-check a request; raises WireError naming the bad part."""
    if len(body) < _REQUEST.size:
        raise WireError(f"body of {len(body)} bytes is shorter than the {_REQUEST.size}-byte header")
    magic, _flags, ef_search, n, dim, k, timeout_ms, exclude_bytes = _REQUEST.unpack_from(body)
    if magic not in (REQUEST_MAGIC, REQUEST_MAGIC_JOINED):
        raise WireError(f"bad magic {magic!r}: not a shardrec search body")
    if not 1 <= n <= max_queries:
        raise WireError(f"query count {n} must be in 1..{max_queries}")
    if dim != dimension:
        raise WireError(f"query dimension {dim} differs from the index dimension {dimension}")
    if not 1 <= k <= max_k:
        raise WireError(f"k {k} must be in 1..{max_k}")
    vectors_end = _REQUEST.size + 4 * n * dim
    if len(body) < vectors_end:
        raise WireError(f"body is {len(body)} bytes, shorter than its {n} x {dim} queries")
    queries = np.frombuffer(body, dtype="<f4", count=n * dim, offset=_REQUEST.size).reshape(n, dim)
    if not np.isfinite(queries).all():
        raise WireError("queries contain NaN or inf")
    exclude: list[list[str]] | None = None
    if exclude_bytes:
        if magic == REQUEST_MAGIC_JOINED:
            exclude = _joined_exclude(body, vectors_end, n, exclude_bytes)
        else:
            exclude = _prefixed_exclude(body, vectors_end, n, exclude_bytes)
    elif len(body) != vectors_end:
        raise WireError(f"body is {len(body)} bytes, the header announces {vectors_end}")
    return SearchRequest(queries, k, timeout_ms, exclude, ef_search)


def _prefixed_exclude(body: bytes, start: int, n: int, exclude_bytes: int) -> list[list[str]]:
    if len(body) < start + 4 * n:
        raise WireError("body ends inside the exclude counts")
    counts = np.frombuffer(body, dtype="<u4", count=n, offset=start)
    total = int(counts.sum(dtype=np.uint64))
    blob_start = start + 4 * n + 4 * total
    if len(body) != blob_start + exclude_bytes:
        raise WireError(
            f"body is {len(body)} bytes, the header and exclude counts announce {blob_start + exclude_bytes}"
        )
    lengths = np.frombuffer(body, dtype="<u4", count=total, offset=start + 4 * n)
    ends = np.cumsum(lengths, dtype=np.uint64)
    if total and int(ends[-1]) != exclude_bytes:
        raise WireError(f"excluded id lengths add up to {int(ends[-1])}, not {exclude_bytes} bytes")
    try:
        flat = [
            body[blob_start + a : blob_start + b].decode("utf-8")
            for a, b in zip([0, *ends[:-1].tolist()], ends.tolist(), strict=True)
        ]
    except UnicodeDecodeError as exc:
        raise WireError("excluded ids are not valid UTF-8") from exc
    return _per_query(flat, counts)


def _joined_exclude(body: bytes, start: int, n: int, exclude_bytes: int) -> list[list[str]]:
    if len(body) != start + 4 * n + exclude_bytes:
        raise WireError(f"body is {len(body)} bytes, the header announces {start + 4 * n + exclude_bytes}")
    counts = np.frombuffer(body, dtype="<u4", count=n, offset=start)
    try:
        flat = body[start + 4 * n :].decode("utf-8").split("\n")
    except UnicodeDecodeError as exc:
        raise WireError("excluded ids are not valid UTF-8") from exc
    if int(counts.sum()) != len(flat):
        raise WireError(f"exclude counts add up to {int(counts.sum())}, but {len(flat)} ids were sent")
    return _per_query(flat, counts)


def _per_query(flat: list[str], counts: npt.NDArray[np.uint32]) -> list[list[str]]:
    exclude = []
    start = 0
    for count in counts.tolist():
        exclude.append(flat[start : start + count])
        start += count
    return exclude


def encode_answer(  # noqa: PLR0917 - one positional per block of the format
    shard: int,
    version: bytes,
    layout: bytes,
    counts: npt.NDArray[np.int64],
    scores: Floats,
    ids: npt.NDArray[np.bytes_],
    ascii_ids: bool,
) -> bytes:
    """`ids` is an (n, k) fixed-width bytes array (dtype S<width>)."""
    n, k = scores.shape
    width = ids.dtype.itemsize
    names = version + layout
    padding = b"\0" * (-len(names) % 4)
    header = _ANSWER.pack(
        ANSWER_MAGIC, FLAG_ASCII_IDS if ascii_ids else 0, shard, n, k, width, len(version), len(layout)
    )
    return b"".join(
        (
            header,
            names,
            padding,
            counts.astype("<u4").tobytes(),
            np.ascontiguousarray(scores, dtype="<f4").tobytes(),
            np.ascontiguousarray(ids).tobytes(),
        )
    )


@dataclass(frozen=True)
class DecodedAnswer:
    shard: int
    version: str
    layout: str
    counts: npt.NDArray[np.uint32]
    scores: Floats
    ids: npt.NDArray[np.str_]


def decode_answer(body: bytes) -> DecodedAnswer:
    if len(body) < _ANSWER.size:
        raise WireError(f"answer of {len(body)} bytes is shorter than its header")
    magic, flags, shard, n, k, width, version_len, layout_len = _ANSWER.unpack_from(body)
    if magic != ANSWER_MAGIC:
        raise WireError(f"bad answer magic {magic!r}")
    offset = _ANSWER.size
    version = body[offset : offset + version_len].decode("utf-8")
    layout = body[offset + version_len : offset + version_len + layout_len].decode("utf-8")
    offset += version_len + layout_len
    offset += -offset % 4
    expected = offset + 4 * n + 4 * n * k + width * n * k
    if len(body) != expected:
        raise WireError(f"answer is {len(body)} bytes, its header announces {expected}")
    counts = np.frombuffer(body, dtype="<u4", count=n, offset=offset)
    offset += 4 * n
    scores = np.frombuffer(body, dtype="<f4", count=n * k, offset=offset).reshape(n, k)
    offset += 4 * n * k
    raw = np.frombuffer(body, dtype=f"S{max(width, 1)}", count=n * k, offset=offset).reshape(n, k)
    if flags & FLAG_ASCII_IDS:
        ids = ascii_to_str(raw)
    else:
        ids = np.array([[item.decode("utf-8") for item in row] for row in raw.tolist()], dtype=str)
        ids = ids.reshape(n, k)
    return DecodedAnswer(shard, version, layout, counts, scores, ids)


def ascii_to_str(raw: npt.NDArray[np.bytes_]) -> npt.NDArray[np.str_]:
    """`raw.astype(str)` for ASCII bytes, by widening each byte to a UCS-4 code unit: a fraction
    of the cost of numpy's per-element decode. Non-ASCII bytes fail as that decode would."""
    width = raw.dtype.itemsize
    octets = raw.view(np.uint8).reshape(*raw.shape, width)
    if octets.size and int(octets.max()) >= 0x80:
        raise WireError("ids flagged ASCII hold non-ASCII bytes")
    wide = np.empty((*raw.shape, width), dtype=np.uint32)
    wide[...] = octets
    return wide.view(f"U{width}").reshape(raw.shape)
