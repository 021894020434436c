"""Prometheus metrics of the router. One registry per app, so several apps (tests) never collide.

Labels stay low-cardinality: route, status code, shard number, replica name, version. Never user or
item ids.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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
    def __init__(self) -> None:
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
        self.live_replicas = Gauge(
            "shardrec_router_live_replicas",
            "Replicas in rotation per shard of the active layout.",
            ["shard"],
            registry=registry,
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
        )
        self.active_version = Gauge(
            "shardrec_router_active_version_info",
            "1 for the layout and index version the router serves.",
            ["layout", "version"],
            registry=registry,
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
        )
        self.cache_entries = Gauge(
            "shardrec_router_cache_entries",
            "Answers the result cache holds (fresh or kept for stale fallback answers).",
            registry=registry,
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
