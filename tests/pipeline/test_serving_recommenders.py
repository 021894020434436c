"""The two recommenders that go through the serving path: in-process shards and a router over HTTP."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shardrec.serving.index.embeddings import Embeddings, load_embeddings, write_embeddings_dir
from shardrec.tools.pipeline.metrics import recall_at_k
from shardrec.tools.pipeline.recommenders import ExactRecommender, UnknownUserError
from shardrec.tools.pipeline.router_client import RouterError, RouterRecommender
from shardrec.tools.pipeline.sharded import InProcessShardedRecommender


def _synthetic(tmp_path: Path) -> tuple[Path, Embeddings, dict[str, list[str]]]:
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(8, 16)).astype(np.float32)
    items = (centres[rng.integers(0, 8, 800)] + 0.3 * rng.normal(size=(800, 16))).astype(np.float32)
    users = (centres[rng.integers(0, 8, 40)] + 0.3 * rng.normal(size=(40, 16))).astype(np.float32)
    item_ids = [f"m{i}" for i in range(800)]
    user_ids = [f"u{i}" for i in range(40)]
    seen = {user: [item_ids[j] for j in rng.choice(800, 30, replace=False)] for user in user_ids}
    pairs = [(user, item) for user in user_ids for item in seen[user]]
    folder = write_embeddings_dir(
        tmp_path / "emb",
        items,
        item_ids,
        users=users,
        user_ids=user_ids,
        seen=pairs,
        metadata={"metric": "ip"},
    )
    return folder, load_embeddings(folder), seen


def test_in_process_shards_match_exact_and_honour_exclusions(tmp_path: Path) -> None:
    folder, embeddings, seen = _synthetic(tmp_path)
    sharded = InProcessShardedRecommender.build(
        folder, tmp_path / "layout", shards=3, metric="ip", ef_search=100, progress=False
    )
    exact = ExactRecommender(embeddings)
    recalls = []
    for user in embeddings.user_ids or []:
        exclude = set(seen[user])
        answer = sharded(user, 10, exclude)
        assert len(answer) == 10 and len(set(answer)) == 10
        assert not exclude & set(answer)
        recalls.append(recall_at_k(answer, exact(user, 10, exclude), 10))
    assert float(np.mean(recalls)) >= 0.95
    with pytest.raises(UnknownUserError):
        sharded("nobody", 10, set())


class _FakeRouter(BaseHTTPRequestHandler):
    """A tiny real HTTP server speaking the router's /v1/recommend contract."""

    requests: list[tuple[dict[str, Any], str | None]] = []
    busy_once: set[str] = set()

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append((body, self.headers.get("X-API-Key")))
        user = body.get("user_id")
        if self.path != "/v1/recommend" or user == "bad":
            self._reply(400, {"error": {"code": "bad_request", "message": "unknown field"}})
        elif user in self.busy_once:
            self.busy_once.discard(user)
            self._reply(503, {"error": {"code": "overloaded", "message": "retry"}}, retry_after="0")
        else:
            items = [{"item_id": f"i{n}", "score": 1.0 - n / 10} for n in range(body["k"] + 1)]
            self._reply(200, {"items": items, "index_version": "v7", "partial": user == "half"})

    def _reply(self, status: int, payload: dict[str, Any], retry_after: str | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if retry_after is not None:
            self.send_header("Retry-After", retry_after)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def fake_router() -> Iterator[str]:
    _FakeRouter.requests = []
    _FakeRouter.busy_once = {"busy"}
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeRouter)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_router_recommender_speaks_the_contract(fake_router: str) -> None:
    with RouterRecommender(fake_router, api_key="s3cret") as router:
        # The router answers k+1 items here; excluded ones are dropped and the list cut to k.
        assert router("u1", 3, {"i1"}) == ["i0", "i2", "i3"]
        assert router("busy", 2, set()) == ["i0", "i1"]
        assert router("half", 1, set()) == ["i0"]
        with pytest.raises(RouterError, match=r"/v1/recommend: HTTP 400: .*unknown field"):
            router("bad", 1, set())
        assert router.versions == {"v7": 3} and router.partial_answers == 1
    bodies = [body for body, _ in _FakeRouter.requests]
    assert bodies[0] == {"user_id": "u1", "k": 3}, "seen items are left to the router"
    assert [body["user_id"] for body in bodies] == ["u1", "busy", "busy", "half", "bad"]
    assert {key for _, key in _FakeRouter.requests} == {"s3cret"}


def test_router_recommender_can_send_exclusions_and_reports_connection_errors(fake_router: str) -> None:
    with RouterRecommender(fake_router, send_exclude=True) as router:
        router("u1", 2, {"i9", "i1"})
    assert _FakeRouter.requests[0] == ({"user_id": "u1", "k": 2, "exclude": ["i1", "i9"]}, None)
    with (
        RouterRecommender("http://127.0.0.1:9", timeout_s=2) as router,
        pytest.raises(RouterError, match=r"127\.0\.0\.1:9/v1/recommend: ConnectError"),
    ):
        router("u1", 2, set())
