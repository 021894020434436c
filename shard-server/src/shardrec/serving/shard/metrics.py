"""Prometheus metrics of one shard server (own registry, so tests can run several in a process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
_LOAD_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900)


class ShardMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "shardrec_shard_requests", "Requests by route and status.", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            "shardrec_shard_request_seconds",
            "Time from a request's body being read to its answer being handed to the server.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queries = Counter("shardrec_shard_queries", "Query vectors searched.", registry=r)
        self.items_returned = Counter("shardrec_shard_items_returned", "Items returned.", registry=r)
        self.batch_queries = Histogram(
            "shardrec_shard_batch_queries",
            "Query vectors per coalesced knn_query call.",
            buckets=_SIZE_BUCKETS,
            registry=r,
        )
        self.batch_requests = Histogram(
            "shardrec_shard_batch_requests",
            "Requests coalesced into one knn_query call.",
            buckets=_SIZE_BUCKETS,
            registry=r,
        )
        self.search_seconds = Histogram(
            "shardrec_shard_search_seconds",
            "Time of one coalesced batch in a search thread (exclusion, knn_query, encoding).",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "shardrec_shard_queue_wait_seconds",
            "Time a request waited for a search thread.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.pending = Gauge("shardrec_shard_pending_queries", "Queries waiting for a thread.", registry=r)
        self.rejected = Counter(
            "shardrec_shard_rejected", "Requests refused before search, by reason.", ["reason"], registry=r
        )
        self.items = Gauge("shardrec_shard_items", "Items in the serving index.", registry=r)
        self.index_bytes = Gauge("shardrec_shard_index_bytes", "Size of the serving index file.", registry=r)
        self.ready = Gauge("shardrec_shard_ready", "1 when an index is loaded and warmed.", registry=r)
        self.active = Gauge(
            "shardrec_shard_active_version",
            "1 for the (layout, version, shard) being served.",
            ["layout", "version", "shard"],
            registry=r,
        )
        self.load_seconds = Histogram(
            "shardrec_shard_load_seconds",
            "Time to verify, load and warm an index.",
            buckets=_LOAD_BUCKETS,
            registry=r,
        )
        self.swap_seconds = Histogram(
            "shardrec_shard_swap_seconds",
            "Time from a load request to the new index serving.",
            buckets=_LOAD_BUCKETS,
            registry=r,
        )
        self.write_sequence = Gauge(
            "shardrec_shard_write_sequence",
            "Last write-log sequence applied to the serving index (0 before any write).",
            registry=r,
        )
        self.log_sequence = Gauge(
            "shardrec_shard_write_log_sequence", "Last sequence held in this replica's write log.", registry=r
        )
        self.writes = Counter(
            "shardrec_shard_writes", "Write-log records applied, by operation.", ["op"], registry=r
        )
        self.loads = Counter("shardrec_shard_loads", "Index loads by result.", ["result"], registry=r)
        # What writes cost the searches (docs/benchmarks.md, "Item writes"): hnswlib cannot search
        # beside add_items/mark_deleted/resize, so applying writes pauses this replica's searches.
        self.write_barriers = Counter(
            "shardrec_shard_write_barriers",
            "Times searches were paused to apply writes (one per committed group of write requests).",
            registry=r,
        )
        self.write_barrier_wait = Counter(
            "shardrec_shard_write_barrier_wait_seconds",
            "Time spent waiting for running searches to end before applying writes (none starts meanwhile).",
            registry=r,
        )
        self.write_exclusive = Counter(
            "shardrec_shard_write_exclusive_seconds",
            "Time searches were paused for writes: the wait for running searches plus the apply.",
            registry=r,
        )
        self.write_apply = Counter(
            "shardrec_shard_write_apply_seconds", "Wall time of applying writes to the index.", registry=r
        )
        self.write_apply_cpu = Counter(
            "shardrec_shard_write_apply_cpu_seconds",
            "CPU time of the thread applying writes to the index (hnswlib add_items, mark_deleted, resize).",
            registry=r,
        )
        self.write_append = Counter(
            "shardrec_shard_write_append_seconds",
            "Time appending write-log records and fsyncing them (off the event loop).",
            registry=r,
        )
        self.write_group_requests = Histogram(
            "shardrec_shard_write_group_requests",
            "Write requests (lead or replicate) committed together: one append + fsync, one pause.",
            buckets=_SIZE_BUCKETS,
            registry=r,
        )
