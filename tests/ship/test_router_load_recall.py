"""benchmarks/router_load.py's recall pass (make bench, bench-peers): a router answering 503 +
Retry-After for a moment (loading its layout, shedding) is retried, not a failed bench run."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def router_load() -> Any:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        return importlib.import_module("router_load")
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def test_recall_retries_a_503_with_retry_after(router_load: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) == 1:
            return httpx.Response(503, headers={"Retry-After": "0"}, json={"error": {"code": "not_ready"}})
        rows = len(request.read().decode().split('"vector"')) - 1
        return httpx.Response(200, json={"results": [{"items": [{"item_id": "a"}]}] * rows})

    real_client = httpx.Client
    monkeypatch.setattr(
        router_load.httpx,
        "Client",
        lambda **kwargs: real_client(transport=httpx.MockTransport(handler), **kwargs),
    )
    data = SimpleNamespace(
        queries=np.ones((3, 4), dtype=np.float32), exact=np.zeros((3, 1), dtype=np.int64), item_ids=["a"]
    )
    recall = router_load._recall(
        SimpleNamespace(url="http://router"), SimpleNamespace(data=data, k=1, batch=64)
    )
    assert recall == 1.0 and len(calls) == 2
