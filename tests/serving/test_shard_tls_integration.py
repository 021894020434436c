"""TLS and rotated tokens on a real shard process (127.0.0.1, random port): the handshake succeeds
with the cluster's CA and is refused with another CA or without TLS; a token file rotated under a
running shard (accept old+new, then new only) is picked up without a restart."""

from __future__ import annotations

import asyncio
import signal
import ssl
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import pytest

from shardrec.api import pki
from shardrec.serving.index.build import build_layout
from shardrec.serving.index.embeddings import write_embeddings_dir
from shardrec.serving.index.synthetic import clustered
from shardrec.serving.shard.client import ShardClient, ShardRejected, ShardUnavailable
from shardrec.serving.shard.main import GRACEFUL_SHUTDOWN_S
from shardrec.serving.tls import client_context
from tests.serving.test_shard_server import Shard

pytestmark = pytest.mark.integration
DIM = 8


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tls-layout")
    source = write_embeddings_dir(
        root / "e", clustered(200, DIM, clusters=4, seed=3), [f"i{i}" for i in range(200)]
    )
    build_layout(source, root / "v1", version="v1", shards=1, progress=False)
    return root / "v1"


@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pki")
    now = datetime.now(UTC)
    ca = pki.new_ca("shardrec test cluster", now)
    server = pki.new_server_cert(ca, ["localhost"], now, ip_addresses=["127.0.0.1"])
    (root / "ca.pem").write_bytes(ca.cert_pem)
    (root / "tls.crt").write_bytes(server.cert_pem)
    (root / "tls.key").write_bytes(server.key_pem)
    (root / "other-ca.pem").write_bytes(pki.new_ca("another cluster", now).cert_pem)
    return root


def _wait_ready(url: str, verify: ssl.SSLContext | bool, shard: Shard) -> None:
    for _ in range(300):
        try:
            if httpx.get(f"{url}/readyz", verify=verify).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert shard.process.poll() is None, shard.process.stderr.read() if shard.process.stderr else ""
        time.sleep(0.05)
    raise AssertionError("shard never became ready")


@pytest.fixture(scope="module")
def tls_shard(layout: Path, pki_dir: Path) -> Iterator[Shard]:
    shard = Shard(
        "--layout-dir", str(layout), "--shard", "0",
        "--tls-cert", str(pki_dir / "tls.crt"), "--tls-key", str(pki_dir / "tls.key"),
    )  # fmt: skip
    try:
        assert shard.url.startswith("https://127.0.0.1:"), shard.url
        _wait_ready(shard.url, client_context(pki_dir / "ca.pem"), shard)
        yield shard
    finally:
        shard.stop()


async def _search(url: str, context: ssl.SSLContext | None) -> int:
    client = ShardClient(url, tls=context)
    try:
        answer = await client.search(np.ones((2, DIM), dtype=np.float32), 5, timeout_s=5.0)
        return len(answer)
    finally:
        await client.close()


def test_search_over_tls_with_the_clusters_ca(tls_shard: Shard, pki_dir: Path) -> None:
    assert asyncio.run(_search(tls_shard.url, client_context(pki_dir / "ca.pem"))) == 2


