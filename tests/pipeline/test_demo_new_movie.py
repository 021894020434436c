"""`recctl demo`'s new-movie step and its API key: a movie written while serving (PUT), user 42's
top 5 before, right after it and after its DELETE; the key file made once, private, and reused."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import httpx
import numpy as np

from shardrec.serving.index.embeddings import write_embeddings_dir
from shardrec.tools.cli.demo_cmd import (
    FOLD_IN_USER,
    NEW_MOVIE,
    cluster_manifest,
    demo_api_key,
    new_movie_lines,
    new_movie_vector,
)


class FakeRouter:
    """A router of five movies that holds the new one from its PUT to its DELETE."""

    def __init__(self) -> None:
        self.items = ["a", "b", "c", "d", "e"]
        self.calls: list[tuple[str, str]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls.append((request.method, request.url.path))
        assert request.headers.get("x-api-key") == "k"
        if request.method == "PUT":
            body = json.loads(request.content)
            assert len(body["vector"]) == 4 and body["metadata"]["title"]
            self.items = [NEW_MOVIE, *self.items]
            return httpx.Response(200, json={**self._ack(1), "acknowledged_by": 2, "ready_replicas": 2})
        if request.method == "DELETE":
            self.items.remove(NEW_MOVIE)
            return httpx.Response(200, json=self._ack(2))
        assert json.loads(request.content)["user_id"] == FOLD_IN_USER
        hits = [{"item_id": item, "score": 1.0} for item in self.items[:5]]
        return httpx.Response(200, json={"items": hits, "index_version": "v1"})

    @staticmethod
    def _ack(sequence: int) -> dict[str, object]:
        return {"shard": 1, "sequence": sequence, "token": f"L/1:{sequence}"}


def test_the_new_movie_enters_the_top_five_at_once_and_leaves_with_its_delete() -> None:
    router = FakeRouter()
    transport = httpx.MockTransport(router)
    with httpx.Client(transport=transport, base_url="http://router", headers={"x-api-key": "k"}) as client:
        lines = new_movie_lines(client, {"a": "Alpha"}, [0.1, 0.2, 0.3, 0.4])
    assert [method for method, _ in router.calls] == ["POST", "PUT", "POST", "DELETE", "POST"]
    assert ("PUT", f"/v1/items/{NEW_MOVIE}") in router.calls
    text = "\n".join(lines)
    assert "acknowledged by 2 of 2 replicas of shard 1 (token L/1:1); the delete as L/1:2" in text
    assert "in the top 5 at once: True; after its delete: False" in text
    assert lines[3].startswith("  Alpha") and "*A new movie" in lines[3]


def test_without_the_user_the_step_says_it_is_skipped() -> None:
    with httpx.Client(transport=httpx.MockTransport(FakeRouter()), base_url="http://router") as client:
        lines = new_movie_lines(client, {}, None)
    assert lines[-1] == f"  skipped: user {FOLD_IN_USER} is not in these embeddings"


def test_the_new_vector_points_at_the_user_and_is_as_long_as_the_longest_item(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    items = rng.normal(size=(20, 4)).astype(np.float32)
    users = rng.normal(size=(3, 4)).astype(np.float32)
    folder = write_embeddings_dir(
        tmp_path / "emb", items, [f"i{n}" for n in range(20)], users=users, user_ids=["1", FOLD_IN_USER, "7"]
    )
    vector = np.asarray(new_movie_vector(folder))
    user = users[1].astype(np.float64)
    assert np.isclose(np.linalg.norm(vector), np.linalg.norm(items, axis=1).max(), rtol=1e-5)
    assert np.isclose(vector @ user, np.linalg.norm(vector) * np.linalg.norm(user), rtol=1e-5)
    assert float(vector @ user) >= float((items @ user).max()) - 1e-4  # ranks first by inner product
    no_user = write_embeddings_dir(tmp_path / "no-user", items, [f"i{n}" for n in range(20)])
    assert new_movie_vector(no_user) is None


def test_the_api_key_file_is_private_reused_and_named_in_the_manifest(tmp_path: Path) -> None:
    path, key = demo_api_key(tmp_path / "data")
    assert path.read_text() == f"demo:{key} read,write\n" and len(key) >= 20
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert demo_api_key(tmp_path / "data") == (path, key)
    manifest = cluster_manifest(tmp_path / "emb", "v1", 2, 2, 8, api_keys_file=path)
    assert manifest["spec"]["auth"] == {"apiKeysFile": str(path.resolve())}
    assert "auth" not in cluster_manifest(tmp_path / "emb", "v1", 2, 2, 8)["spec"]
    assert "writes" not in manifest["spec"]  # off unless asked: the demo asks (below)
    with_writes = cluster_manifest(tmp_path / "emb", "v1", 2, 2, 8, api_keys_file=path, writes=True)
    assert with_writes["spec"]["writes"] == {"enabled": True}
