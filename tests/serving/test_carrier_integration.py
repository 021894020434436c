"""The Kubernetes carrier against real shard processes on 127.0.0.1, over TLS with a bearer token:
an old layout of 2 shards (their leaders, with write logs) and a new one of 3 shards x 2 replicas,
built by `recctl index build --carry-dir` from the carry folder the carrier cut. Writes go on
while it forwards, the carrier is restarted mid-forwarding (it resumes from the progress on the
store and forwards nothing twice), the hand-over fences the old leaders (a write to one gets 503),
and afterwards every acknowledged write is on every new replica by id and every delete is absent.
The Kubernetes edge is a fake holding the annotations in memory (tests/serving/test_carrier.py).
Run with the carry store on a path (the PVC store) and on SeaweedFS (the object store).

Every loop is bounded in count and time; processes are stopped by their PID.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from shardrec.api import pki
from shardrec.api.carry import FINISH_REQUESTED_ANNOTATION, HAND_OVER_REQUESTED_ANNOTATION, CarrierConfig
from shardrec.serving.carry.carrier import Carrier, shard_client
from shardrec.serving.carry.forwarding import ShardCalls
from shardrec.serving.carry.store import CarryStore
from shardrec.serving.index.build import build_layout
from shardrec.serving.index.embeddings import write_embeddings_dir
from shardrec.serving.index.partitioning import shard_of
from shardrec.serving.index.synthetic import clustered
from shardrec.serving.storage.stores import S3Settings
from shardrec.tools.cli.main import main as recctl
from shardrec.tools.local.ports import free_port
from tests.serving.test_carrier import FakeKube

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

DIM = 8
ITEMS = 60
NAME = "demo-shards.ml.svc"
TOKEN = "carry-token"
START_TIMEOUT_S = 60.0
WRITES_DURING = 60
MAX_STEPS = 40


@dataclass
class Shard:
    name: str
    popen: subprocess.Popen[bytes]
    url: str


@dataclass
class Processes:
    tmp: Path
    tls: Path
    running: list[Shard] = field(default_factory=list)
    writers: list[Writer] = field(default_factory=list)

    def writer(self, leaders: list[str]) -> Writer:
        """A writer whose connections are closed before the shards are stopped: a TLS shard closing
        an idle connection waits for the peer's close_notify, which a client that never reads again
        does not send, so each leader it held would sit out the 10 s wait below."""
        writer = Writer(leaders)
        self.writers.append(writer)
        return writer

    def shard(self, name: str, layout: Path, shard: int, port: int) -> Shard:
        log = (self.tmp / f"{name}.log").open("wb")
        popen = subprocess.Popen(
            [
                sys.executable, "-m", "shardrec.serving.shard.main", "--layout-dir", str(layout),
                "--shard", str(shard), "--search-threads", "1",
                "--write-log-dir", str(self.tmp / "logs" / name),
                "--admin-token", TOKEN, "--tls-cert", str(self.tls / "tls.crt"),
                "--tls-key", str(self.tls / "tls.key"), "--host", "127.0.0.1", "--port", str(port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )  # fmt: skip
        log.close()
        process = Shard(name, popen, f"https://127.0.0.1:{port}")
        self.running.append(process)
        return process

    def stop(self) -> None:
        for writer in self.writers:
            writer.client.close()
        for process in self.running:
            if process.popen.poll() is None:
                os.kill(process.popen.pid, signal.SIGTERM)
        for process in self.running:
            try:
                process.popen.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(process.popen.pid, signal.SIGKILL)
                process.popen.wait(5)


def wait_ready(shard: Shard) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        assert shard.popen.poll() is None, f"{shard.name} exited; see its log"
        try:
            if httpx.get(f"{shard.url}/readyz", verify=False, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{shard.name} not ready within {START_TIMEOUT_S}s")


class Writer:
    """What the router does with a client's write: send it to the leader of the item's old shard.
    Keeps what was acknowledged (200), in order, as the expected item state."""

    def __init__(self, leaders: list[str]) -> None:
        self.leaders = leaders
        self.client = httpx.Client(verify=False, timeout=10)
        self.expected: dict[str, tuple[float, ...] | None] = {}
        self.refused: list[int] = []
        self.acknowledged = 0

    def write(self, item: str, vector: tuple[float, ...] | None) -> int:
        op: dict[str, Any] = (
            {"op": "upsert", "id": item, "vector": list(vector)} if vector else {"op": "delete", "id": item}
        )
        url = self.leaders[shard_of(item, len(self.leaders))] + "/v1/admin/writes"
        answer = self.client.post(url, json={"ops": [op]}, headers={"authorization": f"Bearer {TOKEN}"})
        if answer.status_code == 200:
            self.expected[item] = vector
            self.acknowledged += 1
        else:
            self.refused.append(answer.status_code)
        return answer.status_code


def vector(seed: int) -> tuple[float, ...]:
    return tuple(float(x) for x in np.random.default_rng(seed).normal(size=DIM).astype(np.float32))


@pytest.fixture(scope="module")
def tls_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("carrier-pki")
    now = datetime.now(UTC)
    ca = pki.new_ca("shardrec carrier test", now)
    server = pki.new_server_cert(ca, [NAME], now)  # the cluster name only: the carrier sends tls_name
    (root / "ca.crt").write_bytes(ca.cert_pem)
    (root / "tls.crt").write_bytes(server.cert_pem)
    (root / "tls.key").write_bytes(server.key_pem)
    (root / "token").write_text(TOKEN + "\n")
    return root


@pytest.fixture
def processes(tmp_path: Path, tls_dir: Path) -> Iterator[Processes]:
    running = Processes(tmp_path, tls_dir)
    try:
        yield running
    finally:
        running.stop()


@pytest.mark.parametrize("store_kind", ["path", "s3"])
def test_the_carrier_carries_every_acknowledged_write_into_the_new_layout(  # noqa: PLR0917 - fixtures
    store_kind: str,
    processes: Processes,
    tls_dir: Path,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings: S3Settings | None = None
    s3_flags: list[str] = []
    if store_kind == "s3":
        seaweed = request.getfixturevalue("seaweed")
        bucket = f"carry-{os.getpid()}"
        seaweed.create_bucket(bucket)
        for key, value in seaweed.client_env().items():
            monkeypatch.setenv(key, value)
        monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
        settings = S3Settings(endpoint=seaweed.endpoint, path_style=True)
        s3_flags = ["--s3-endpoint", seaweed.endpoint, "--s3-path-style"]
        carry_store = f"s3://{bucket}/store/carry/v2"
    else:
        carry_store = str(tmp_path / "store" / "carry" / "v2")

    ids = [f"i{n}" for n in range(ITEMS)]
    emb = write_embeddings_dir(tmp_path / "emb", clustered(ITEMS, DIM, clusters=4, seed=3), ids)
    build_layout(
        emb, tmp_path / "v1", version="v1", shards=2, metric="ip", m=8, ef_construction=32, progress=False
    )
    ports = [free_port() for _ in range(8)]  # distinct: the allocator never repeats one
    old = [processes.shard(f"old-{s}", tmp_path / "v1", s, ports[s]) for s in range(2)]
    for shard in old:
        wait_ready(shard)
    new_urls = [[f"https://127.0.0.1:{ports[2 + 2 * s + r]}" for r in range(2)] for s in range(3)]

    writer = processes.writer([shard.url for shard in old])  # closed by the fixture before the shards stop
    for n in range(20):
        assert writer.write(f"w{n}", vector(n)) == 200
    assert writer.write("i1", None) == 200 and writer.write("i2", None) == 200

    config = CarrierConfig(
        cluster="demo", from_layout="v1", from_shards=2, to_layout="v2", to_shards=3,
        old_leaders=[shard.url for shard in old], new_replicas=new_urls, carry_store=carry_store,
        prior_carry=None, token_file=str(tls_dir / "token"), ca_file=str(tls_dir / "ca.crt"),
        tls_name=NAME, deployment="demo-carry-v2", poll_seconds=0.05,
    )  # fmt: skip
    kube = FakeKube()
    with shard_client(config.ca_file) as client:
        calls = ShardCalls(client, TOKEN, tls_name=NAME)
        carrier = Carrier(config, CarryStore(carry_store, settings), calls, kube)
        carrier.step()  # the cut; the new replicas do not run yet: the pass waits
        cut = kube.last.cut
        assert cut is not None and sum(cut) == 22 and not kube.last.caught_up and kube.last.message == ""

        # the new layout's build folds the carry folder in, as the build Job does
        build = ["index", "build", "--embeddings", str(emb), "--out", str(tmp_path / "v2"), "--version", "v2",
                 "--shards", "3", "--metric", "ip", "--m", "8", "--ef-construction", "32", "--no-progress",
                 "--carry-dir", carry_store, *s3_flags]  # fmt: skip
        assert recctl(build) == 0
        new = [
            processes.shard(f"new-{s}-{r}", tmp_path / "v2", s, ports[2 + 2 * s + r])
            for s in range(3)
            for r in range(2)
        ]
        for shard in new:
            wait_ready(shard)

        # writes go on while the carrier forwards; it is restarted in the middle
        def keep_writing() -> None:
            for n in range(WRITES_DURING):
                item = f"d{n}" if n % 5 else f"w{n % 20}"  # new items, and updates of carried ones
                writer.write(item, vector(1000 + n) if n % 7 else None)
                time.sleep(0.01)

        during = threading.Thread(target=keep_writing)
        during.start()
        restarted_at: int | None = None
        for _ in range(MAX_STEPS):
            if restarted_at is None and writer.acknowledged >= sum(cut) + WRITES_DURING // 2:
                restarted_at = kube.last.forwarded  # a new process: the state comes from the store
                carrier = Carrier(config, CarryStore(carry_store, settings), calls, kube)
            carrier.step()
            if not during.is_alive() and restarted_at is not None:
                break
            time.sleep(0.05)
        during.join(30)
        assert not during.is_alive() and writer.refused == [] and restarted_at is not None
        carrier.step()
        assert kube.last.caught_up and kube.last.message == "", kube.last

        # the hand-over: the old leaders are fenced, the rest is forwarded
        assert writer.write("just-before", vector(7)) == 200
        kube.annotations[HAND_OVER_REQUESTED_ANNOTATION] = "gen-7"
        carrier.step()
        assert kube.last.handed_over == "gen-7", kube.last
        assert writer.write("too-late", vector(8)) == 503  # the router retries it on the new layout

        kube.annotations[FINISH_REQUESTED_ANNOTATION] = "fin"
        carrier.step()
        assert kube.last.done and kube.last.phase == "done"
        forwarded = kube.last.forwarded

        # nothing was forwarded twice: the new leaders logged exactly what the carrier counted
        leader_logs = [
            client.get(f"{urls[0]}/v1/admin/writes", params={"after": 0, "limit": 1},
                       headers={"authorization": f"Bearer {TOKEN}"}, extensions={"sni_hostname": NAME})
            for urls in new_urls
        ]  # fmt: skip
        assert sum(int(answer.json()["last_sequence"]) for answer in leader_logs) == forwarded
        assert forwarded == writer.acknowledged - sum(cut)  # every write after the cut, once
        assert restarted_at < forwarded  # the restart came while there was still more to forward

        # every acknowledged write on every new replica, by id; every delete absent
        expected = writer.expected
        for shard, urls in enumerate(new_urls):
            owned = sorted(item for item in {*expected, *ids} if shard_of(item, 3) == shard)
            for url in urls:
                answer = client.post(
                    f"{url}/v1/items/vectors", json={"item_ids": owned},
                    headers={"authorization": f"Bearer {TOKEN}"}, extensions={"sni_hostname": NAME},
                )  # fmt: skip
                assert answer.status_code == 200, answer.text
                body = answer.json()
                for item in owned:
                    wanted = expected.get(item, "source")
                    if wanted is None:
                        assert item in body["missing"], (url, item)
                    elif wanted != "source":
                        assert np.allclose(body["vectors"][item], wanted, atol=1e-5), (url, item)
                    else:
                        assert item in body["vectors"], (url, item)


RUN_WITH_A_FAKE_KUBE = """
import sys
from shardrec.serving.carry.__main__ import main

