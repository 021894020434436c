"""CPU of one router request's metric updates, A/B: prometheus_client's multiprocess mode (every
update written to the worker's mmap file, as router workers did before issue #19) against the
in-memory values router workers use now (published twice a second, router/metrics.py).

    python benchmarks/router_metrics_cost.py

Each side runs in a fresh interpreter (the library picks its value class at import, from
PROMETHEUS_MULTIPROC_DIR); the sides alternate, best of 5 timings each. The updates are a
request's worst case: its request counter and latency histogram, plus one shard batch on each of
4 shards (batch size, zone counter, shard latency histogram); under load batches are shared by many
requests, so the per-request difference is smaller.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROUNDS = 3


def measure(updates: int = 100_000) -> float:
    """Best of 5: CPU microseconds per request's metric updates in this process."""
    from shardrec.serving.router.metrics import RouterMetrics

    metrics = RouterMetrics()
    requests = metrics.requests.labels("/v1/recommend", "200")
    latency = metrics.request_seconds.labels("/v1/recommend", "200")
    shards = [metrics.shard_request_seconds.labels(str(s), "ok") for s in range(4)]
    zones = [metrics.shard_requests_by_zone.labels(str(s), "unknown") for s in range(4)]
    best = float("inf")
    for _ in range(5):
        started = time.process_time()
        for _ in range(updates):
            requests.inc()
            latency.observe(0.004)
            for shard in range(4):
                metrics.shard_batch_queries.observe(1)
                zones[shard].inc()
                shards[shard].observe(0.002)
        best = min(best, (time.process_time() - started) / updates * 1e6)
    return best


def side(multiprocess_dir: str | None) -> float:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PROMETHEUS_MULTIPROC_DIR", "SHARDREC_ROUTER_METRICS_DIR")
    }
    if multiprocess_dir is not None:
        env["PROMETHEUS_MULTIPROC_DIR"] = multiprocess_dir
    code = "import router_metrics_cost as m; print(m.measure())"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=Path(__file__).resolve().parent,
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    ).stdout
    return float(out.strip().splitlines()[-1])


def main() -> int:
    library, ours = [], []
    with tempfile.TemporaryDirectory() as directory:
        for _ in range(ROUNDS):
            library.append(side(directory))
            ours.append(side(None))
    a, b = min(ours), min(library)
    print("| side | CPU us per request's metric updates (1 request + 4 shard batches) |")
    print("|---|---:|")
    print(f"| A: in-memory values, published twice a second (router workers now) | {a:.2f} |")
    print(f"| B: prometheus_client multiprocess mode (router workers before) | {b:.2f} |")
    print(f"B/A {b / a:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
