"""The shard server as a real process (uvicorn on 127.0.0.1, random port) with its client."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from shardrec.serving.index.build import build_layout
from shardrec.serving.index.embeddings import write_embeddings_dir
from shardrec.serving.index.shard_index import ShardIndex
from shardrec.serving.index.synthetic import clustered
from shardrec.serving.shard.client import ShardClient, ShardRejected, ShardUnavailable
from shardrec.serving.shard.wire import REQUEST_CONTENT_TYPE, encode_request

pytestmark = pytest.mark.integration
DIM = 8


@pytest.fixture(scope="module")
def layouts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("layouts")
    items = clustered(600, DIM, clusters=8, seed=7)
    sources = {
        "v1": write_embeddings_dir(root / "e1", items, [f"a{i}" for i in range(600)]),
        "v2": write_embeddings_dir(root / "e2", items[:500], [f"b{i}" for i in range(500)]),
        "d16": write_embeddings_dir(root / "e3", clustered(60, 16, seed=1), [f"c{i}" for i in range(60)]),
    }
    for name, source in sources.items():
        build_layout(source, root / name, version=name, shards=2, progress=False)
    return {name: root / name for name in sources}


class Shard:
    def __init__(self, *args: str) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "shardrec.serving.shard.main",
                "--port",
                "0",
                "--search-threads",
                "2",
                *args,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().decode()
        assert line.startswith("shardrec-shard listening on "), line
        self.url = line.split()[-1]

    def wait_ready(self) -> None:
        for _ in range(200):
            if httpx.get(f"{self.url}/readyz").status_code == 200:
                return
            assert self.process.poll() is None, self.process.stderr.read() if self.process.stderr else ""
            time.sleep(0.05)
        raise AssertionError("shard never became ready")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def serving(layouts: dict[str, Path]) -> Iterator[Shard]:
    shard = Shard("--layout-dir", str(layouts["v1"]), "--shard", "0")
    try:
        shard.wait_ready()
        yield shard
    finally:
        shard.stop()


def _error(response: httpx.Response) -> dict[str, str]:
    error = response.json()["error"]
    assert set(error) == {"code", "message"} and error["message"]
    return error  # type: ignore[no-any-return]


def test_readyz_before_and_after_load(layouts: dict[str, Path]) -> None:
    shard = Shard()
    try:
        assert httpx.get(f"{shard.url}/healthz").json() == {"status": "ok"}
        before = httpx.get(f"{shard.url}/readyz")
        assert before.status_code == 503 and _error(before)["code"] == "not_ready"
        search = httpx.post(f"{shard.url}/v1/search/json", json={"queries": [[0.0] * DIM], "k": 3})
        assert search.status_code == 503 and _error(search)["code"] == "not_ready"
        missing_shard = httpx.post(f"{shard.url}/v1/admin/load", json={"layout_dir": str(layouts["v1"])})
        assert missing_shard.status_code == 400
        loaded = httpx.post(
            f"{shard.url}/v1/admin/load", json={"layout_dir": str(layouts["v1"]), "shard": 1, "wait": True}
        )
        assert loaded.status_code == 200, loaded.text
        after = httpx.get(f"{shard.url}/readyz")
        assert after.status_code == 200 and after.json()["version"] == "v1"
        info = httpx.get(f"{shard.url}/v1/info").json()["index"]
        assert (info["shard"], info["shards"], info["dimension"], info["metric"]) == (1, 2, DIM, "cosine")
    finally:
        shard.stop()


def test_search_equals_in_process_search(serving: Shard, layouts: dict[str, Path]) -> None:
    local = ShardIndex.load(layouts["v1"], 0)
    queries = clustered(16, DIM, clusters=8, seed=7)[:16] + np.float32(0.01)
    exclude = [[local.ids[i]] if i % 2 else [] for i in range(16)]

    async def remote() -> list:
        client = ShardClient(serving.url)
        try:
            return [await client.search(queries, 7, exclude), await client.search(queries[:1], 1)]
        finally:
            await client.close()

    answer, single = asyncio.run(remote())
    expected = local.search(queries, 7, exclude)
    assert (answer.version, answer.layout, answer.shard) == ("v1", "v1", 0)
    assert answer.ids.tolist() == [[local.ids[label] for label in row] for row in expected.labels.tolist()]
    np.testing.assert_array_equal(answer.scores, expected.scores)
    assert single.row(0)[0] == [local.ids[int(expected.labels[0, 0])]]
    as_json = httpx.post(
        f"{serving.url}/v1/search/json", json={"queries": queries.tolist(), "k": 7, "exclude": exclude}
    ).json()
    assert [[hit["item_id"] for hit in row] for row in as_json["results"]] == answer.ids.tolist()


def test_bad_requests_get_json_4xx(serving: Shard, layouts: dict[str, Path]) -> None:
    url = serving.url
    good = encode_request(np.ones((2, DIM), dtype=np.float32), 5, None, 0)
    binary = {"content-type": REQUEST_CONTENT_TYPE}
    nan_query = np.ones((1, DIM), dtype=np.float32)
    nan_query[0, 0] = np.nan
    cases = [
        ("POST", "/v1/search", {"content": good, "headers": {"content-type": "application/json"}}, 415),
        ("POST", "/v1/search", {"content": b"", "headers": binary}, 400),
        ("POST", "/v1/search", {"content": good[:-3], "headers": binary}, 400),
        ("POST", "/v1/search", {"content": b"JUNK" + good[4:], "headers": binary}, 400),
        (
            "POST",
            "/v1/search",
            {"content": encode_request(np.ones((1, 3), np.float32), 5, None, 0), "headers": binary},
            400,
        ),
        (
            "POST",
            "/v1/search",
            {"content": encode_request(np.ones((1, DIM), np.float32), 0, None, 0), "headers": binary},
            400,
        ),
        ("POST", "/v1/search", {"content": encode_request(nan_query, 5, None, 0), "headers": binary}, 400),
        (
            "POST",
            "/v1/search",
            {
                "content": encode_request(np.ones((1, DIM), np.float32), 5, [["x"]], 0)[:-1] + b"\xff",
                "headers": binary,
            },
            400,
        ),
        ("GET", "/v1/search", {}, 405),
        (
            "POST",
            "/v1/search/json",
            {"content": b"{not json", "headers": {"content-type": "application/json"}},
            422,
        ),
        ("POST", "/v1/search/json", {"json": {"queries": [[1.0, 2.0]], "k": 3}}, 400),
        ("POST", "/v1/search/json", {"json": {"queries": [], "k": 3}}, 422),
        ("POST", "/v1/search/json", {"json": {"queries": [[1.0] * DIM], "k": 0}}, 422),
        ("POST", "/v1/search/json", {"json": {"queries": [[1.0] * DIM], "k": 3, "exclude": [[], []]}}, 400),
        ("POST", "/v1/search/json", {"json": {"queries": [["x"] * DIM]}}, 422),
        ("POST", "/v1/search/json", {"json": {"queries": [[1.0] * DIM], "surprise": 1}}, 422),
        ("POST", "/v1/items/vectors", {"json": {"item_ids": []}}, 422),
        ("GET", "/no/such/path", {}, 404),
        ("DELETE", "/healthz", {}, 405),
        (
            "POST",
            "/v1/admin/load",
            {"json": {"layout_dir": str(layouts["v1"].parent / "missing"), "wait": True}},
            409,
        ),
        ("POST", "/v1/admin/load", {"json": {"layout_dir": str(layouts["d16"]), "wait": True}}, 409),
        (
            "POST",
            "/v1/admin/load",
            {"json": {"layout_dir": str(layouts["v2"]), "shard": 9, "wait": True}},
            409,
        ),
    ]
    for method, path, kwargs, status in cases:
        response = httpx.request(method, f"{url}{path}", **kwargs)  # type: ignore[arg-type]
        assert response.status_code == status, (path, kwargs, response.text)
        _error(response)
    assert httpx.get(f"{url}/readyz").json()["version"] == "v1"  # nothing above changed the index

    async def through_client() -> None:
        client = ShardClient(url)
        try:
            with pytest.raises(ShardRejected) as caught:
                await client.search(np.ones((1, 3), np.float32), 5)
            assert caught.value.status == 400 and "dimension 3" in str(caught.value)
        finally:
            await client.close()

    asyncio.run(through_client())
    metrics = httpx.get(f"{url}/metrics").text
    assert 'shardrec_shard_requests_total{route="search",status="400"}' in metrics


def test_swap_under_concurrent_requests(serving: Shard, layouts: dict[str, Path]) -> None:
    queries = clustered(32, DIM, clusters=8, seed=3)
    prefix = {"v1": "a", "v2": "b"}

    async def scenario() -> tuple[list[list[str]], int]:
        client = ShardClient(serving.url, max_connections=8)
        swapped = asyncio.Event()
        seen: list[list[str]] = [[] for _ in range(6)]

        async def worker(n: int) -> None:
            after_swap = 0
            for i in range(1500):  # bounded; stops 25 requests after the swap
                answer = await client.search(queries[(n + i) % 32 : (n + i) % 32 + 2], 5, timeout_s=5.0)
                ids = answer.ids.ravel().tolist()
                assert all(item.startswith(prefix[answer.version]) for item in ids), (answer.version, ids)
                seen[n].append(answer.version)
                if swapped.is_set():
                    after_swap += 1
                    if after_swap >= 25:
                        return

        async def swap() -> int:
            await asyncio.sleep(0.2)
            async with httpx.AsyncClient() as admin:
                response = await admin.post(
                    f"{serving.url}/v1/admin/load",
                    json={"layout_dir": str(layouts["v2"]), "wait": True},
                    timeout=30,
                )
            swapped.set()
            return response.status_code

        try:
            results = await asyncio.gather(*(worker(n) for n in range(6)), swap())
        finally:
            await client.close()
        return seen, results[-1]

    seen, status = asyncio.run(scenario())
    assert status == 200
    for versions in seen:
        assert versions[-1] == "v2"
        first_v2 = versions.index("v2")
        assert set(versions[first_v2:]) == {"v2"}  # never back to the old version
    assert sum(v.count("v1") for v in seen) > 0
    assert httpx.get(f"{serving.url}/readyz").json()["version"] == "v2"


def test_refuses_a_corrupt_layout_at_start(layouts: dict[str, Path], tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt"
    subprocess.run(["cp", "-r", str(layouts["v1"]), str(corrupt)], check=True)
    ids = corrupt / "shard-0001" / "ids.txt"
    ids.write_text(ids.read_text().replace("a", "z", 1))
    shard = Shard("--layout-dir", str(corrupt), "--shard", "1")
    try:
        assert shard.process.wait(30) == 2
        assert shard.process.stderr is not None
        err = shard.process.stderr.read().decode()
        assert "shard-0001/ids.txt: sha256 mismatch" in err
    finally:
        shard.stop()


def test_unreachable_or_silent_shard_is_unavailable() -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts connections in the kernel, never answers

    async def scenario() -> None:
        refused = ShardClient("http://127.0.0.1:9", connect_timeout_s=0.5)
        with pytest.raises(ShardUnavailable):
            await refused.search(np.ones((1, DIM), np.float32), 3, timeout_s=1.0)
        assert not await refused.ready()
        await refused.close()
        mute = ShardClient(f"http://127.0.0.1:{silent.getsockname()[1]}")
        with pytest.raises(ShardUnavailable, match=r"no answer within 0\.200s"):
            await mute.search(np.ones((1, DIM), np.float32), 3, timeout_s=0.2)
        await mute.close()

    try:
        uvloop_run(scenario())
    finally:
        silent.close()


def test_each_request_searches_with_the_ef_it_names(serving: Shard, layouts: dict[str, Path]) -> None:
    """ef 0 means the shard's default (--ef-search, 64 here); any other value is used as sent, and
    the answers equal an in-process search with that ef."""
    queries = clustered(8, DIM, clusters=4, seed=11)[:8] + np.float32(0.01)

    def ef_now() -> int:
        return int(httpx.get(f"{serving.url}/v1/info").json()["index"]["hnsw"]["ef_search"])

    async def remote(ef: int) -> list[list[str]]:
        client = ShardClient(serving.url)
        try:
            return (await client.search(queries, 5, None, ef_search=ef)).ids.tolist()  # type: ignore[no-any-return]
        finally:
            await client.close()

    for ef in (7, 0, 400):
        got = asyncio.run(remote(ef))
        assert ef_now() == (ef or 64)
        local = ShardIndex.load(layouts["v1"], 0, ef_search=ef or 64)
        assert got == [
            [local.ids[label] for label in row] for row in local.search(queries, 5).labels.tolist()
        ]


def test_info_and_item_vectors(serving: Shard) -> None:
    async def scenario() -> None:
        client = ShardClient(serving.url)
        info = await client.info()
        held = json.loads(json.dumps(info))["index"]
        assert held["version"] == "v1" and held["count"] > 0
        local = ShardIndex.load(Path(held["layout_dir"]), 0)
        vectors = await client.item_vectors([local.ids[3], "missing"])
        assert vectors.missing == ["missing"]
        np.testing.assert_allclose(vectors.vectors[local.ids[3]], local.index.get_items([3])[0], rtol=1e-6)
        await client.close()

    asyncio.run(scenario())


def test_client_pool_bounds_connections_and_survives_server_restart(layouts: dict[str, Path]) -> None:
    """More concurrent searches than connections queue for one; after the server restarts on the
    same port, the pooled (now dead) keep-alive connections are replaced transparently."""
    shards = [Shard("--layout-dir", str(layouts["v1"]), "--shard", "1")]
    port = shards[0].url.rsplit(":", 1)[1]
    queries = clustered(40, DIM, seed=9)

    async def burst(client: ShardClient) -> list[str]:
        answers = await asyncio.gather(*(client.search(queries[i : i + 1], 3) for i in range(40)))
        return [answer.version for answer in answers]

    async def run() -> tuple[list[str], int, list[str]]:
        client = ShardClient(shards[0].url, max_connections=3)
        try:
            before = await burst(client)
            opened = client._pool._open
            shards[0].stop()
            shards.append(Shard("--layout-dir", str(layouts["v1"]), "--shard", "1", "--port", port))
            await asyncio.to_thread(shards[-1].wait_ready)
            return before, opened, await burst(client)
        finally:
            await client.close()

    try:
        shards[0].wait_ready()
        before, opened, after = uvloop_run(run())
    finally:
        for shard in shards:
            shard.stop()
    assert before == ["v1"] * 40 and after == ["v1"] * 40
    assert opened <= 3


def uvloop_run(coroutine: Any) -> Any:
    """Run under uvloop (as the shard and router do): its transports differ from asyncio's."""
    import uvloop

    return uvloop.run(coroutine)


