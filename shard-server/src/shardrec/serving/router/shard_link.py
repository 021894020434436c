"""The one link to the shard client: `shardrec.serving.shard.client.ShardClient`.

Kept apart so the rest of the router depends on the protocol in `dispatch`, and tests can hand the
manager other clients through `ManagerDeps`.
"""

from __future__ import annotations

import ssl

from shardrec.serving.credentials import TokenFile
from shardrec.serving.router.manager import ManagerDeps
from shardrec.serving.router.shard_protocol import ErrorKinds, ShardClientLike
from shardrec.serving.shard.client import (
    NO_WRITE_LOG,
    SequenceGap,
    ShardClient,
    ShardRejected,
    ShardUnavailable,
)


def shard_client_deps(
    token: str | TokenFile | None = None,
    tls: ssl.SSLContext | None = None,
    tls_server_name: str | None = None,
) -> ManagerDeps:
    """`tls`: the context for `https://` shard URLs (the cluster's CA); `http://` URLs stay plain
    (layouts started before TLS, during an upgrade). An `https://` URL without a context fails
    that replica's requests as unavailable. `tls_server_name`: the name certificates must hold
    (None: each URL's host)."""

    def make_client(base_url: str) -> ShardClientLike:
        if not base_url.startswith("https://"):
            return ShardClient(base_url, token=token)
        return ShardClient(base_url, token=token, tls=tls, tls_server_name=tls_server_name)

    return ManagerDeps(
        client_factory=make_client,
        errors=ErrorKinds(
            unavailable=ShardUnavailable, rejected=ShardRejected, gap=SequenceGap, no_write_log=NO_WRITE_LOG
        ),
    )
