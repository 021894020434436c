"""Per-key token-bucket rate limit (injected clock) and API-key files."""

from __future__ import annotations

from pathlib import Path

import pytest

from shardrec.serving.router.auth import ApiKeysError, load_api_keys, parse_api_keys
from shardrec.serving.router.ratelimit import RateLimiter, retry_after_header


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_bucket_allows_the_burst_then_refuses_with_the_wait() -> None:
    clock = Clock()
    limiter = RateLimiter(rate_per_second=2, burst=3, clock=clock)
    assert [limiter.acquire("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire("a") == pytest.approx(0.5)
    clock.now += 0.5
    assert limiter.acquire("a") == 0.0
    assert limiter.acquire("a") == pytest.approx(0.5)


def test_keys_have_separate_buckets() -> None:
    limiter = RateLimiter(rate_per_second=1, burst=1, clock=Clock())
    assert limiter.acquire("a") == 0.0
    assert limiter.acquire("a") > 0
    assert limiter.acquire("b") == 0.0


def test_refill_is_capped_at_the_burst() -> None:
    clock = Clock()
    limiter = RateLimiter(rate_per_second=10, burst=2, clock=clock)
    limiter.acquire("a")
    clock.now += 3600
    assert [limiter.acquire("a") for _ in range(3)][-1] > 0


def test_zero_burst_means_one_second_worth_and_zero_rate_is_off() -> None:
    limiter = RateLimiter(rate_per_second=5, burst=0, clock=Clock())
    assert sum(limiter.acquire("a") == 0.0 for _ in range(10)) == 5
    off = RateLimiter(rate_per_second=0)
    assert not off.enabled
    assert all(off.acquire("a") == 0.0 for _ in range(1000))


def test_retry_after_is_whole_seconds_and_never_zero() -> None:
    assert retry_after_header(0.01) == "1"
    assert retry_after_header(1.2) == "2"


def test_api_key_file_formats_and_constant_time_identify(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("# comment\nalice:s3cret\n\nbare-key-value\n")
    keys = load_api_keys(path)
    assert keys.required
    assert keys.identify("s3cret") == "alice"
    assert keys.identify("bare-key-value") == "key-4"
    assert keys.identify("s3cre") is None
    assert keys.identify("") is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no API keys"),
        ("alice:\n", "empty part"),
        ("a:x\na:y\n", "duplicate key name 'a'"),
        ("a:has space\n", "whitespace"),
    ],
)
def test_bad_key_files_name_the_file_and_line(text: str, message: str) -> None:
    with pytest.raises(ApiKeysError, match=message) as info:
        parse_api_keys(text, "/etc/keys")
    assert "/etc/keys" in str(info.value)


def test_missing_key_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ApiKeysError, match="cannot read"):
        load_api_keys(tmp_path / "absent")
