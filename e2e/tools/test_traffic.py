"""e2e/tools/traffic.py against a small local HTTP server on 127.0.0.1: every answer lands in exactly one
count, 503 headers are readable, a client that goes back to an older version is caught, and the load stops
at its bounds."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import ModuleType
from typing import Any

import pytest

# What the server answers, in order (the last one repeats): (status, body, headers).
Script = list[tuple[int, dict[str, Any], dict[str, str]]]


class _Handler(BaseHTTPRequestHandler):
    script: Script = []
    served = 0
    lock = threading.Lock()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        with _Handler.lock:
            status, body, headers = _Handler.script[min(_Handler.served, len(_Handler.script) - 1)]
            _Handler.served += 1
        raw = json.dumps(body).encode()
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", **headers}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[Any]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()

    def serve(script: Script) -> str:
        _Handler.script, _Handler.served = script, 0
        return f"http://127.0.0.1:{httpd.server_address[1]}/v1/recommend"

    yield serve
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def whole(version: str) -> tuple[int, dict[str, Any], dict[str, str]]:
    return 200, {"items": [], "index_version": version, "partial": False}, {}


def test_every_answer_is_counted_once(traffic_module: ModuleType, server: Any) -> None:
    t = traffic_module
    unavailable = (503, {"error": {"message": "shard 1 (deadline)"}}, {"X-Shardrec-Unavailable-Shards": "1"})
    partial: tuple[int, dict[str, Any], dict[str, str]] = (200, {"index_version": "v1", "partial": True}, {})
    url = server([whole("v1"), partial, unavailable, (500, {}, {}), whole("v2")])
    counts, problems = t.burst(
        url,
        [{"n": i} for i in range(6)],
        concurrency=1,
        check=lambda a: "v2 is wrong here" if a.version == "v2" else None,
    )
    assert counts.as_dict() == {"sent": 6, "ok": 3, "partial": 1, "unavailable": 1, "failed": 1, "wrong": 2}
    assert len(problems) == 4  # the 503, the 500 and both wrong answers
    answer = t.post(url.replace("/v1/recommend", "/x"), {})
    assert answer.status == 200 and answer.version == "v2"
    assert t.post("http://127.0.0.1:1/v1/recommend", {}, timeout=2).status == 0  # nothing listens there


def test_a_503_names_its_shard_in_a_header_of_any_case(traffic_module: ModuleType, server: Any) -> None:
    url = server([(503, {"error": {"message": "m"}}, {"x-shardrec-UNAVAILABLE-shards": "2"})])
    answer = traffic_module.post(url, {})
    assert answer.status == 503 and answer.header("X-Shardrec-Unavailable-Shards") == "2"


def test_a_client_that_sees_v1_again_after_v2_is_caught(traffic_module: ModuleType) -> None:
    client = traffic_module.Client()
    for version in ("v1", "v1", "v2", "v1"):
        client.record(traffic_module.Answer(200, {"index_version": version}), None, 0.0)
    assert client.versions == ["v1", "v2", "v1"]
    assert client.went_back(["v1", "v2"])
    forward = traffic_module.Client()
    for version in ("v1", "v2", "v2"):
        forward.record(traffic_module.Answer(200, {"index_version": version}), None, 0.0)
    assert forward.versions == ["v1", "v2"] and not forward.went_back(["v1", "v2"])


def test_steady_traffic_stops_at_its_request_bound(traffic_module: ModuleType, server: Any) -> None:
    url = server([whole("v1")])
    load = traffic_module.Traffic(url, lambda c, n: {"c": c, "n": n}, clients=2, rate=200.0, max_requests=5)
    load.start()
    load.wait_for("both clients done", lambda c: c.sent == 10, timeout=30)
    counts = load.stop()
    assert counts.sent == counts.ok == 10 and not load.running
    assert load.versions() == [["v1"], ["v1"]]
    assert len(load.latencies()) == 10 and all(s > 0 for s in load.latencies())
    assert load.latencies(since=load.elapsed() + 1) == []


def test_latencies_count_answered_requests_by_when_they_were_sent(traffic_module: ModuleType) -> None:
    client = traffic_module.Client()
    for at, status, seconds in ((0.5, 200, 0.01), (1.5, 200, 0.3), (2.5, 503, 0.9), (3.5, 0, 5.0)):
        body = {"index_version": "v1", "partial": at > 1} if status == 200 else {}
        client.record(traffic_module.Answer(status, body, seconds=seconds), None, at)
    assert client.answered == [(0.5, 0.01), (1.5, 0.3)]  # 200s only, whole or partial
    assert traffic_module.p99([]) == 0.0
    assert traffic_module.p99([0.001 * i for i in range(1, 101)]) == pytest.approx(0.1)  # nearest rank
    assert traffic_module.p99([0.001 * i for i in range(1, 1001)]) == pytest.approx(0.991)