def test_a_certificate_from_another_ca_is_refused(tls_shard: Shard, pki_dir: Path) -> None:
    with pytest.raises(ShardUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
        asyncio.run(_search(tls_shard.url, client_context(pki_dir / "other-ca.pem")))


def test_a_name_the_certificate_does_not_hold_is_refused(tls_shard: Shard, pki_dir: Path) -> None:
    async def wrong_name() -> None:
        client = ShardClient(
            tls_shard.url, tls=client_context(pki_dir / "ca.pem"), tls_server_name="evil.example"
        )
        try:
            await client.search(np.ones((1, DIM), dtype=np.float32), 5, timeout_s=5.0)
        finally:
            await client.close()

    with pytest.raises(ShardUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
        asyncio.run(wrong_name())


def test_plain_http_to_a_tls_shard_gets_no_answer(tls_shard: Shard) -> None:
    plain = tls_shard.url.replace("https://", "http://")
    with pytest.raises(ShardUnavailable):
        asyncio.run(_search(plain, None))


def test_a_rotated_token_file_is_picked_up_without_a_restart(layout: Path, tmp_path: Path) -> None:
    accepted = tmp_path / "accepted"
    accepted.write_text("old\n")
    shard = Shard("--layout-dir", str(layout), "--shard", "0", "--admin-token-file", str(accepted))
    try:
        _wait_ready(shard.url, False, shard)

        def status(token: str) -> int:
            return httpx.post(
                f"{shard.url}/v1/items/vectors",
                json={"item_ids": ["i1"]},
                headers={"Authorization": f"Bearer {token}"},
            ).status_code

        assert (status("old"), status("new")) == (200, 401)
        accepted.write_text("old\nnew\n")  # the operator's "accepting" phase
        _eventually(lambda: status("new") == 200)
        assert status("old") == 200
        accepted.write_text("new\n")  # the old token is dropped
        _eventually(lambda: status("old") == 401)
        assert status("new") == 200
    finally:
        shard.stop()


def test_the_router_side_sends_the_token_its_file_says(layout: Path, tmp_path: Path) -> None:
    """ShardClient with a TokenFile: what it sends follows the file (the router's `send` key)."""
    from shardrec.serving.credentials import TokenFile

    accepted, send = tmp_path / "accepted", tmp_path / "send"
    accepted.write_text("a\nb\n")
    send.write_text("a\n")
    shard = Shard("--layout-dir", str(layout), "--shard", "0", "--admin-token-file", str(accepted))

    async def vectors(tokens: TokenFile) -> int:
        client = ShardClient(shard.url, token=tokens)
        try:
            return len((await client.item_vectors(["i1"], timeout_s=5.0)).vectors)
        finally:
            await client.close()

    try:
        _wait_ready(shard.url, False, shard)
        tokens = TokenFile(send, recheck_s=0.0)
        assert asyncio.run(vectors(tokens)) == 1
        send.write_text("b\n")
        assert asyncio.run(vectors(tokens)) == 1
        send.write_text("c\n")
        with pytest.raises(ShardRejected, match="401"):
            asyncio.run(vectors(tokens))
    finally:
        shard.stop()


def _eventually(check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError("condition not reached")


def test_a_scheme_the_client_is_not_set_up_for_costs_the_replica_not_the_router(pki_dir: Path) -> None:
    """An https:// shard URL reaching a router without --shard-ca (or a CA with an http:// URL):
    the client is still created, and every request fails as unavailable, naming the cause."""
    with pytest.raises(ShardUnavailable, match="needs a CA"):
        asyncio.run(_search("https://127.0.0.1:9", None))
    with pytest.raises(ShardUnavailable, match="needs a CA"):
        asyncio.run(_search("http://127.0.0.1:9", client_context(pki_dir / "ca.pem")))


def test_a_renewed_certificate_is_served_without_a_restart(layout: Path, tmp_path: Path) -> None:
    """The operator renews into the mounted files; the running shard serves the new pair to new
    connections (here the new pair comes from another CA, so which one is served is visible)."""
    now = datetime.now(UTC)
    first_ca, second_ca = pki.new_ca("first", now), pki.new_ca("second", now)
    first = pki.new_server_cert(first_ca, ["localhost"], now, ip_addresses=["127.0.0.1"])
    second = pki.new_server_cert(second_ca, ["localhost"], now, ip_addresses=["127.0.0.1"])
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.write_bytes(first.cert_pem)
    key.write_bytes(first.key_pem)
    for name, ca in (("first.pem", first_ca), ("second.pem", second_ca)):
        (tmp_path / name).write_bytes(ca.cert_pem)
    shard = Shard("--layout-dir", str(layout), "--shard", "0", "--tls-cert", str(cert), "--tls-key", str(key))
    try:
        _wait_ready(shard.url, client_context(tmp_path / "first.pem"), shard)
        with pytest.raises(ShardUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
            asyncio.run(_search(shard.url, client_context(tmp_path / "second.pem")))
        key.write_bytes(second.key_pem)
        cert.write_bytes(second.cert_pem)

        def serves_second() -> bool:
            try:
                return asyncio.run(_search(shard.url, client_context(tmp_path / "second.pem"))) == 2
            except ShardUnavailable:
                return False

        _eventually(serves_second)
    finally:
        shard.stop()


def test_sigterm_stops_the_shard_within_its_bound_while_a_tls_client_sits_idle(
    layout: Path, pki_dir: Path
) -> None:
    """A TLS connection the server closes waits for the peer's close_notify; a client that never
    reads again (a stuck or partitioned router) must not hold the shard past its graceful bound
    (asyncio's TLS shutdown timeout alone is 30 s, and the kubelet's grace period would end it
    with SIGKILL)."""
    shard = Shard(
        "--layout-dir", str(layout), "--shard", "0",
        "--tls-cert", str(pki_dir / "tls.crt"), "--tls-key", str(pki_dir / "tls.key"),
    )  # fmt: skip
    idle = httpx.Client(verify=client_context(pki_dir / "ca.pem"))
    try:
        _wait_ready(shard.url, client_context(pki_dir / "ca.pem"), shard)
        assert idle.get(f"{shard.url}/readyz").status_code == 200  # a kept-alive connection, then silence
        started = time.monotonic()
        shard.process.send_signal(signal.SIGTERM)
        shard.process.wait(GRACEFUL_SHUTDOWN_S + 20)
        took = time.monotonic() - started
        assert took < GRACEFUL_SHUTDOWN_S + 5, f"the shard took {took:.1f} s to stop"
        assert shard.process.returncode in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it handled
    finally:
        idle.close()
        shard.stop()