class Kube:
    def requests(self):
        from shardrec.serving.carry.kube import CarryRequests
        return CarryRequests()

    def report(self, progress):
        print("report", progress.phase, flush=True)

sys.exit(main(sys.argv[1:], kube=Kube()))
"""


def test_the_carrier_process_stops_cleanly_on_sigterm_and_refuses_a_bad_config(
    tmp_path: Path, tls_dir: Path
) -> None:
    port = free_port()  # nothing listens: every cut attempt fails and is retried
    config = CarrierConfig(
        cluster="demo", from_layout="v1", from_shards=1, to_layout="v2", to_shards=1,
        old_leaders=[f"https://127.0.0.1:{port}"], new_replicas=[[f"https://127.0.0.1:{port}"]],
        carry_store=str(tmp_path / "carry"), token_file=str(tls_dir / "token"),
        ca_file=str(tls_dir / "ca.crt"), deployment="demo-carry-v2", poll_seconds=0.1,
    )  # fmt: skip
    (tmp_path / "carry.json").write_text(config.model_dump_json())
    carrier = subprocess.Popen(
        [sys.executable, "-c", RUN_WITH_A_FAKE_KUBE, "--config", str(tmp_path / "carry.json")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert carrier.stdout is not None
        assert carrier.stdout.readline().decode().strip() == "report cutting"
        os.kill(carrier.pid, signal.SIGTERM)
        _, err = carrier.communicate(timeout=30)
    finally:
        if carrier.poll() is None:
            os.kill(carrier.pid, signal.SIGKILL)
            carrier.wait(5)
    assert carrier.returncode == 0, err
    assert b"cut:" in err and b"stopping after the current step" in err and b"carrier of v2 stops" in err

    (tmp_path / "bad.json").write_text('{"cluster": "demo"}')
    bad = subprocess.run(
        [sys.executable, "-c", RUN_WITH_A_FAKE_KUBE, "--config", str(tmp_path / "bad.json")],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 2 and b"cannot start" in bad.stderr
