"""Prometheus metrics of the router. One registry per app, so several apps (tests) never collide.

Labels stay low-cardinality: route, status code, shard number, replica name, version. Never user or
item ids.

With several worker processes (`router/workers.py`) /metrics answered by any worker gives the
pod's totals. Each worker keeps its metrics in its own process (prometheus_client's ordinary,
in-memory values: an update is a few attribute writes) and publishes them, every
`PUBLISH_INTERVAL_S` and whenever it answers /metrics, to its own files in the directory the
supervisor names (SHARDREC_ROUTER_METRICS_DIR), in the file format of prometheus_client's
multiprocess mode; `render()` sums the files with the library's `MultiProcessCollector`, so another
worker's values are at most one interval old. (prometheus_client's multiprocess mode itself writes
every update to the mmap'd file; under load that cost about 5% of the router's CPU, see
docs/router.md.) Counters and histograms add up; each gauge says how workers combine
(`multiprocess_mode`, ignored in a single process): in-flight requests and cache bytes/entries are
the live workers' sum, per-shard live replicas, the active version and the canary step and weight
each worker's maximum, the canary overlap the lowest worker's (so its alert fires if any worker's
share of the traffic looks wrong).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROCESS_ENV = "SHARDREC_ROUTER_METRICS_DIR"
"""Set by the worker supervisor: the directory every worker publishes its metrics to."""
PUBLISH_INTERVAL_S = 0.5
_DEFAULT_GAUGE_MODE = "all"  # prometheus_client's default multiprocess_mode

_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)


class RouterMetrics:
    def __init__(self, directory: str | None = None, pid: int | None = None) -> None:
        """`directory`: where this process publishes its values for the other workers (default:
        $SHARDREC_ROUTER_METRICS_DIR; None: a single process, nothing published); `pid`: the
        process identity in the file names (default: this process's)."""
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "shardrec_router_requests_total",
            "Client requests by route and HTTP status code.",
            ["route", "code"],
            registry=registry,
        )
        self.request_seconds = Histogram(
            "shardrec_router_request_duration_seconds",
            "Client request latency by route and HTTP status code (so shed requests, answered in "
            "microseconds, do not hide the latency of admitted ones).",
            ["route", "code"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.queries = Counter(
            "shardrec_router_queries_total",
            "Queries answered (a batch request counts each of its queries).",
            ["route"],
            registry=registry,
        )
        self.shard_request_seconds = Histogram(
            "shardrec_router_shard_request_duration_seconds",
            "Latency of one batched request to a shard replica, by shard and outcome.",
            ["shard", "outcome"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.shard_batch_queries = Histogram(
            "shardrec_router_shard_batch_queries",
            "Queries coalesced into one shard request.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=registry,
        )
        self.shard_requests_by_zone = Counter(
            "shardrec_router_shard_requests_by_zone_total",
            "Shard requests (attempts, hedges included) by shard and zone locality: same (the "
            "replica is in the router's zone), other (cross-zone), unknown (a zone not known).",
            ["shard", "locality"],
            registry=registry,
        )
        self.retries = Counter(
            "shardrec_router_retries_total",
            "Shard requests retried on another replica.",
            ["shard"],
            registry=registry,
        )
        self.hedges = Counter(
            "shardrec_router_hedges_total",
            "Hedged shard requests sent to a second replica.",
            ["shard"],
            registry=registry,
        )
        self.hedges_won = Counter(
            "shardrec_router_hedge_wins_total",
            "Hedged shard requests that answered first.",
            ["shard"],
            registry=registry,
        )
        self.ejections = Counter(
            "shardrec_router_ejections_total",
            "Replicas ejected from rotation (failures or failed health probes).",
            ["shard", "replica"],
            registry=registry,
        )
        self.shard_failures = Counter(
            "shardrec_router_shard_failures_total",
            "Shard requests that failed after every retry, by reason.",
            ["shard", "reason"],
            registry=registry,
        )
        self.write_lag = Gauge(
            "shardrec_router_replica_write_lag",
            "Write-log records a replica of the active layout has not applied yet: the shard's "
            "highest applied sequence (its leader's) minus the replica's, as last probed.",
            ["shard", "replica"],
            registry=registry,
        )
        self.writes = Counter(
            "shardrec_router_writes_total",
            "Item writes by operation and result (acknowledged, rejected, unavailable, not_acknowledged).",
            ["op", "result"],
            registry=registry,
        )
        self.live_replicas = Gauge(
            "shardrec_router_live_replicas",
            "Replicas in rotation per shard of the active layout.",
            ["shard"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.partial_answers = Counter(
            "shardrec_router_partial_answers_total",
            "Answers flagged partial (consistency: available) because a shard did not answer.",
            registry=registry,
        )
        self.shed = Counter(
            "shardrec_router_shed_requests_total",
            "Requests refused with 503 because max_in_flight requests were already being served.",
            registry=registry,
        )
        self.rate_limited = Counter(
            "shardrec_router_rate_limited_requests_total",
            "Requests refused with 429 by the per-key rate limit.",
            registry=registry,
        )
        self.in_flight = Gauge(
            "shardrec_router_in_flight_requests",
            "Requests being served now.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.active_version = Gauge(
            "shardrec_router_active_version_info",
            "1 for the layout and index version the router serves.",
            ["layout", "version"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.topology_switches = Counter(
            "shardrec_router_topology_switches_total",
            "Switches of the active layout.",
            registry=registry,
        )
        self.topology_updates = Counter(
            "shardrec_router_topology_updates_total",
            "Topology documents applied or rejected.",
            ["result"],
            registry=registry,
        )
        self.user_table_load_seconds = Histogram(
            "shardrec_router_user_table_load_duration_seconds",
            "Time to verify and load a layout's user table before switching to it.",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=registry,
        )
        self.cache_hits = Counter(
            "shardrec_router_cache_hits_total",
            "/v1/recommend answers served from the result cache (hit ratio: hits / (hits + misses)).",
            registry=registry,
        )
        self.cache_misses = Counter(
            "shardrec_router_cache_misses_total",
            "/v1/recommend queries the result cache did not hold (fresh) when the cache is enabled.",
            registry=registry,
        )
        self.cache_bytes = Gauge(
            "shardrec_router_cache_bytes",
            "Bytes the result cache holds (payloads, keys and per-entry overhead).",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.cache_entries = Gauge(
            "shardrec_router_cache_entries",
            "Answers the result cache holds (fresh or kept for stale fallback answers).",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.cache_evictions = Counter(
            "shardrec_router_cache_evictions_total",
            "Cached answers evicted to stay within router.cache.maxBytes.",
            registry=registry,
        )
        self.fallback_answers = Counter(
            "shardrec_router_fallback_answers_total",
            "Requests answered with a fallback answer (200, flagged fallback) instead of a 503, by "
            "reason (shed: admission full; shard_unavailable: strict and a shard down) and source.",
            ["reason", "source"],
            registry=registry,
        )
        self.canary_step = Gauge(
            "shardrec_router_canary_step",
            "Canary step (0-based) the router applies to the candidate layout; absent without a canary.",
            ["layout"],
            multiprocess_mode="livemax",
            registry=registry,
        )
        self.canary_weight = Gauge(
            "shardrec_router_canary_weight_percent",
            "Percent of users the candidate layout answers (0 in a shadow step).",
            ["layout"],
            multiprocess_mode="livemax",
            registry=registry,
        )
        self.canary_requests = Counter(
            "shardrec_router_canary_requests_total",
            "/v1/recommend requests measured during a canary, by the layout that answered (candidate, "
            "including mirrored ones, or active).",
            ["target"],
            registry=registry,
        )
        self.canary_errors = Counter(
            "shardrec_router_canary_errors_total",
            "Canary-measured requests that failed (5xx), by target; a failed candidate answer is "
            "answered again by the active layout.",
            ["target"],
            registry=registry,
        )
        self.canary_compared = Counter(
            "shardrec_router_canary_compared_total",
            "Candidate and active answers to the same query compared.",
            registry=registry,
        )
        self.canary_overlap = Gauge(
            "shardrec_router_canary_overlap_at10",
            "Mean top-10 overlap of the candidate's answers with the active's in the current step.",
            ["layout"],
            multiprocess_mode="livemin",
            registry=registry,
        )
        self.canary_unknown_users = Counter(
            "shardrec_router_canary_unknown_users_total",
            "Canary user queries the candidate had no embedding for (answered by the active layout).",
            registry=registry,
        )
        self.canary_shadow_dropped = Counter(
            "shardrec_router_canary_shadow_dropped_total",
            "Mirrored canary requests dropped because max in-flight mirrored requests were running.",
            registry=registry,
        )

        self.directory = directory if directory is not None else os.environ.get(MULTIPROCESS_ENV) or None
        self._files = (
            PublishedFiles(self.directory, os.getpid() if pid is None else pid, _gauge_modes(self))
            if self.directory
            else None
        )

    def publish(self) -> None:
        """Write this process's current values to its files (with several workers; else nothing)."""
        if self._files is not None:
            self._files.publish(self.registry.collect())

    def render(self) -> bytes:
        """The text exposition: this process's registry, or every worker's summed (workers)."""
        if self.directory is None:
            return generate_latest(self.registry)
        self.publish()
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self.directory)  # type: ignore[no-untyped-call]
        return generate_latest(registry)


def _gauge_modes(metrics: RouterMetrics) -> dict[str, str]:
    """Gauge name -> how workers combine it (the `multiprocess_mode` each gauge was declared with)."""
    return {
        gauge._name: getattr(gauge, "_multiprocess_mode", _DEFAULT_GAUGE_MODE)
        for gauge in vars(metrics).values()
        if isinstance(gauge, Gauge)
    }


class PublishedFiles:
    """One process's values in prometheus_client's multiprocess file format: a file per metric type
    (and gauge mode) named `<type>_<pid>.db`, one entry per series keyed as the library keys it
    (histogram buckets not cumulative, no `_count`: the collector derives it), so the library's
    `MultiProcessCollector` sums workers and `mark_process_dead` drops a dead one's live gauges."""

    def __init__(self, directory: str, pid: int, gauge_modes: dict[str, str]) -> None:
        self.directory = directory
        self.pid = pid
        self.gauge_modes = gauge_modes
        self._files: dict[str, MmapedDict] = {}
        self._lock = threading.Lock()
        # Per series: its file key (a JSON text, built once) and the value last written.
        self._written: dict[tuple[str, str, tuple[tuple[str, str], ...]], tuple[str, float]] = {}

    def _file(self, prefix: str) -> MmapedDict:
        found = self._files.get(prefix)
        if found is None:
            path = Path(self.directory) / f"{prefix}_{self.pid}.db"
            found = self._files[prefix] = MmapedDict(str(path))  # type: ignore[no-untyped-call]
        return found

    def publish(self, families: Iterable[Metric]) -> None:
        with self._lock:
            for family in families:
                self._publish(family)

    def _publish(self, family: Metric) -> None:
        kind = family.type
        if kind == "gauge":
            prefix = f"gauge_{self.gauge_modes.get(family.name, _DEFAULT_GAUGE_MODE)}"
        elif kind in ("counter", "histogram"):
            prefix = kind
        else:
            raise ValueError(f"{family.name}: cannot publish a {kind} metric")
        target = self._file(prefix)
        below: dict[tuple[tuple[str, str], ...], float] = {}  # histogram: cumulative count so far
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, sample.value
            if name.endswith(("_created", "_count")) and kind != "gauge":
                continue
            if kind == "histogram" and name.endswith("_bucket"):
                series = tuple((k, v) for k, v in labels.items() if k != "le")
                cumulative = value
                value = cumulative - below.get(series, 0.0)
                below[series] = cumulative
            series_key = (family.name, name, tuple(labels.items()))
            written = self._written.get(series_key)
            if written is None:
                key = _key(family, name, labels)
            elif written[1] == value:
                continue  # unchanged since the last publication (most series, most of the time)
            else:
                key = written[0]
            target.write_value(key, value, 0.0)  # type: ignore[no-untyped-call]
            self._written[series_key] = (key, value)

    def close(self) -> None:
        with self._lock:
            for file in self._files.values():
                file.close()  # type: ignore[no-untyped-call]
            self._files.clear()
            self._written.clear()


def _key(family: Metric, name: str, labels: dict[str, Any]) -> str:
    """The series' key as prometheus_client's multiprocess values write it."""
    return mmap_key(family.name, name, list(labels), list(labels.values()), family.documentation)
