"""`recctl demo`'s fold-in step: it asks the router for user 42's top 5, then for the same user with
three new clicks (recent_items), and prints both side by side, marking what is new."""

from __future__ import annotations

import json

import httpx

from shardrec.tools.cli.demo_cmd import FOLD_IN_CLICKS, FOLD_IN_USER, fold_in_lines


def _answer(ids: list[str]) -> httpx.Response:
    items = [{"item_id": item, "score": 1.0} for item in ids]
    body = {"items": items, "index_version": "v1", "partial": False, "shards": {"answered": 4, "total": 4}}
    return httpx.Response(200, json=body)


def test_the_demo_prints_before_and_after_three_clicks() -> None:
    bodies: list[dict[str, object]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        bodies.append(body)
        if "recent_items" in body:
            return _answer(["a", "x", "y", "z", "b"])
        return _answer(["a", "b", "c", "d", "e"])

    titles = {"a": "Alpha", "x": "Xenon", FOLD_IN_CLICKS[0]: "Finding Nemo (2003)"}
    with httpx.Client(transport=httpx.MockTransport(handler), base_url="http://router") as client:
        lines = fold_in_lines(client, titles)
    assert bodies[0] == {"user_id": FOLD_IN_USER, "k": 5}
    assert bodies[1]["recent_items"] == [{"item_id": item} for item in FOLD_IN_CLICKS]
    assert "Finding Nemo (2003)" in lines[0]
    rows = lines[2:7]
    assert rows[0].split() == ["Alpha", "Alpha"]
    assert rows[1].endswith("*Xenon") and rows[4].endswith(" b")
    assert lines[-1].strip() == "(* new in the top 5: 3 of 5)"


def test_a_layout_without_fold_in_is_said_not_hidden() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if b"recent_items" in request.content:
            error = {"code": "fold_in_unavailable", "message": "layout built without fold-in"}
            return httpx.Response(409, json={"error": error})
        return _answer(["a"])

    with httpx.Client(transport=httpx.MockTransport(handler), base_url="http://router") as client:
        lines = fold_in_lines(client, {})
    assert lines[-1].strip().startswith("not available: 409 fold_in_unavailable")
