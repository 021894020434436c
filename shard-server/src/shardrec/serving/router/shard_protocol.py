"""What the router needs from the shard client (`shardrec.serving.shard.client`), as protocols.

`shardrec.serving.shard.client.ShardClient` satisfies them (checked by mypy in `shard_link`); tests hand
in-process replicas through the same protocols. The exception classes are injected too, so the
router's modules do not import the client.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt


class ShardAnswerLike(Protocol):
    """What the router reads of `shardrec.serving.shard.client.ShardAnswer`: row i answers query i; its
    first counts[i] entries are real, best first, the rest padding ("" ids, -inf scores)."""

    @property
    def ids(self) -> npt.NDArray[np.str_]: ...
    @property
    def scores(self) -> npt.NDArray[np.float32]: ...
    @property
    def counts(self) -> npt.NDArray[np.uint32]: ...
    @property
    def version(self) -> str: ...
    @property
    def layout(self) -> str: ...
    @property
    def shard(self) -> int: ...


class ItemVectorsLike(Protocol):
    """What the router reads of `shardrec.serving.shard.client.ItemVectors`."""

    @property
    def vectors(self) -> dict[str, npt.NDArray[np.float32]]: ...
    @property
    def version(self) -> str: ...
    @property
    def layout(self) -> str: ...
    @property
    def shard(self) -> int: ...


class ShardClientLike(Protocol):
    """The calls the router makes on `shardrec.serving.shard.client.ShardClient`."""

    async def search(
        self,
        queries: npt.NDArray[np.float32],
        k: int,
        exclude: Sequence[Sequence[str]] | None,
        timeout_s: float,
        *,
        ef_search: int = 0,
    ) -> ShardAnswerLike: ...

    async def item_vectors(self, item_ids: Sequence[str], timeout_s: float) -> ItemVectorsLike: ...

    async def ready(self, timeout_s: float) -> bool: ...

    async def close(self) -> None: ...


class WriterClientLike(Protocol):
    """The write-log calls the router makes on a replica (`ShardClient`'s lead_writes, replicate,
    read_log, and the applied sequence its last /readyz reported)."""

    applied_sequence: int | None

    async def lead_writes(self, ops: Sequence[dict[str, Any]], timeout_s: float = ...) -> list[int]: ...

    async def replicate(self, records: Sequence[dict[str, Any]], timeout_s: float = ...) -> int: ...

    async def read_log(
        self, after: int, limit: int = ..., timeout_s: float = ...
    ) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class ErrorKinds:
    """The shard client's exception classes (`ShardUnavailable`, `ShardRejected`), injected so this
    module stays testable."""

    unavailable: type[BaseException]
    rejected: type[BaseException]
    gap: type[BaseException] | None = None
    """A follower's refusal of records that do not follow its applied sequence (`.applied`)."""
    no_write_log: str = "no_write_log"
    """The `.code` of a `rejected` write whose shard keeps no write log: item writes are off for
    its layout (the shard client's `NO_WRITE_LOG`)."""
