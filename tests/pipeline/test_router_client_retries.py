"""`post_until_served`: a 503 is retried after the router's Retry-After (bounded in count and wait),
so a router that is loading or shedding for a moment does not fail a whole evaluation or bench."""

from __future__ import annotations

import httpx

from shardrec.tools.pipeline.router_client import post_until_served


def _client(statuses: list[tuple[int, dict[str, str]]], seen: list[bytes]) -> httpx.Client:
    answers = iter(statuses)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.content)
        status, headers = next(answers)
        return httpx.Response(status, headers=headers, json={"n": len(seen)})

    return httpx.Client(transport=httpx.MockTransport(handler), base_url="http://router")


def test_a_503_is_retried_after_its_retry_after_and_the_answer_returned() -> None:
    seen: list[bytes] = []
    waits: list[float] = []
    statuses = [(503, {"Retry-After": "0"}), (503, {"Retry-After": "0.5"}), (200, {})]
    with _client(statuses, seen) as client:
        response = post_until_served(client, "/v1/recommend/batch", content=b"{}", sleep=waits.append)
    assert response.status_code == 200 and response.json() == {"n": 3}
    assert seen == [b"{}"] * 3, "the same body is sent again"
    assert waits == [0.05, 0.5], "Retry-After is honoured, with a floor so a retry storm cannot spin"


def test_retries_are_bounded_and_the_last_503_is_returned() -> None:
    seen: list[bytes] = []
    waits: list[float] = []
    with _client([(503, {"Retry-After": "30"})] * 3, seen) as client:
        response = post_until_served(
            client, "/x", json={"k": 1}, retries=2, max_wait_s=1.0, sleep=waits.append
        )
    assert response.status_code == 503 and len(seen) == 3
    assert waits == [1.0, 1.0], "a long Retry-After is cut to the caller's bound"


def test_a_malformed_retry_after_waits_the_default_and_other_errors_are_not_retried() -> None:
    seen: list[bytes] = []
    waits: list[float] = []
    statuses = [(503, {"Retry-After": "Wed, 21 Oct 2026 07:28:00 GMT"}), (503, {}), (400, {})]
    with _client(statuses, seen) as client:
        response = post_until_served(client, "/x", content=b"a", sleep=waits.append)
    assert response.status_code == 400 and len(seen) == 3
    assert waits == [0.1, 0.1]
