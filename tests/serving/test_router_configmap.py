"""The ConfigMap topology source against a small fake of the Kubernetes API (list + watch of one
ConfigMap), driven through the real `kubernetes` client: initial list, MODIFIED events, a bad
document reported while the good one stays, and a watch that ends and is resumed by a new list."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from shardrec.api.topology import TOPOLOGY_CONFIGMAP_KEY, Topology
from shardrec.serving.router.topology_source import ConfigMapTopologySource

kubernetes = pytest.importorskip("kubernetes", reason="needs the kubernetes client")

NAMESPACE, NAME = "shop", "recs-topology"


def topology(revision: int) -> str:
    return json.dumps(
        {
            "revision": revision,
            "active": {
                "layout": f"L{revision}",
                "version": f"v{revision}",
                "shards": 1,
                "dimension": 4,
                "metric": "ip",
                "artifact_dir": f"/layouts/L{revision}",
                "endpoints": [{"shard": 0, "replicas": [{"name": "r0", "url": "http://10.0.0.1:9100"}]}],
            },
        }
    )


class FakeApi:
    """One ConfigMap; watches stream its changes and end after `watch_limit_s`."""

    def __init__(self) -> None:
        self.version = 1
        self.data: dict[str, str] = {TOPOLOGY_CONFIGMAP_KEY: topology(1)}
        self.changed = threading.Condition()
        self.lists = 0
        self.watch_limit_s = 5.0

    def update(self, data: dict[str, str]) -> None:
        with self.changed:
            self.version += 1
            self.data = data
            self.changed.notify_all()

    def object(self) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": NAME, "namespace": NAMESPACE, "resourceVersion": str(self.version)},
            "data": self.data,
        }


def serve(api: FakeApi) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            query = parse_qs(url.query)
            assert url.path == f"/api/v1/namespaces/{NAMESPACE}/configmaps"
            assert query["fieldSelector"] == [f"metadata.name={NAME}"]
            if query.get("watch") != ["true"]:
                api.lists += 1
                body = json.dumps(
                    {
                        "apiVersion": "v1",
                        "kind": "ConfigMapList",
                        "metadata": {"resourceVersion": str(api.version)},
                        "items": [api.object()],
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            seen = int(query["resourceVersion"][0])
            deadline = threading.Event()
            threading.Timer(api.watch_limit_s, deadline.set).start()
            while not deadline.is_set():
                with api.changed:
                    api.changed.wait(0.05)
                    if api.version == seen:
                        continue
                    seen = api.version
                    event = {"type": "MODIFIED", "object": api.object()}
                try:
                    self.wfile.write(json.dumps(event).encode() + b"\n")
                    self.wfile.flush()
                except OSError:
                    return
            self.close_connection = True

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def fake_api() -> Iterator[tuple[FakeApi, str]]:
    api = FakeApi()
    server = serve(api)
    try:
        yield api, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


async def until(predicate: Any, limit_s: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + limit_s
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


def test_configmap_source_follows_the_watch_and_reports_bad_documents(fake_api: tuple[FakeApi, str]) -> None:
    api, url = fake_api
    api.watch_limit_s = 1.0  # watches end quickly, so the source must list and watch again
    configuration = kubernetes.client.Configuration()
    configuration.host = url
    source = ConfigMapTopologySource(NAMESPACE, NAME, api_client=kubernetes.client.ApiClient(configuration))
    applied: list[Topology] = []
    errors: list[str] = []

    async def apply(item: Topology) -> None:
        applied.append(item)

    async def scenario() -> None:
        task = asyncio.create_task(source.watch(apply, errors.append))
        await until(lambda: [t.revision for t in applied][:1] == [1])
        api.update({TOPOLOGY_CONFIGMAP_KEY: topology(2)})
        await until(lambda: applied[-1].revision == 2)
        api.update({TOPOLOGY_CONFIGMAP_KEY: "{broken"})
        await until(lambda: any("invalid topology" in e for e in errors))
        api.update({"unrelated": "x"})
        await until(lambda: any("has no key 'topology.json'" in e for e in errors))
        await until(lambda: api.lists >= 2)  # the first watch ended; the source listed again
        api.update({TOPOLOGY_CONFIGMAP_KEY: topology(3)})
        await until(lambda: applied[-1].revision == 3)
        task.cancel()

    asyncio.run(scenario())
    assert {t.revision for t in applied} == {1, 2, 3}
    assert all("configmap shop/recs-topology" in e for e in errors)
