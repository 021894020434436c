"""A real Prometheus (Debian package, 127.0.0.1 only) scrapes a local cluster from `recctl up` with
the shipped rules: when every replica of one shard stops answering, ShardrecShardNoReadyReplica goes
pending, then firing once its `for` has passed; when they answer again, it resolves.

The replicas are frozen with SIGSTOP rather than killed: the local supervisor restarts a killed
process within a second, while a frozen one keeps its port and answers nothing, which is what a dead
shard looks like to the router (its health probes time out and it ejects the replicas). SIGCONT
brings them back. Every wait is bounded; times are printed, not asserted.

Prometheus loads the shipped rules with this alert's `for` cut from 1m to FOR: holding an alert
pending for `for` is Prometheus's own logic, which the promtool unit tests check at the shipped 1m on
the same expression (monitoring/tests/serving_test.yaml). What only this test shows is that the real
processes' metrics, as scraped, make the expression true and then false again, and that it still
goes pending, then firing, then resolves; a minute of waiting adds nothing to that.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from tests.ship.rules import ALERTS_FILE
from tests.ship.tools import find_tool

pytestmark = pytest.mark.integration

ALERT = "ShardrecShardNoReadyReplica"
NAMESPACE, CLUSTER = "local", "promtest"
DOWN_SHARD = 1
FOR = "5s"
RECCTL_TIMEOUT_S = 120


def _free_port() -> int:
    from shardrec.tools.local.ports import free_port

    return int(free_port())


def _recctl(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shardrec.tools.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=RECCTL_TIMEOUT_S,
        check=check,
    )


def _wait(what: str, check: Callable[[], Any], timeout_s: float) -> tuple[Any, float]:
    """Poll until check() is truthy; (its value, seconds waited). Fails after timeout_s."""
    started = time.monotonic()
    while True:
        value = check()
        if value:
            return value, time.monotonic() - started
        if time.monotonic() - started > timeout_s:
            pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(1)


@dataclass
class LocalCluster:
    router_port: int
    replicas: dict[str, tuple[int, int]]  # process name -> (pid, port)

    def shard_replicas(self, shard: int) -> list[int]:
        """PIDs of every replica of `shard` (names are shard-<layout>-<shard>-<replica>)."""
        return [pid for name, (pid, _) in self.replicas.items() if name.split("-")[-2] == str(shard)]


@pytest.fixture
def local_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    rng = np.random.default_rng(7)
    emb = tmp_path / "emb"
    emb.mkdir()
    np.save(emb / "items.npy", rng.normal(size=(400, 8)).astype(np.float32))
    (emb / "item_ids.txt").write_text("".join(f"item-{i}\n" for i in range(400)))
    np.save(emb / "users.npy", rng.normal(size=(10, 8)).astype(np.float32))
    (emb / "user_ids.txt").write_text("".join(f"user-{i}\n" for i in range(10)))
    manifest = tmp_path / "cluster.yaml"
    manifest.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "shardrec.io/v1alpha1",
                "kind": "RecommenderCluster",
                "metadata": {"name": CLUSTER},
                "spec": {
                    "shards": 2,
                    "replicasPerShard": 2,
                    "index": {"version": "v1", "source": str(emb), "dimension": 8},
                    "router": {"consistency": "available"},
                },
            }
        )
    )
    state, port = tmp_path / "state", _free_port()
    _recctl(
        "up", "-f", str(manifest), "--state-dir", str(state), "--port", str(port), "--detach", "--wait", "90"
    )
    try:
        runtime = json.loads((state / "runtime.json").read_text())
        replicas = {p["name"]: (p["pid"], p["port"]) for p in runtime["processes"] if p["name"] != "router"}
        yield LocalCluster(port, replicas)
    finally:
        for pid, _ in replicas.values():  # never leave a frozen process behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        _recctl("down", "--state-dir", str(state), check=False)


def rules_with_short_for(folder: Path) -> tuple[Path, dict[str, Any]]:
    """A copy of the shipped rules with ALERT's `for` set to FOR, and that rule."""
    doc = yaml.safe_load(ALERTS_FILE.read_text())
    rule = next(r for g in doc["groups"] for r in g["rules"] if r.get("alert") == ALERT)
    rule["for"] = FOR
    path = folder / "alerts.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path, rule


