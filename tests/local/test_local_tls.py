"""The local runtime serves router -> shard over TLS by default: certificates from the cluster's
own CA in its state folder, https:// shard URLs in the topology, answers through the router, and
shards that refuse plain HTTP and certificates from anyone else's CA."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from shardrec.serving.tls import client_context
from shardrec.tools.local.ports import free_port
from tests.local.test_local_cluster import _manifest, _recctl, _write_embeddings

pytestmark = pytest.mark.integration


@pytest.fixture
def tls_cluster(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    _write_embeddings(tmp_path / "emb-v1", 1)
    manifest = tmp_path / "cluster.yaml"
    manifest.write_text(yaml.safe_dump(_manifest(tmp_path / "emb-v1", "v1", 2)))
    state = tmp_path / "state"
    port = free_port()
    _recctl(
        "up", "-f", str(manifest), "--state-dir", str(state), "--port", str(port), "--detach", "--wait", "90"
    )
    try:
        yield state, f"http://127.0.0.1:{port}"
    finally:
        _recctl("down", "--state-dir", str(state), check=False)


def test_the_local_runtime_serves_router_to_shard_over_tls(tls_cluster: tuple[Path, str]) -> None:
    state, router = tls_cluster
    tls = state / "tls"
    for key in ("ca.key", "shard.key"):
        assert stat.S_IMODE((tls / key).stat().st_mode) == 0o600, key
    topology = json.loads((state / "topology.json").read_text())
    urls = [r["url"] for s in topology["active"]["endpoints"] for r in s["replicas"]]
    assert urls and all(url.startswith("https://127.0.0.1:") for url in urls), urls

    answer = httpx.post(f"{router}/v1/recommend", json={"user_id": "user-1", "k": 5}, timeout=10)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["shards"]["answered"] == body["shards"]["total"] == 2 and not body["partial"]

    shard = urls[0]
    ok = httpx.get(f"{shard}/readyz", verify=client_context(tls / "ca.pem"), timeout=5)
    assert ok.status_code == 200
    with pytest.raises(httpx.TransportError):  # plain HTTP on the TLS port gets no HTTP answer
        httpx.get(shard.replace("https://", "http://") + "/readyz", timeout=5)
    # The system CAs do not know the cluster's CA.
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{shard}/readyz", timeout=5)