def test_prestop_fails_readiness_keeps_answering_and_returns_after_the_drain(
    layouts: dict[str, Path],
) -> None:
    """The preStop hook's endpoint: routers see /readyz fail at once, requests still in the pipe
    are answered, and the hook returns (so the kubelet sends SIGTERM) only after --drain-seconds."""
    shard = Shard("--layout-dir", str(layouts["v1"]), "--shard", "0", "--drain-seconds", "1.5")
    try:
        shard.wait_ready()
        with httpx.Client(timeout=10) as client:

            async def drain_and_probe() -> tuple[httpx.Response, float, list[int], list[int]]:
                async with httpx.AsyncClient(timeout=10) as hook_client:
                    started = time.monotonic()
                    hook = asyncio.create_task(hook_client.get(f"{shard.url}/prestop"))
                    await asyncio.sleep(0.3)
                    ready = [(await asyncio.to_thread(client.get, f"{shard.url}/readyz")).status_code]
                    search = await asyncio.to_thread(
                        client.post, f"{shard.url}/v1/search/json", json={"queries": [[0.1] * DIM], "k": 3}
                    )
                    answered = [search.status_code]
                    response = await hook
                    return response, time.monotonic() - started, ready, answered

            response, waited, ready, answered = asyncio.run(drain_and_probe())
            assert response.status_code == 200 and response.json() == {"status": "drained"}
            assert waited >= 1.4, f"the hook returned after {waited:.2f}s, before the drain"
            assert ready == [503] and answered == [200]
            still = client.get(f"{shard.url}/readyz")
            assert still.status_code == 503 and _error(still)["code"] == "draining"
    finally:
        shard.stop()


