"""Canary traffic in the router (`Topology.canary`, `rollout.strategy: Canary`).

Which layout answers (`CanaryRouter.choose`):
- `/v1/recommend` with a `user_id`: the candidate when `bucket(user_id, candidate) < weight`
  (basis points), else the active layout. The bucket is a keyed hash (blake2b, never Python's
  per-process salted `hash`), so every router puts a user in the same bucket: the same user gets
  the same version for the whole step, and since the bucket does not depend on the weight, a
  user on the candidate stays on it as the weight grows. A bucketed user the candidate does not
  know (no embedding) is answered by the active layout (and counted: unknown-user share).
- `/v1/recommend` with a query vector, `/v1/recommend/batch`, `/v1/similar`: the active layout.
  A vector carries no identity to be sticky on (hashing the body would move the "same" client
  between versions as its vector drifts); a batch answered by one layout keeps one version per
  answer; and the candidate's share is defined over users, the population the analysis compares.
- A candidate answer that fails (5xx) is answered again by the active layout (counted as a
  candidate error): a broken candidate costs latency, never a failed request.

Mirroring (`mirror`): a `sample_rate` share of `/v1/recommend` requests is also asked of the
other layout (shadow step: the candidate; weight step: the active, for the candidate's answers)
in a task after the client's answer is computed, so it is off the request's path. At most
`max_inflight` mirrored requests run at once per router; a sample over that is dropped and
counted. The two answers are compared (`compare`): top-10 overlap, Spearman correlation of the
shared items' ranks, and the shift of the mean top score.

Measurements (`CanaryWindow`) belong to one (candidate, step): a new step starts a new window.
`GET /canary` reports it as sums (`report`): a `shardrec.api.canary.CanaryStats`, which the
planner reads and adds up over routers.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from shardrec.api.canary import SUMS, CanaryStats
from shardrec.api.topology import CanaryRoute
from shardrec.serving.router.errors import ApiError
from shardrec.serving.router.metrics import RouterMetrics
from shardrec.serving.router.snapshot import Snapshot

log = logging.getLogger("shardrec.router")

RECOMMEND = "/v1/recommend"
BUCKETS = 10_000
OVERLAP_K = 10
LATENCY_WINDOW = 4096

Work = Callable[[bytes, Snapshot], Awaitable[bytes]]


def bucket(user_id: str, layout: str) -> int:
    """The user's bucket in [0, 10000) for this candidate: the same on every router and process."""
    digest = hashlib.blake2b(f"{layout}\x00{user_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def in_canary(user_id: str, layout: str, weight_percent: int) -> bool:
    """Whether the candidate answers this user at `weight_percent`."""
    return bucket(user_id, layout) < weight_percent * (BUCKETS // 100)


def user_of(body: bytes) -> str | None:
    """The `user_id` of a /v1/recommend body, or None (a vector query, or a body the parser will
    refuse anyway: it is refused the same on either layout)."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    user = parsed.get("user_id") if isinstance(parsed, dict) else None
    return user if isinstance(user, str) else None


def _ranked(payload: bytes) -> tuple[list[str], list[float]]:
    answer = orjson.loads(payload)
    entries = answer.get("items", []) if isinstance(answer, dict) else []
    return [str(e["item_id"]) for e in entries], [float(e["score"]) for e in entries]


@dataclass(frozen=True)
class Comparison:
    overlap: float
    rank_correlation: float
    score_shift: float


def compare(
    reference: Sequence[str], ref_scores: Sequence[float], other: Sequence[str], other_scores: Sequence[float]
) -> Comparison:
    """Top-10 overlap (shared items / 10, or / the shorter list when shorter), Spearman correlation of
    the shared items' ranks (0 with fewer than two shared), and |mean top score difference|."""
    a, b = list(reference[:OVERLAP_K]), list(other[:OVERLAP_K])
    depth = min(len(a), len(b))
    if depth == 0:
        return Comparison(1.0 if len(a) == len(b) else 0.0, 0.0, 0.0)
    shared = [item for item in a if item in set(b)]
    overlap = len(set(a[:depth]) & set(b[:depth])) / depth
    correlation = 0.0
    if len(shared) >= 2:
        ranks_a = np.array([a.index(item) for item in shared], dtype=np.float64)
        ranks_b = np.array([b.index(item) for item in shared], dtype=np.float64)
        ra, rb = ranks_a.argsort().argsort(), ranks_b.argsort().argsort()
        correlation = (
            float(np.corrcoef(ra, rb)[0, 1]) if len(shared) > 2 else (1.0 if (ra == rb).all() else -1.0)
        )
    shift = abs(float(np.mean(ref_scores[:depth])) - float(np.mean(other_scores[:depth])))
    return Comparison(overlap, correlation, shift)


def _p99(samples: deque[float]) -> float | None:
    if not samples:
        return None
    return round(float(np.percentile(np.fromiter(samples, dtype=np.float64), 99)) * 1000.0, 3)


@dataclass
class CanaryWindow:
    """Measurements of one (candidate, step) in this router, as sums. The counters are plain
    fields, one per `CanaryStats` sum (`SUMS`; tests/serving checks they match), so counting on
    the hot path is an attribute add; `report()` hands them over by name."""

    layout: str
    step: int
    requests: int = 0
    errors: int = 0
    active_requests: int = 0
    active_errors: int = 0
    compared: int = 0
    overlap_sum: float = 0.0
    rank_correlation_sum: float = 0.0
    score_shift_sum: float = 0.0
    user_queries: int = 0
    unknown_users: int = 0
    shadow_dropped: int = 0
    candidate_seconds: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))
    active_seconds: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))

    def report(self) -> dict[str, Any]:
        """The JSON `GET /canary` answers: this window as `CanaryStats` (one home for the keys)."""
        return CanaryStats(
            layout=self.layout,
            step=self.step,
            **{name: getattr(self, name) for name in SUMS},
            candidate_p99_ms=_p99(self.candidate_seconds),
            active_p99_ms=_p99(self.active_seconds),
        ).to_report()


