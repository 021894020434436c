"""API requests per minute the operator makes for one idle RecommenderCluster, on the kwok control plane.

    .venv/bin/python benchmarks/operator_api_calls.py [--window 120] [--crd FILE] [--json OUT]

Starts its own control plane (e2e/controlplane, 2 zones x 2 kwok nodes, random ports), creates
one cluster (2 shards x 2 replicas, 2 routers) with `python -m shardrec_operator` under its
default settings (timer 2 s, resync as configured), waits until it is Ready and 30 s more, then
reads the API server's `apiserver_request_total` (by verb and resource) twice, `--window`
seconds apart, with the operator running; then stops the operator and does the same again. The
operator's own requests are the first difference minus the second (what the controllers, the
scheduler and kwok make anyway), per minute, counting only the verbs the operator uses on the
resources it touches (no node heartbeats, no lease renewals); differences under NOISE_FLOOR
requests per window are dropped. Open watches (`apiserver_longrunning_requests`,
verb WATCH) are reported apart: a watch is one long-lived request, counted in the total only
when it ends.

To measure another version of the operator, put its sources first on PYTHONPATH (and give its
CRD with --crd), e.g. the commit before the watches:
    git archive <commit> operator/src shard-server/src crds | tar -x -C /tmp/base
    PYTHONPATH=/tmp/base/operator/src:/tmp/base/shard-server/src .venv/bin/python \\
      benchmarks/operator_api_calls.py --crd /tmp/base/crds/recommenderclusters.shardrec.io.yaml

Everything binds 127.0.0.1 and is stopped by PID at the end; the run takes about 2 x window + 2 min.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from shardrec_operator.reconcile import resources as kinds

ROOT = Path(__file__).resolve().parents[1]
OPERATOR_RESOURCES = frozenset({kind.plural for kind in kinds.ALL} | {"events"})
CRD = ROOT / "crds" / "recommenderclusters.shardrec.io.yaml"
NAMESPACE = "bench"
SETTLE_SECONDS = 30.0
NOISE_FLOOR = 2
"""A (verb, resource) whose difference over a window is smaller than this is noise, not the operator."""
OPERATOR_VERBS = frozenset({"GET", "LIST", "POST", "PATCH", "APPLY", "DELETE"})
"""What the operator's passes and kopf send besides watches; a WATCH is counted only when it ends,
so controllers' watches ending in one window and not the other would be noise: open watches are
reported apart instead."""
_SAMPLE = re.compile(r"^(apiserver_request_total|apiserver_longrunning_requests)\{(.*)\} (\S+)$")
_LABEL = re.compile(r'(\w+)="([^"]*)"')

Key = tuple[str, str]  # (verb, resource)


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def scrape(plane: Any) -> tuple[Counter[Key], Counter[Key]]:
    """(requests so far, open watches) by (verb, resource) from the API server's /metrics."""
    result = plane.kubectl("get", "--raw", "/metrics", check=False)
    if result.returncode != 0:
        raise RuntimeError(f"cannot read /metrics: {result.stderr}")
    totals: Counter[Key] = Counter()
    watches: Counter[Key] = Counter()
    for line in result.stdout.splitlines():
        match = _SAMPLE.match(line)
        if match is None:
            continue
        labels = dict(_LABEL.findall(match.group(2)))
        key = (labels.get("verb", ""), labels.get("resource", ""))
        value = float(match.group(3))
        if match.group(1) == "apiserver_request_total":
            if key[0] in OPERATOR_VERBS and key[1] in OPERATOR_RESOURCES:
                totals[key] += int(value)
        elif labels.get("verb") == "WATCH":
            watches[key] += int(value)
    return totals, watches