def test_admin_and_vector_routes_need_the_token_and_every_route_has_a_body_limit(
    layouts: dict[str, Path],
) -> None:
    token = "t0k3n-" + "x" * 20
    shard = Shard("--layout-dir", str(layouts["v1"]), "--shard", "0", "--admin-token", token)
    try:
        shard.wait_ready()
        url = shard.url
        good = {"authorization": f"Bearer {token}"}
        for wrong in ({}, {"authorization": "Bearer nope"}, {"authorization": f"Bearer {token}x"}):
            assert httpx.get(f"{url}/v1/admin/load", headers=wrong).status_code == 401
            load = httpx.post(f"{url}/v1/admin/load", json={"layout_dir": str(layouts["v2"])}, headers=wrong)
            assert load.status_code == 401 and _error(load)["code"] == "unauthorized"
            vectors = httpx.post(f"{url}/v1/items/vectors", json={"item_ids": ["a1"]}, headers=wrong)
            assert vectors.status_code == 401
        assert httpx.get(f"{url}/v1/admin/load", headers=good).status_code == 200
        vectors = httpx.post(f"{url}/v1/items/vectors", json={"item_ids": ["a1", "a2"]}, headers=good)
        assert vectors.status_code == 200

        async def through_client() -> None:
            client = ShardClient(url, token=token)
            try:
                found = await client.item_vectors(["a1", "a2"])
                assert set(found.vectors) | set(found.missing) == {"a1", "a2"}
            finally:
                await client.close()

        asyncio.run(through_client())
        # Body limits: declared and streamed; and the cost of one search (queries x k).
        huge = b'{"queries": [[' + b"1.0, " * (4 << 20) + b"1.0]]}"
        assert httpx.post(f"{url}/v1/search/json", content=huge).status_code == 413

        def chunks() -> Iterator[bytes]:
            yield b'{"queries": [['
            for _ in range(300):
                yield b"1.0, " * 15_000
            yield b"1.0]]}"

        streamed = httpx.post(f"{url}/v1/search/json", content=chunks())
        assert streamed.status_code == 413 and _error(streamed)["code"] == "body_too_large"
        costly = {"queries": [[0.5] * DIM] * 300, "k": 1000}
        refused = httpx.post(f"{url}/v1/search/json", json=costly)
        assert refused.status_code == 413 and _error(refused)["code"] == "batch_too_large"

        async def costly_binary() -> None:
            client = ShardClient(url)
            try:
                with pytest.raises(ShardRejected) as caught:
                    await client.search(np.ones((300, DIM), np.float32), 1000)
                assert caught.value.status == 413 and caught.value.code == "batch_too_large"
            finally:
                await client.close()

        asyncio.run(costly_binary())
        assert httpx.get(f"{url}/readyz").json()["version"] == "v1"
    finally:
        shard.stop()


