"""Router metrics with several workers (router/metrics.py): each worker keeps its values in memory
and publishes them to files; /metrics answered by any worker sums every worker's files. The sums
must be what prometheus_client's own multiprocess mode (every update written to its file, as the
router did before) gives for the same updates: same names, types, help, labels and values."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

from prometheus_client import multiprocess
from prometheus_client.parser import text_string_to_metric_families

from shardrec.serving.router.metrics import RouterMetrics

REPO = Path(__file__).resolve().parents[2]


def exercise(metrics: RouterMetrics, worker: int) -> None:
    """The same updates in each worker, with some values that differ between workers."""
    metrics.requests.labels("/v1/recommend", "200").inc(3 + worker)
    metrics.requests.labels("/v1/recommend", "503").inc()
    for seconds in (0.0004, 0.004, 0.3 + worker, 7.0):
        metrics.request_seconds.labels("/v1/recommend", "200").observe(seconds)
    metrics.queries.labels("/v1/recommend/batch").inc(64)
    metrics.shard_batch_queries.observe(5 + worker)
    metrics.shard_request_seconds.labels(str(worker), "ok").observe(0.002)
    metrics.partial_answers.inc(worker)
    metrics.in_flight.set(2 + worker)  # livesum
    metrics.live_replicas.labels("0").set(1 + worker)  # livemax
    metrics.canary_overlap.labels("layout-a").set(0.5 + worker / 4)  # livemin
    metrics.write_lag.labels("0", f"replica-{worker}").set(worker + 1)  # all (one series per worker)
    metrics.active_version.labels("layout-a", "v1").set(1)


Sample = tuple[str, tuple[tuple[str, str], ...], float]


def samples(text: str) -> tuple[dict[str, tuple[str, str]], Counter[Sample]]:
    """(family -> (type, help), every sample) of an exposition; `pid` labels (per-worker gauges)
    are blanked, as the two runs' workers have different process ids."""
    families: dict[str, tuple[str, str]] = {}
    found: Counter[Sample] = Counter()
    for family in text_string_to_metric_families(text):
        families[family.name] = (family.type, family.documentation)
        for sample in family.samples:
            labels = tuple(sorted((k, "*" if k == "pid" else v) for k, v in sample.labels.items()))
            found[(sample.name, labels, round(sample.value, 9))] += 1
    return families, found


def library_multiprocess(directory: Path, worker: int) -> None:
    """`exercise` in a process running prometheus_client's multiprocess mode (the router before)."""
    code = (
        "import sys; from tests.serving.test_router_metrics_workers import exercise; "
        "from shardrec.serving.router.metrics import RouterMetrics; "
        f"exercise(RouterMetrics(), {worker})"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    env.pop("SHARDREC_ROUTER_METRICS_DIR", None)
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, env=env, timeout=60)


def test_metrics_answered_by_one_worker_sum_every_workers_published_values(tmp_path: Path) -> None:
    published, library = tmp_path / "published", tmp_path / "library"
    published.mkdir()
    library.mkdir()
    workers = [RouterMetrics(str(published), pid=1000 + worker) for worker in range(2)]
    for worker, metrics in enumerate(workers):
        exercise(metrics, worker)
    workers[1].publish()  # its periodic publication; the answering worker publishes its own
    for worker in range(2):
        library_multiprocess(library, worker)
    ours = workers[0].render().decode()
    reference = RouterMetrics(str(library)).render().decode()
    assert samples(ours) == samples(reference)
    # The sums themselves, as a reader of /metrics sees them.
    _, found = samples(ours)
    route_200 = (("code", "200"), ("route", "/v1/recommend"))
    assert found[("shardrec_router_requests_total", route_200, 7.0)] == 1  # 3 + 4
    assert found[("shardrec_router_request_duration_seconds_count", route_200, 8.0)] == 1
    assert found[("shardrec_router_in_flight_requests", (), 5.0)] == 1  # livesum: 2 + 3
    assert found[("shardrec_router_live_replicas", (("shard", "0"),), 2.0)] == 1  # livemax
    assert found[("shardrec_router_canary_overlap_at10", (("layout", "layout-a"),), 0.5)] == 1  # livemin


def test_a_worker_publishes_its_updates_and_a_dead_ones_live_gauges_leave_the_sum(tmp_path: Path) -> None:
    first, second = (RouterMetrics(str(tmp_path), pid=pid) for pid in (2001, 2002))
    first.in_flight.set(1)
    second.in_flight.set(4)
    second.requests.labels("/v1/recommend", "200").inc(2)
    _, found = samples(first.render().decode())
    assert found[("shardrec_router_in_flight_requests", (), 1.0)] == 1  # the second published nothing yet
    second.publish()
    second.requests.labels("/v1/recommend", "200").inc(3)  # not yet published: not counted
    _, found = samples(first.render().decode())
    route_200 = (("code", "200"), ("route", "/v1/recommend"))
    assert found[("shardrec_router_in_flight_requests", (), 5.0)] == 1
    assert found[("shardrec_router_requests_total", route_200, 2.0)] == 1
    second.publish()
    _, found = samples(first.render().decode())
    assert found[("shardrec_router_requests_total", route_200, 5.0)] == 1
    multiprocess.mark_process_dead(2002, str(tmp_path))  # type: ignore[no-untyped-call]
    _, found = samples(first.render().decode())
    assert found[("shardrec_router_in_flight_requests", (), 1.0)] == 1  # live gauge: gone with it
    assert found[("shardrec_router_requests_total", route_200, 5.0)] == 1  # counters stay


def test_a_single_router_renders_its_own_registry(tmp_path: Path) -> None:
    metrics = RouterMetrics()
    assert metrics.directory is None
    metrics.requests.labels("/v1/recommend", "200").inc()
    metrics.publish()  # nothing to publish to
    assert list(tmp_path.iterdir()) == []
    assert 'shardrec_router_requests_total{code="200",route="/v1/recommend"} 1.0' in metrics.render().decode()