def wait_for(what: str, check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(1.0)


def window(plane: Any, seconds: float) -> tuple[Counter[Key], Counter[Key]]:
    before, _ = scrape(plane)
    time.sleep(seconds)
    after, watches = scrape(plane)
    after.subtract(before)
    return after, watches


def _kubectl_apply(plane: Any, documents: list[dict[str, Any]]) -> None:
    text = "\n---\n".join(json.dumps(document) for document in documents)
    result = plane.kubectl("apply", "--server-side", "-f", "-", input=text, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"kubectl apply failed: {result.stderr}")


def _cluster_phase(plane: Any) -> str:
    code, body = plane.api.request(
        "GET", f"/apis/shardrec.io/v1alpha1/namespaces/{NAMESPACE}/recommenderclusters/recs"
    )
    return str((body.get("status") or {}).get("phase", "")) if code == 200 else ""


def measure(
    plane: Any, operator_env: dict[str, str], window_seconds: float, crd: Path, log: Path
) -> dict[str, Any]:
    harness = _load("shardrec_bench_harness", ROOT / "e2e" / "operator" / "harness.py")
    conftest = _load("shardrec_bench_conftest", ROOT / "e2e" / "operator" / "conftest.py")
    plane.kubectl("apply", "--server-side", "-f", str(crd))
    # The e2e fixture's poll, not `kubectl wait`, which exits at once if no condition is written yet.
    if not conftest._established(plane, timeout_s=120.0):
        raise TimeoutError("the CRD recommenderclusters.shardrec.io did not become Established in 120 s")
    _kubectl_apply(plane, conftest._namespace_objects(NAMESPACE, f"/tmp/shardrec-bench-{os.getpid()}"))
    liveness = f"--liveness=http://127.0.0.1:{harness.free_port()}/healthz"
    argv = [
        sys.executable,
        "-m",
        "shardrec_operator",
        f"--namespace={NAMESPACE}",
        liveness,
        "--metrics-port=0",
    ]
    with log.open("ab") as out:
        operator = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=operator_env, start_new_session=True
        )
    try:
        _kubectl_apply(plane, [harness.cluster_document(NAMESPACE)])
        started = time.monotonic()
        wait_for("the cluster to be Ready", lambda: _cluster_phase(plane) == "Ready", timeout=300)
        ready_after = time.monotonic() - started
        time.sleep(SETTLE_SECONDS)
        running, watches_running = window(plane, window_seconds)
    finally:
        os.killpg(operator.pid, signal.SIGTERM)
        try:
            operator.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(operator.pid, signal.SIGKILL)
            operator.wait(timeout=10)
    time.sleep(10.0)
    stopped, watches_stopped = window(plane, window_seconds)
    per_minute = 60.0 / window_seconds
    mine = {
        f"{verb} {resource}": round((running[(verb, resource)] - stopped[(verb, resource)]) * per_minute, 1)
        for verb, resource in sorted(set(running) | set(stopped))
        if abs(running[(verb, resource)] - stopped[(verb, resource)]) >= NOISE_FLOOR
    }
    open_watches = {
        resource: watches_running[(verb, resource)] - watches_stopped[(verb, resource)]
        for verb, resource in sorted(set(watches_running) | set(watches_stopped))
        if watches_running[(verb, resource)] != watches_stopped[(verb, resource)]
    }
    return {
        "window_seconds": window_seconds,
        "ready_after_seconds": round(ready_after, 1),
        "operator_requests_per_minute": round(sum(mine.values()), 1),
        "by_verb_and_resource_per_minute": mine,
        "operator_open_watches": open_watches,
        "background_requests_per_minute": round(sum(stopped.values()) * per_minute, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--window", type=float, default=120.0, help="seconds per measuring window (10-600)")
    parser.add_argument("--crd", type=Path, default=CRD, help="the CRD file to install")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()
    if not 10 <= args.window <= 600:
        parser.error("--window must be from 10 to 600 seconds")
    # SIGTERM unwinds like Ctrl-C, so the control plane's context manager stops what it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    cluster = _load("shardrec_bench_cluster", ROOT / "e2e" / "controlplane" / "cluster.py")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with cluster.LocalControlPlane(zones=("zone-a", "zone-b"), nodes_per_zone=2) as plane:
        env["KUBECONFIG"] = str(plane.kubeconfig)
        result = measure(plane, env, args.window, args.crd, plane.state_dir / "operator.log")
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
