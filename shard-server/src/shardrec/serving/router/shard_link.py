"""The one link to the shard client: `shardrec.serving.shard.client.ShardClient`.

Kept apart so the rest of the router depends on the protocol in `dispatch`, and tests can hand the
manager other clients through `ManagerDeps`.
"""

from __future__ import annotations

from shardrec.serving.router.manager import ManagerDeps
from shardrec.serving.router.shard_protocol import ErrorKinds, ShardClientLike
from shardrec.serving.shard.client import ShardClient, ShardRejected, ShardUnavailable


def shard_client_deps(token: str | None = None) -> ManagerDeps:
    def make_client(base_url: str) -> ShardClientLike:
        return ShardClient(base_url, token=token)

    return ManagerDeps(
        client_factory=make_client,
        errors=ErrorKinds(unavailable=ShardUnavailable, rejected=ShardRejected),
    )
