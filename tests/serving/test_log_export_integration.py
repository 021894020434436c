"""`recctl writes export` against a real shard process over TLS, the way it is run on Kubernetes
through a port-forward: the URL names 127.0.0.1 while the certificate names only the cluster's
shard DNS name, so `--tls-name` is what makes the verification pass (and without it, it fails)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import pytest

from shardrec.api import pki
from shardrec.serving.index.build import build_layout
from shardrec.serving.index.carry import read_carry
from shardrec.serving.index.embeddings import write_embeddings_dir
from shardrec.serving.index.synthetic import clustered
from shardrec.tools.cli.main import main
from tests.serving.test_shard_server import Shard

pytestmark = pytest.mark.integration
DIM = 8
NAME = "recs-shard.ml.svc"
TOKEN = "export-token"


@pytest.fixture(scope="module")
def tls_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pki")
    now = datetime.now(UTC)
    ca = pki.new_ca("shardrec export test", now)
    server = pki.new_server_cert(ca, [NAME], now)  # no IP address: only the cluster name
    (root / "ca.crt").write_bytes(ca.cert_pem)
    (root / "tls.crt").write_bytes(server.cert_pem)
    (root / "tls.key").write_bytes(server.key_pem)
    (root / "token").write_text(TOKEN + "\n")
    return root


@pytest.fixture(scope="module")
def leader(tmp_path_factory: pytest.TempPathFactory, tls_dir: Path) -> Iterator[Shard]:
    root = tmp_path_factory.mktemp("export-layout")
    source = write_embeddings_dir(
        root / "e", clustered(50, DIM, clusters=4, seed=3), [f"i{i}" for i in range(50)]
    )
    build_layout(source, root / "v1", version="v1", shards=1, progress=False)
    shard = Shard(
        "--layout-dir", str(root / "v1"), "--shard", "0", "--write-log-dir", str(root / "log"),
        "--admin-token", TOKEN, "--tls-cert", str(tls_dir / "tls.crt"), "--tls-key", str(tls_dir / "tls.key"),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{shard.url}/readyz", verify=False).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        ops = [{"op": "upsert", "id": f"new{n}", "vector": np.ones(DIM).tolist()} for n in range(3)]
        ops.append({"op": "delete", "id": "i1"})
        written = httpx.post(
            f"{shard.url}/v1/admin/writes",
            json={"ops": ops},
            headers={"authorization": f"Bearer {TOKEN}"},
            verify=False,
        )
        assert written.status_code == 200, written.text
        yield shard
    finally:
        shard.stop()


def test_export_over_tls_verifies_the_cluster_name_given_with_tls_name(
    leader: Shard, tls_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    common = [
        "writes",
        "export",
        "--layout",
        "l1",
        "--leader",
        leader.url,
        "--token-file",
        str(tls_dir / "token"),
    ]
    common += ["--ca", str(tls_dir / "ca.crt")]
    assert main([*common, "--out", str(tmp_path / "refused")]) == 1
    assert "CERTIFICATE_VERIFY_FAILED" in capsys.readouterr().err  # 127.0.0.1 is not in the certificate
    assert main([*common, "--tls-name", NAME, "--out", str(tmp_path / "carry")]) == 0
    assert "up to [4] (4 records)" in capsys.readouterr().out
    cut, logs = read_carry(tmp_path / "carry")
    assert cut.upto == (4,) and [(r.op, r.item_id) for r in logs[0]][-1] == ("delete", "i1")