@dataclass
class Prometheus:
    url: str
    rule: dict[str, Any]

    def alerts(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{self.url}/api/v1/alerts", timeout=5) as response:
            alerts: list[dict[str, Any]] = json.load(response)["data"]["alerts"]
        return alerts

    def alert_state(self, name: str, **labels: str) -> str:
        """pending, firing, or inactive."""
        for alert in self.alerts():
            if alert["labels"].get("alertname") == name and labels.items() <= alert["labels"].items():
                return str(alert["state"])
        return "inactive"


@pytest.fixture
def prometheus(local_cluster: LocalCluster, tmp_path: Path) -> Iterator[Prometheus]:
    binary = find_tool("prometheus")
    port = _free_port()
    static = {"namespace": NAMESPACE, "cluster": CLUSTER}
    rules, rule = rules_with_short_for(tmp_path)
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [
            {
                "job_name": "shardrec-router",
                "static_configs": [{"targets": [f"127.0.0.1:{local_cluster.router_port}"], "labels": static}],
            },
            {
                "job_name": "shardrec-shard",
                "scrape_timeout": "900ms",
                "static_configs": [
                    {
                        "targets": [f"127.0.0.1:{p}" for _, p in local_cluster.replicas.values()],
                        "labels": static,
                    }
                ],
            },
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = (tmp_path / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [
            str(binary),
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=1h",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as response:
                    return bool(response.status == 200)
            except OSError:
                assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()
                return False

        _wait("Prometheus to be ready", ready, 60)
        yield Prometheus(url, rule)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def test_shard_without_replicas_fires_and_resolves(
    local_cluster: LocalCluster, prometheus: Prometheus
) -> None:
    rule = prometheus.rule
    for_s = int(str(rule["for"]).removesuffix("s"))
    shard = str(DOWN_SHARD)

    # Healthy: the rules are loaded and evaluated, and nothing is wrong with the shard.
    _wait(
        "Prometheus to scrape the router",
        lambda: prometheus.alert_state(ALERT, shard=shard) == "inactive" and _router_scraped(prometheus),
        60,
    )

    pids = local_cluster.shard_replicas(DOWN_SHARD)
    assert len(pids) == 2, local_cluster.replicas
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        _, to_pending = _wait(
            f"{ALERT} pending", lambda: prometheus.alert_state(ALERT, shard=shard) != "inactive", 90
        )
        _, to_firing = _wait(
            f"{ALERT} firing", lambda: prometheus.alert_state(ALERT, shard=shard) == "firing", for_s + 90
        )
        firing = [a for a in prometheus.alerts() if a["labels"]["alertname"] == ALERT]
        assert [a["labels"]["shard"] for a in firing] == [shard], "only the frozen shard alerts"
        assert firing[0]["labels"]["cluster"] == CLUSTER
        assert firing[0]["annotations"]["runbook_url"].endswith("#shardrecshardnoreadyreplica")
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    _, to_resolved = _wait(
        f"{ALERT} to resolve", lambda: prometheus.alert_state(ALERT, shard=shard) == "inactive", 120
    )
    print(
        f"\n{ALERT} (for: {rule['for']}): pending {to_pending:.0f}s after the freeze, firing "
        f"{to_pending + to_firing:.0f}s after it, resolved {to_resolved:.0f}s after the thaw"
    )


def _router_scraped(prometheus: Prometheus) -> bool:
    query = urllib.parse.quote('shardrec_router_live_replicas{cluster="promtest"}')
    with urllib.request.urlopen(f"{prometheus.url}/api/v1/query?query={query}", timeout=5) as response:
        return bool(json.load(response)["data"]["result"])