def test_admin_load_takes_only_layouts_under_the_shards_layout_root(
    layouts: dict[str, Path], tmp_path: Path
) -> None:
    """Even with the token, a shard loads only layouts of its own store: by default the folder
    holding the layout it started with, else --layout-root. A layout built elsewhere (an
    attacker's, or a path escaping with '..' or through a symlink) is refused with 403."""
    token = "t0k3n-" + "y" * 20
    good = {"authorization": f"Bearer {token}"}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copytree(layouts["v2"], elsewhere / "v2")  # a valid layout, but not of this store
    (elsewhere / "link").symlink_to(elsewhere / "v2")
    (layouts["v1"].parent / "link-out").symlink_to(elsewhere / "v2")
    outside = [str(elsewhere / "v2"), str(elsewhere / "link"), str(layouts["v1"].parent / "link-out")]
    escaping = str(layouts["v1"] / ".." / ".." / elsewhere.name / "v2")
    shard = Shard("--layout-dir", str(layouts["v1"]), "--shard", "0", "--admin-token", token)
    try:
        shard.wait_ready()
        for path in [*outside, escaping, str(elsewhere / "v2" / ".." / ".." / "x")]:
            refused = httpx.post(f"{shard.url}/v1/admin/load", json={"layout_dir": path}, headers=good)
            assert refused.status_code == 403, (path, refused.text)
            assert _error(refused)["code"] == "layout_outside_store"
        inside = httpx.post(
            f"{shard.url}/v1/admin/load",
            json={"layout_dir": str(layouts["v2"]), "wait": True},
            headers=good,
        )
        assert inside.status_code == 200, inside.text
        assert httpx.get(f"{shard.url}/readyz").json()["version"] == "v2"
    finally:
        shard.stop()
        (layouts["v1"].parent / "link-out").unlink()
    rooted = Shard("--shard", "0", "--admin-token", token, "--layout-root", str(elsewhere))
    try:
        under_root = httpx.post(
            f"{rooted.url}/v1/admin/load",
            json={"layout_dir": str(layouts["v1"]), "wait": True},
            headers=good,
        )
        assert under_root.status_code == 403 and _error(under_root)["code"] == "layout_outside_store"
    finally:
        rooted.stop()