class CanaryRouter:
    """Chooses the layout of each request while a canary runs and mirrors a sample of them."""

    def __init__(self, metrics: RouterMetrics, rng: random.Random | None = None) -> None:
        self.metrics = metrics
        self.route: CanaryRoute | None = None
        self.window: CanaryWindow | None = None
        self.inflight = 0
        self._rng = rng or random.Random()
        self._tasks: set[asyncio.Task[None]] = set()

    def apply(self, route: CanaryRoute | None) -> None:
        """A topology's canary section; a new (candidate, step) starts a new window."""
        self.route = route
        if route is None:
            self._clear_gauges()
            return
        window = self.window
        if window is None or (window.layout, window.step) != (route.layout, route.step):
            self.window = CanaryWindow(route.layout, route.step)
            self._clear_gauges()
        self.metrics.canary_step.labels(route.layout).set(route.step)
        self.metrics.canary_weight.labels(route.layout).set(route.weight)

    def _clear_gauges(self) -> None:
        for gauge in (self.metrics.canary_step, self.metrics.canary_weight, self.metrics.canary_overlap):
            gauge.clear()

    def report(self) -> dict[str, Any] | None:
        window = self.window
        return window.report() if window is not None and self.route is not None else None

    async def serve(
        self, route: str, body: bytes, active: Snapshot, candidate: Snapshot | None, work: Work
    ) -> tuple[bytes, Snapshot]:
        """Answer one request while a canary may run: (payload, the snapshot that answered)."""
        canary, window = self.route, self.window
        if (
            canary is None
            or window is None
            or candidate is None
            or candidate.layout != canary.layout
            or route != RECOMMEND
        ):
            return await work(body, active), active
        user = user_of(body)
        if user is not None and canary.weight > 0 and in_canary(user, canary.layout, canary.weight):
            window.user_queries += 1
            if user in candidate.users or user not in active.users:
                served = await self._candidate(body, active, candidate, work, window)
                if served is not None:
                    return served
            else:
                window.unknown_users += 1
                self.metrics.canary_unknown_users.inc()
        payload = await self._timed(body, active, work, window, candidate=False)
        if canary.weight == 0 and self._sampled(canary):
            if user is not None and user not in candidate.users and user in active.users:
                window.user_queries += 1
                window.unknown_users += 1
                self.metrics.canary_unknown_users.inc()
            else:
                if user is not None:
                    window.user_queries += 1
                self._mirror(body, payload, candidate, work, window, mirror_is_candidate=True)
        return payload, active

    async def _candidate(
        self, body: bytes, active: Snapshot, candidate: Snapshot, work: Work, window: CanaryWindow
    ) -> tuple[bytes, Snapshot] | None:
        """The candidate's answer, or None when it failed with a 5xx (the caller asks the active)."""
        candidate.enter()
        try:
            payload = await self._timed(body, candidate, work, window, candidate=True)
        except ApiError as error:
            if error.status < 500:
                raise
            return None
        except Exception:
            log.warning("the canary layout %s failed a request", candidate.layout, exc_info=True)
            return None
        finally:
            candidate.leave()
        canary = self.route
        if canary is not None and self._sampled(canary):
            self._mirror(body, payload, active, work, window, mirror_is_candidate=False)
        return payload, candidate

    async def _timed(
        self, body: bytes, snapshot: Snapshot, work: Work, window: CanaryWindow, *, candidate: bool
    ) -> bytes:
        started = time.perf_counter()
        target = "candidate" if candidate else "active"
        try:
            payload = await work(body, snapshot)
        except ApiError as error:
            if error.status >= 500:
                self._count(window, candidate=candidate, failed=True)
            raise
        except Exception:
            self._count(window, candidate=candidate, failed=True)
            raise
        self._count(window, candidate=candidate, failed=False)
        (window.candidate_seconds if candidate else window.active_seconds).append(
            time.perf_counter() - started
        )
        self.metrics.canary_requests.labels(target).inc()
        return payload

    def _count(self, window: CanaryWindow, *, candidate: bool, failed: bool) -> None:
        if candidate:
            window.requests += 1
            window.errors += failed
        else:
            window.active_requests += 1
            window.active_errors += failed
        if failed:
            self.metrics.canary_errors.labels("candidate" if candidate else "active").inc()

    def _sampled(self, canary: CanaryRoute) -> bool:
        return canary.sample_rate > 0 and self._rng.random() < canary.sample_rate

    def _mirror(
        self,
        body: bytes,
        answered: bytes,
        other: Snapshot,
        work: Work,
        window: CanaryWindow,
        *,
        mirror_is_candidate: bool,
    ) -> None:
        route = self.route
        if route is None:
            return
        if self.inflight >= route.max_inflight:
            window.shadow_dropped += 1
            self.metrics.canary_shadow_dropped.inc()
            return
        self.inflight += 1
        other.enter()
        task = asyncio.get_running_loop().create_task(
            self._compare(body, answered, other, work, window, mirror_is_candidate=mirror_is_candidate)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _compare(
        self,
        body: bytes,
        answered: bytes,
        other: Snapshot,
        work: Work,
        window: CanaryWindow,
        *,
        mirror_is_candidate: bool,
    ) -> None:
        try:
            try:
                mirrored = await self._timed(body, other, work, window, candidate=mirror_is_candidate)
            except Exception:
                return  # counted as an error of the layout it was asked of
            candidate_answer, active_answer = (
                (mirrored, answered) if mirror_is_candidate else (answered, mirrored)
            )
            ids_a, scores_a = _ranked(active_answer)
            ids_c, scores_c = _ranked(candidate_answer)
            result = compare(ids_a, scores_a, ids_c, scores_c)
            window.compared += 1
            window.overlap_sum += result.overlap
            window.rank_correlation_sum += result.rank_correlation
            window.score_shift_sum += result.score_shift
            self.metrics.canary_compared.inc()
            self.metrics.canary_overlap.labels(window.layout).set(window.overlap_sum / window.compared)
        except Exception:  # a comparison must never disturb serving
            log.warning("comparing a mirrored canary answer failed", exc_info=True)
        finally:
            other.leave()
            self.inflight -= 1

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
