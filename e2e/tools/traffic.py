"""Bounded client traffic to a shardrec router, counting every request (shared by e2e/node and e2e/kind).

- `post()`: one `/v1/recommend` (or any JSON POST); never raises: a transport error is status 0.
- `burst()`: a fixed number of requests, a few at a time (e2e/kind's burst through a port-forward).
- `Traffic`: steady load from a few client threads while a scenario runs (e2e/node's scenarios through
  the router Service's ClusterIP). Each thread is one client: its own requests in order, so the
  sequence of index versions it saw can be checked (no v1 after v2).

Every answer is classified into exactly one of: ok (HTTP 200, whole), partial (HTTP 200 flagged
partial), unavailable (HTTP 503), failed (anything else: other codes, transport errors), and, in
addition, `wrong` when a caller's check rejects its content (e.g. items of another version). The
client-measured seconds of every 200 answer are kept with the time it was sent, so a scenario can take
the p99 of a window (`Traffic.latencies(since, until)`, `p99`).

Bounds: each `Traffic` stops at `max_requests` per client or `max_seconds`, whichever comes first, and
paces each client to `rate` requests per second; `burst` sends exactly its bodies. Targets are whatever
URL the caller gives: the harnesses give only 127.0.0.1 or addresses inside the node's namespaces.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

REQUEST_TIMEOUT_S = 10.0
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy


@dataclass(frozen=True)
class Answer:
    status: int  # 0: no HTTP answer (connection refused, reset, timeout)
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)  # names lowercased
    seconds: float = 0.0

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    @property
    def version(self) -> str | None:
        value = self.body.get("index_version")
        return str(value) if value is not None else None

    @property
    def partial(self) -> bool:
        return bool(self.body.get("partial"))


def post(
    url: str, body: dict[str, Any], headers: dict[str, str] | None = None, timeout: float = REQUEST_TIMEOUT_S
) -> Answer:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **(headers or {})},
        method="POST",
    )
    started = time.monotonic()
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            raw = response.read()
            status, got_headers = int(response.status), {k.lower(): v for k, v in response.headers.items()}
    except urllib.error.HTTPError as error:
        raw, status = error.read(), int(error.code)
        got_headers = {k.lower(): v for k, v in error.headers.items()}
    except (OSError, ValueError) as error:
        return Answer(0, {"error": f"{type(error).__name__}: {error}"}, seconds=time.monotonic() - started)
    try:
        parsed = json.loads(raw)
        decoded: dict[str, Any] = parsed if isinstance(parsed, dict) else {"raw": parsed}
    except ValueError:
        decoded = {"raw": raw.decode(errors="replace")[:300]}
    return Answer(status, decoded, got_headers, time.monotonic() - started)


def kind_of(answer: Answer) -> str:
    """ok | partial | unavailable | failed."""
    if answer.status == 200:
        return "partial" if answer.partial else "ok"
    if answer.status == 503:
        return "unavailable"
    return "failed"


@dataclass
class Counts:
    sent: int = 0
    ok: int = 0
    partial: int = 0
    unavailable: int = 0
    failed: int = 0
    wrong: int = 0  # rejected by the caller's check (counted besides its kind)

    def add(self, kind: str, wrong: bool) -> None:
        self.sent += 1
        setattr(self, kind, getattr(self, kind) + 1)
        self.wrong += int(wrong)

    def __sub__(self, other: Counts) -> Counts:
        return Counts(**{k: getattr(self, k) - getattr(other, k) for k in self.as_dict()})

    def __add__(self, other: Counts) -> Counts:
        return Counts(**{k: getattr(self, k) + getattr(other, k) for k in self.as_dict()})

    def as_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in ("sent", "ok", "partial", "unavailable", "failed", "wrong")}

    def __str__(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.as_dict().items())


Check = Callable[[Answer], str | None]  # why an answer's content is wrong, or None


@dataclass
class Client:
    """One client's record: its counts, the versions it saw in order (runs collapsed), and the first
    problems (failures, 503s and wrong answers), each with the seconds since the traffic started."""

    counts: Counts = field(default_factory=Counts)
    versions: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    unavailable: list[Answer] = field(default_factory=list)  # the first 503s, for the caller to read
    answered: list[tuple[float, float]] = field(default_factory=list)  # (sent at, seconds) of each 200

    def record(self, answer: Answer, problem: str | None, at: float, keep: int = 20) -> None:
        kind = kind_of(answer)
        self.counts.add(kind, problem is not None)
        version = answer.version if answer.status == 200 else None
        if version is not None and (not self.versions or self.versions[-1] != version):
            self.versions.append(version)
        if answer.status == 200:
            self.answered.append((at, answer.seconds))
        if kind == "unavailable" and len(self.unavailable) < keep:
            self.unavailable.append(answer)
        if (kind in ("failed", "unavailable") or problem) and len(self.problems) < keep:
            detail = problem or f"HTTP {answer.status}: {json.dumps(answer.body)[:200]}"
            self.problems.append(f"{at:.1f}s {detail}")

    def went_back(self, order: list[str]) -> bool:
        """True when this client saw a version again after a later one of `order` (e.g. v1 after v2)."""
        ranks = [order.index(v) for v in self.versions if v in order]
        return any(later < earlier for earlier, later in itertools.pairwise(ranks))


class Traffic:
    """Steady, bounded load: `clients` threads, each at most `rate` requests/s, until stop(),
    `max_requests` per client or `max_seconds`. Use as a context manager (stops on exit)."""

    def __init__(
        self,
        url: str,
        bodies: Callable[[int, int], dict[str, Any]],
        *,
        check: Check | None = None,
        clients: int = 4,
        rate: float = 20.0,
        max_requests: int = 20_000,
        max_seconds: float = 900.0,
        headers: dict[str, str] | None = None,
        timeout: float = REQUEST_TIMEOUT_S,
    ) -> None:
        self.url, self.bodies, self.check = url, bodies, check
        self.rate, self.max_requests, self.max_seconds = rate, max_requests, max_seconds
        self.headers, self.timeout = headers, timeout
        self.clients = [Client() for _ in range(clients)]
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._started = 0.0
        self.seconds = 0.0

    def __enter__(self) -> Traffic:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def start(self) -> None:
        self._started = time.monotonic()
        for index in range(len(self.clients)):
            thread = threading.Thread(target=self._run, args=(index,), name=f"traffic-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> Counts:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.timeout + 5)
        self.seconds = time.monotonic() - self._started
        return self.counts()

    @property
    def running(self) -> bool:
        return any(thread.is_alive() for thread in self._threads)

    def counts(self) -> Counts:
        with self._lock:
            total = Counts()
            for client in self.clients:
                total = total + client.counts
            return total

    def elapsed(self) -> float:
        """Seconds since start(): the clock of the problems' timestamps."""
        return time.monotonic() - self._started

    def problems(self) -> list[str]:
        with self._lock:
            return [f"client {i}: {p}" for i, c in enumerate(self.clients) for p in c.problems]

    def versions(self) -> list[list[str]]:
        with self._lock:
            return [list(c.versions) for c in self.clients]

    def unavailable(self) -> list[Answer]:
        with self._lock:
            return [a for c in self.clients for a in c.unavailable]

    def latencies(self, since: float = 0.0, until: float = float("inf")) -> list[float]:
        """Seconds of each request answered 200 (whole or partial) that was sent in [since, until), on the
        clock of elapsed()."""
        with self._lock:
            return [s for c in self.clients for at, s in c.answered if since <= at < until]

    def wait_for(self, what: str, condition: Callable[[Counts], bool], timeout: float) -> Counts:
        """Block until condition(counts()) holds; bounded."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            counts = self.counts()
            if condition(counts):
                return counts
            if not self.running:
                break
            time.sleep(0.2)
        raise AssertionError(f"traffic: timed out after {timeout:.0f}s waiting for {what}; {self.counts()}")

    def _run(self, index: int) -> None:
        client, period = self.clients[index], 1.0 / self.rate
        deadline = self._started + self.max_seconds
        for number in range(self.max_requests):
            if self._stop.is_set() or time.monotonic() >= deadline:
                return
            began = time.monotonic()
            answer = post(self.url, self.bodies(index, number), self.headers, self.timeout)
            problem = self.check(answer) if self.check is not None and answer.status == 200 else None
            with self._lock:
                client.record(answer, problem, began - self._started)
            self._stop.wait(max(0.0, period - (time.monotonic() - began)))


def p99(seconds: Iterable[float]) -> float:
    """The 99th percentile (nearest rank) of `seconds`; 0.0 for none."""
    ordered = sorted(seconds)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] if ordered else 0.0


def burst(
    url: str,
    bodies: Iterable[dict[str, Any]],
    *,
    concurrency: int = 8,
    check: Check | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = REQUEST_TIMEOUT_S,
) -> tuple[Counts, list[str]]:
    """Send every body once, `concurrency` at a time; (counts, the first problems)."""
    client = Client()
    lock = threading.Lock()
    started = time.monotonic()

    def one(body: dict[str, Any]) -> None:
        began = time.monotonic()
        answer = post(url, body, headers, timeout)
        problem = check(answer) if check is not None and answer.status == 200 else None
        with lock:
            client.record(answer, problem, began - started)

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(one, bodies))
    return client.counts, client.problems
