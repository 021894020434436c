"""Scenarios with real traffic on the real node (issue 13, item 4), on the session's product deployment
(2 shards x 2 replicas, 2 routers, consistency strict; e2e/node/conftest.py).

While each scenario runs, four clients on this machine send steady, bounded `/v1/recommend` traffic to the
router Service's ClusterIP (e2e/tools/traffic.py: each client at most RATE requests/s, MAX_REQUESTS and
MAX_SECONDS), and every request is counted: sent / ok / partial / unavailable (503) / failed / wrong. An
answer is `wrong` when its items are not all items of the version it is labelled with, or its shard total
is not that version's shard count: the check that no answer mixes versions. Each client's versions are
kept in order, so a client that sees v1 again after v2 is caught.

Order matters (one deployment): a dead replica (CI's cheap scenario, marker `node` only), then a slow,
lossy link into one replica (delay and loss made with netfilter: this kernel has no netem), then a second
RecommenderCluster on an object store (SeaweedFS in the node's netns; marker `node` only, CI runs it;
it is deleted at its end), then the rollout
v1 (2 shards) -> v2 (3 shards) with the operator pod deleted mid-rollout, then a new data-plane image rolled
shard by shard (still strict, before the outages touch the consistency mode), then one shard without any
pod (strict, available, and the shipped alert through a real Prometheus). The carry of item writes (issue
18: the roll to v2, then the carry back on a rollback to the kept v1) runs on its own RecommenderCluster
`carry` beside the product's (writes on, API keys), created and deleted by its class-scoped fixture, so it
leaves the product's cluster as it found it. Counts and times are printed and
recorded as test properties; only correctness is asserted, never a duration.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import yaml

from shardrec.serving.index.manifest import shard_dir_name

pytestmark = [pytest.mark.node, pytest.mark.integration, pytest.mark.timeout(1200)]

CLIENTS, RATE, MAX_REQUESTS, MAX_SECONDS = 4, 20.0, 20_000, 900.0
SHARDS_OF = {"v1": 2, "v2": 3}
ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "monitoring" / "alerts.yaml"
ALERT = "ShardrecShardNoReadyReplica"
ALERT_FOR = "10s"  # the shipped rule says 1m; the derived copy waits 10 s (nothing else changes)


def bodies(client: int, number: int) -> dict[str, Any]:
    return {"user_id": f"user-{(client * 53 + number) % 200}", "k": 10}


def version_check(product: Any) -> Callable[[Any], str | None]:
    """Why a 200 answer is wrong: unknown version, items of another version, or the wrong shard total."""
    ids = {version: set(data.item_ids) for version, data in product.data.items()}

    def check(answer: Any) -> str | None:
        version = answer.version
        if version not in ids:
            return f"unknown index_version {version!r}"
        items = [entry["item_id"] for entry in answer.body.get("items", [])]
        foreign = [item for item in items if item not in ids[version]]
        if foreign or len(items) != 10:
            return f"answer labelled {version} has {len(items)} items, not of {version}: {foreign[:3]}"
        total = answer.body.get("shards", {}).get("total")
        if total != SHARDS_OF[version]:
            return f"answer labelled {version} covers {total} shards, {version} has {SHARDS_OF[version]}"
        return None

    return check


@pytest.fixture
def traffic(product_diagnostics: Any, traffic_module: ModuleType) -> Iterator[Any]:
    """Steady traffic through the router Service for the test; stopped (and its counts printed) after it."""
    load = traffic_module.Traffic(
        product_diagnostics.url,
        bodies,
        check=version_check(product_diagnostics),
        clients=CLIENTS,
        rate=RATE,
        max_requests=MAX_REQUESTS,
        max_seconds=MAX_SECONDS,
    )
    load.start()
    try:
        load.wait_for("the first 40 whole answers", lambda c: c.ok >= 40, timeout=60)
        yield load
    finally:
        counts = load.stop()
        print(f"\n[traffic] {counts} in {load.seconds:.0f}s; versions per client: {load.versions()}")
        for problem in load.problems()[:10]:
            print(f"[traffic] {problem}")


def record(record_property: Any, name: str, counts: Any, seconds: float) -> None:
    for key, value in counts.as_dict().items():
        record_property(f"{name}_{key}", value)
    record_property(f"{name}_seconds", round(seconds, 1))
    print(f"\n[scenario {name}] {counts} over {seconds:.0f}s")


def assert_clean(load: Any, counts: Any) -> None:
    """No failed, no 503, no partial, no wrong answer: every request answered whole and right."""
    assert counts.sent > 0
    assert (counts.failed, counts.unavailable, counts.partial, counts.wrong) == (0, 0, 0, 0), (
        f"{counts}; first problems: {load.problems()[:10]}"
    )


def wait_ready(pm: ModuleType, product: Any, timeout: float = 300) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        status = pm.status(product.cp, product.ns)
        conds = {c["type"]: c["status"] for c in status.get("conditions", [])}
        layout, version = status.get("activeLayout", ""), status.get("activeVersion", "")
        if conds.get("Ready") != "True" or not layout:
            return None
        return status if pm.all_ready(product.cp, product.ns, SHARDS_OF[version], layout) else None

    result: dict[str, Any] = pm.wait_for("every pod of the cluster Ready", ready, timeout=timeout)
    return result


def test_a_dead_shard_replica_costs_no_request(
    product_diagnostics: Any, product_module: ModuleType, traffic: Any, record_property: Any
) -> None:
    """Delete one shard pod, then SIGKILL another shard container's main process (its host PID from the
    node's containerd): the router retries on the live replica; 0 failed requests."""
    pm, product = product_module, product_diagnostics
    cp, ns = product.cp, product.ns
    t0 = time.monotonic()
    status = wait_ready(pm, product)
    layout = status["activeLayout"]

    victim = pm.pods(cp, ns, pm.shard_selector(layout, 0))[0]
    pm.kubectl(cp, "delete", "pod", victim["metadata"]["name"], "-n", ns, "--wait=true", timeout=120)
    pm.wait_for(
        "the deleted replica replaced and Ready",
        lambda: pm.all_ready(cp, ns, SHARDS_OF["v1"], layout),
        timeout=180,
    )
    deleted_s = time.monotonic() - t0

    target = pm.pods(cp, ns, pm.shard_selector(layout, 1))[0]
    name = target["metadata"]["name"]
    restarts = target["status"]["containerStatuses"][0]["restartCount"]
    pid = pm.container_pid(product.node, target)
    os.kill(pid, signal.SIGKILL)  # the host sees every pod's processes; this is the container's PID 1

    def restarted() -> bool:
        pod = pm.kubectl_json(cp, "get", "pod", name, "-n", ns)
        return bool(
            pod["status"]["containerStatuses"][0]["restartCount"] > restarts
            and pm.all_ready(cp, ns, SHARDS_OF["v1"], layout)
        )

    pm.wait_for(f"{name} restarted after SIGKILL of PID {pid} and Ready", restarted, timeout=180)
    seen = traffic.counts().sent
    traffic.wait_for("40 more answers after the recovery", lambda c: c.sent >= seen + 40, timeout=60)
    counts = traffic.stop()
    record(record_property, "dead_replica", counts, time.monotonic() - t0)
    print(
        f"[scenario dead_replica] pod deleted and replaced after {deleted_s:.0f}s; killed PID {pid} of {name}"
    )
    assert_clean(traffic, counts)


# --- a slow, lossy link into one shard replica ------------------------------------------------------------

LINK_DELAY_MS, LINK_JITTER_MS, LINK_LOSS = 100, 20, 0.10  # as `netem delay 100ms 20ms loss 10%`
LINK_QUEUE = 7
LINK_TAG = "shardrec-e2e-slow-link"
BASELINE_S, FAULT_S, AFTER_S = 20.0, 30.0, 15.0
NETDELAY = ROOT / "e2e" / "tools" / "netdelay.py"
ROUTER_COUNTERS = (
    "shardrec_router_hedges_total",
    "shardrec_router_hedge_wins_total",
    "shardrec_router_retries_total",
    "shardrec_router_ejections_total",
)


class SlowLossyLink:
    """Every packet into one pod treated as `tc qdisc add dev <its host-side veth> root netem delay 100ms
    20ms loss 10%` would treat it (that qdisc's egress is the pod's ingress). This machine's kernel has no
    netem (CONFIG_NET_SCH_NETEM unset, no modules: tc says "Specified qdisc kind is unknown"), so the same
    fault is made from what it has, inside the pod's network namespace: an iptables rule drops 10% of what
    comes in on eth0 (`statistic --mode random`), the next one queues the rest to NFQUEUE, where
    e2e/tools/netdelay.py holds each packet 100 ms +- 20 ms (uniform, as netem's jitter) before accepting it.
    `--queue-bypass`: if the delayer dies, packets pass undelayed. Removed on exit, always: both rules
    (checked gone), then the delayer (by its PID; it releases what it holds first)."""

    def __init__(self, pm: ModuleType, node: Any, pod: dict[str, Any]) -> None:
        self.pm, self.node, self.pod = pm, node, pod
        tag = ["-m", "comment", "--comment", LINK_TAG]
        loss = ["-m", "statistic", "--mode", "random", "--probability", str(LINK_LOSS)]
        self.rules = [
            ["-i", "eth0", *loss, *tag, "-j", "DROP"],
            ["-i", "eth0", *tag, "-j", "NFQUEUE", "--queue-num", str(LINK_QUEUE), "--queue-bypass"],
        ]
        self.delayer: subprocess.Popen[str] | None = None
        self.packets: dict[str, int] = {}  # rule target -> packets it matched
        self.delayer_said = ""

    def in_pod(self, *argv: str) -> list[str]:
        return list(self.pm.pod_netns_argv(self.node, self.pod, *argv))

    def iptables(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = self.in_pod("iptables", "-w", "5", *args)
        return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=check)

    def __enter__(self) -> SlowLossyLink:
        try:
            argv = [sys.executable, str(NETDELAY), "--queue", str(LINK_QUEUE)]
            argv += ["--delay-ms", str(LINK_DELAY_MS), "--jitter-ms", str(LINK_JITTER_MS)]
            argv += ["--max-seconds", str(FAULT_S + 120)]
            self.delayer = subprocess.Popen(
                self.in_pod(*argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
            assert self.delayer.stdout is not None
            ready, _, _ = select.select([self.delayer.stdout], [], [], 30)
            first = self.delayer.stdout.readline() if ready else ""
            assert "bound" in first, f"netdelay did not bind its queue: {first!r}"
            for rule in self.rules:
                self.iptables("-A", "INPUT", *rule)
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self.remove()

    def counters(self) -> dict[str, int]:
        listing = self.iptables("-L", "INPUT", "-n", "-v", "-x", check=False).stdout
        rows = [line.split() for line in listing.splitlines() if LINK_TAG in line]
        return {row[2]: int(row[0]) for row in rows if len(row) > 2 and row[0].isdigit()}

    def remove(self) -> None:
        """The rules first (no new packet is queued), then the delayer; raises if a rule is left."""
        left: list[str] = []
        try:
            self.packets = self.counters()
            for rule in self.rules:
                for _ in range(5):  # bounded: a rule added twice is deleted twice
                    if self.iptables("-D", "INPUT", *rule, check=False).returncode != 0:
                        break
            listing = self.iptables("-S", "INPUT", check=False).stdout
            left = [line for line in listing.splitlines() if LINK_TAG in line]
        finally:
            if self.delayer is not None:
                self.delayer.terminate()  # its own PID (nsenter execs)
                try:
                    out, _ = self.delayer.communicate(timeout=15)
                except subprocess.TimeoutExpired:
                    self.delayer.kill()
                    out, _ = self.delayer.communicate(timeout=10)
                self.delayer_said = (out or "").strip()
                self.delayer = None
        assert not left, f"slow-link rules left in {self.pod['metadata']['name']}: {left}"


LINK_TEST_ADDR = "192.168.251.2"  # a scratch /30 inside two scratch namespaces: never routed anywhere
ECHO_SERVER = f"""
import socket, threading, time
server = socket.create_server(("{LINK_TEST_ADDR}", 7777))
server.settimeout(1)
def echo(conn):
    conn.settimeout(30)
    while data := conn.recv(1):
        conn.sendall(data)
end = time.monotonic() + 120
while time.monotonic() < end:
    try:
        conn, _ = server.accept()
    except TimeoutError:
        continue
    threading.Thread(target=echo, args=(conn,), daemon=True).start()
"""
ROUND_TRIPS = f"""
import socket, sys, time
for _ in range(50):
    try:
        conn = socket.create_connection(("{LINK_TEST_ADDR}", 7777), timeout=2)
        break
    except OSError:
        time.sleep(0.1)
conn.settimeout(10)
took = []
for _ in range(int(sys.argv[1])):
    began = time.monotonic()
    conn.sendall(b"x")
    conn.recv(1)
    took.append(time.monotonic() - began)
    time.sleep(0.05)
print(1000 * sorted(took)[len(took) // 2])
"""


@pytest.mark.node_scenarios
def test_the_slow_link_fault_delays_drops_and_leaves_nothing() -> None:
    """SlowLossyLink between two scratch network namespaces joined by a veth whose far end is named eth0
    (as in a pod); no node needed. The median TCP round trip goes from under a millisecond to about
    LINK_DELAY_MS, packets are dropped and delayed, and once removed no rule is left and round trips are
    fast again."""
    tag = f"{os.getpid() % 100000}"
    client, far = f"shr-link-a{tag}", f"shr-link-b{tag}"

    def sh(*argv: str) -> str:
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True).stdout

    def median_round_trip_ms(count: int) -> float:
        return float(sh("ip", "netns", "exec", client, sys.executable, "-c", ROUND_TRIPS, str(count)))

    def in_far(_node: Any, _pod: Any, *argv: str) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{far}", "--", *argv]

    fake_pm = ModuleType("fake_product")
    fake_pm.pod_netns_argv = in_far  # type: ignore[attr-defined]
    server: subprocess.Popen[str] | None = None
    try:
        sh("ip", "netns", "add", client)
        sh("ip", "netns", "add", far)
        sh("ip", "-n", client, "link", "add", "shr-a0", "type", "veth", "peer", "name", "eth0", "netns", far)
        sh("ip", "-n", client, "addr", "add", "192.168.251.1/30", "dev", "shr-a0")
        sh("ip", "-n", far, "addr", "add", f"{LINK_TEST_ADDR}/30", "dev", "eth0")
        for ns, dev in ((client, "shr-a0"), (far, "eth0")):
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        server = subprocess.Popen(["ip", "netns", "exec", far, sys.executable, "-c", ECHO_SERVER], text=True)
        before = median_round_trip_ms(20)
        link = SlowLossyLink(fake_pm, None, {"metadata": {"name": far}})
        with link:
            during = median_round_trip_ms(60)
        after = median_round_trip_ms(20)
        left = sh(*in_far(None, None, "iptables", "-S", "INPUT"))
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=10)
        for ns in (client, far):
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True, timeout=30, check=False)
    print(f"\n[slow link] median round trip {before:.1f} -> {during:.1f} -> {after:.1f} ms; {link.packets}")
    print(f"[slow link] {link.delayer_said}")
    assert before < 20 and after < 20, (before, after)
    assert LINK_DELAY_MS * 0.7 < during < LINK_DELAY_MS * 3, during
    assert link.packets.get("DROP", 0) > 0 and link.packets.get("NFQUEUE", 0) > 0, link.packets
    assert LINK_TAG not in left, left


def window_line(traffic: Any, counts: Any, since: float, until: float) -> tuple[str, float]:
    """A window's counts and its answered requests' p50 / p99 / max (ms); (the line, p99 ms)."""
    seconds = sorted(traffic.latencies(since, until))
    if not seconds:
        return f"{counts}; no answer", 0.0
    p99 = 1000 * seconds[min(len(seconds) - 1, int(len(seconds) * 0.99))]
    p50 = 1000 * seconds[len(seconds) // 2]
    return f"{counts}; p50 {p50:.0f} ms, p99 {p99:.0f} ms, max {1000 * seconds[-1]:.0f} ms", p99


@pytest.mark.node_scenarios
def test_a_slow_lossy_link_to_one_replica_costs_no_request(
    product_diagnostics: Any, product_module: ModuleType, traffic: Any, record_property: Any
) -> None:
    """One replica of shard 0 behind a link that delays every packet into it 100 ms +- 20 ms and loses 10%
    (SlowLossyLink: netem's fault, made with netfilter on this kernel), for 30 s of traffic, between 20 s
    before and 15 s after: its peer answers, the router hedges a shard request still unanswered after
    `hedging.afterMs` (20 ms) and routes by latency; 0 failed, 0 503, 0 partial, 0 wrong. The p99 of
    each window is printed and recorded, never asserted."""
    pm, product = product_module, product_diagnostics
    cp, ns = product.cp, product.ns
    t0 = time.monotonic()
    status = wait_ready(pm, product)
    target = pm.pods(cp, ns, pm.shard_selector(status["activeLayout"], 0))[0]
    name = target["metadata"]["name"]
    windows: list[tuple[str, float, float, Any]] = []
    metrics = [pm.router_metrics(cp, ns, ROUTER_COUNTERS)]

    def window(label: str, seconds: float) -> None:
        since, before = traffic.elapsed(), traffic.counts()
        time.sleep(seconds)
        windows.append((label, since, traffic.elapsed(), traffic.counts() - before))

    window("before", BASELINE_S)
    metrics.append(pm.router_metrics(cp, ns, ROUTER_COUNTERS))
    link = SlowLossyLink(pm, product.node, target)
    with link:
        window("during", FAULT_S)
    metrics.append(pm.router_metrics(cp, ns, ROUTER_COUNTERS))
    window("after", AFTER_S)
    metrics.append(pm.router_metrics(cp, ns, ROUTER_COUNTERS))
    counts = traffic.stop()
    record(record_property, "slow_link", counts, time.monotonic() - t0)
    print(f"[scenario slow_link] {name}: {link.packets} packets matched (DROP: lost, NFQUEUE: delayed)")
    print(f"[scenario slow_link] {link.delayer_said}")
    for (label, since, until, got), (m0, m1) in zip(windows, itertools.pairwise(metrics), strict=True):
        line, p99 = window_line(traffic, got, since, until)
        deltas = ", ".join(f"{k.removeprefix('shardrec_router_')} +{m1[k] - m0[k]:.0f}" for k in m1)
        print(f"[scenario slow_link] {label} ({until - since:.0f}s): {line}; routers: {deltas}")
        record_property(f"slow_link_{label}_p99_ms", round(p99))
        for key, value in got.as_dict().items():
            record_property(f"slow_link_{label}_{key}", value)
    assert link.packets.get("DROP", 0) > 0 and link.packets.get("NFQUEUE", 0) > 0, (
        f"the fault never touched {name}'s traffic: {link.packets}"
    )
    assert_clean(traffic, counts)


# --- the object store: s3:// source and artifacts in SeaweedFS, shard pods copying their partition ----------

S3_CLUSTER = "objstore"
S3_SHARDS = 2
S3_SOURCE = ("embeddings", "node/v1")  # bucket, prefix of the embeddings the build reads
S3_ARTIFACTS = ("artifacts", "shardrec")  # bucket, prefix of the store (layouts under <ns>/<cluster>/)
S3_SECRET = "s3-creds"


@contextmanager
def s3_credentials(server: Any) -> Iterator[None]:
    """AWS_* set while a store client is made (S3Store reads credentials from the environment only)."""
    saved = {name: os.environ.get(name) for name in server.client_env()}
    os.environ.update(server.client_env())
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def s3_store(server: Any, bucket: str, prefix: str) -> Any:
    from shardrec.serving.storage.stores import S3Settings, S3Store
    from shardrec.serving.storage.urls import S3Location

    with s3_credentials(server):
        return S3Store(S3Location(bucket, prefix), S3Settings(endpoint=server.endpoint, path_style=True))


def s3_cluster_manifest(ns: str, endpoint: str) -> dict[str, Any]:
    return {
        "apiVersion": "shardrec.io/v1alpha1",
        "kind": "RecommenderCluster",
        "metadata": {
            "name": S3_CLUSTER,
            "namespace": ns,
            "annotations": {"shardrec.io/allow-unauthenticated": "true"},
        },
        "spec": {
            "shards": S3_SHARDS,
            "replicasPerShard": 1,
            "imagePullPolicy": "Never",
            "router": {"replicas": 1, "consistency": "strict", "timeoutMs": 3000},
            "deleteArtifactsOnDelete": True,
            "index": {
                "version": "v1",
                "source": f"s3://{S3_SOURCE[0]}/{S3_SOURCE[1]}",
                "dimension": 32,
                "metric": "ip",
                "objectStore": {
                    "endpoint": endpoint,
                    "pathStyle": True,
                    "credentialsSecretRef": {"name": S3_SECRET},
                },
                "store": {"objectStore": {"url": f"s3://{S3_ARTIFACTS[0]}/{S3_ARTIFACTS[1]}"}},
            },
        },
    }


def s3_secret(ns: str, server: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": S3_SECRET, "namespace": ns},
        "stringData": {"access-key-id": server.access_key, "secret-access-key": server.secret_key},
    }


def layout_files(pm: ModuleType, cp: Any, ns: str, pod: str) -> list[str]:
    """The files under /layout in the shard container (the emptyDir the init container filled)."""
    script = "import os; print('\\n'.join(sorted(os.path.relpath(os.path.join(d, f), '/layout') "
    script += "for d, _, fs in os.walk('/layout') for f in fs)))"
    out: str = pm.kubectl(cp, "exec", pod, "-n", ns, "-c", "shard", "--", "python", "-c", script)
    return out.split()


def test_an_object_store_cluster_builds_per_shard_fetches_partitions_and_serves(
    product_diagnostics: Any, product_module: ModuleType, seaweed_on_node: Any, record_property: Any
) -> None:
    """A RecommenderCluster with an s3:// source and an object-store location (SeaweedFS on the pod
    bridge's gateway, credentials from a Secret) beside the PVC one, same operator: the Indexed build Job
    really builds each shard on the node and publishes layout.json last; each shard pod's init container
    copies only its own partition into an emptyDir (no PersistentVolumeClaim anywhere); the router fetches
    the user table itself; the router Service's ClusterIP answers with recall@10 >= 0.95; the secret
    appears in no status, Event or log; deleting the cluster deletes its layout from the bucket."""
    case = S3Case(product_module, product_diagnostics, seaweed_on_node)
    pm, cp, ns, s3 = case.pm, case.cp, case.ns, case.s3
    t0 = time.monotonic()
    for bucket in (S3_SOURCE[0], S3_ARTIFACTS[0]):
        s3.create_bucket(bucket)
    source = s3_store(s3, *S3_SOURCE)
    work = Path(tempfile.mkdtemp(prefix="shardrec-s3-emb-"))
    try:
        data = pm.write_test_data(work / "v1", seed=21, item_prefix="s3-")
        for path in sorted((work / "v1").iterdir()):
            source.upload(path.name, path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    pm.kubectl(cp, "apply", "-f", "-", input=json.dumps(s3_secret(ns, s3)))
    applied = time.monotonic()
    pm.kubectl(cp, "apply", "-f", "-", input=json.dumps(s3_cluster_manifest(ns, s3.endpoint)))
    try:
        layout = case.wait_ready()
        ready_s = time.monotonic() - applied
        keys, build_pods = case.check_build(layout)
        shard_pods = case.check_shard_pods(layout)
        recall, queries = case.recall(data)
        leaks = case.secret_leaks([*build_pods, *shard_pods])
    except BaseException:
        print(pm.diagnostics(cp, ns))
        raise
    finally:
        deleted = time.monotonic()
        cp.kubectl(
            "delete", "recommendercluster", S3_CLUSTER, "-n", ns, "--ignore-not-found", "--wait=true",
            "--timeout=120s", check=False, timeout=150,
        )  # fmt: skip
        delete_s = time.monotonic() - deleted
        cp.kubectl("delete", "secret", S3_SECRET, "-n", ns, "--ignore-not-found", check=False)
    left = s3_store(s3, S3_ARTIFACTS[0], f"{S3_ARTIFACTS[1]}/{ns}/{S3_CLUSTER}").list_keys("")
    total = time.monotonic() - t0
    for name, value in (("apply_to_ready_s", ready_s), ("delete_s", delete_s), ("total_s", total)):
        record_property(f"objstore_{name}", round(value, 1))
    record_property("objstore_recall", recall)
    print(
        f"\n[scenario objstore] s3 endpoint {s3.endpoint}; CR apply to Ready {ready_s:.0f}s; "
        f"layout {layout}: {len(keys)} objects; recall@10 {recall:.3f} over {queries} queries; "
        f"cluster deleted in {delete_s:.0f}s, {len(left)} objects left; {total:.0f}s in all"
    )
    assert recall >= 0.95, recall
    assert not leaks, f"the S3 secret key appears in: {leaks}"
    assert left == [], f"deleteArtifactsOnDelete left objects in the bucket: {left[:10]}"


@dataclass
class S3Case:
    """The object-store cluster's checks (one deployment's operator, another RecommenderCluster)."""

    pm: ModuleType
    product: Any
    s3: Any

    @property
    def cp(self) -> Any:
        return self.product.cp

    @property
    def ns(self) -> str:
        return str(self.product.ns)

    def wait_ready(self) -> str:
        """The active layout once the cluster is Ready (a Failed phase fails at once)."""

        def ready() -> str | None:
            got = self.pm.kubectl_json(self.cp, "get", "recommendercluster", S3_CLUSTER, "-n", self.ns)
            status = got.get("status", {})
            if status.get("phase") == "Failed":
                raise AssertionError(f"cluster {S3_CLUSTER} Failed: {status}")
            conds = {c["type"]: c["status"] for c in status.get("conditions", [])}
            return status.get("activeLayout") if conds.get("Ready") == "True" else None

        return str(self.pm.wait_for(f"RecommenderCluster {S3_CLUSTER} Ready", ready, timeout=420))

    def check_build(self, layout: str) -> tuple[list[str], list[dict[str, Any]]]:
        """An Indexed Job, one pod per shard, all done on the real node; the layout in the bucket: every
        shard's folder and layout.json. Returns (the layout's keys, the build pods)."""
        pm, cp, ns = self.pm, self.cp, self.ns
        job = pm.kubectl_json(cp, "get", "job", f"{S3_CLUSTER}-{layout}-build", "-n", ns)
        spec = job["spec"]
        assert (spec.get("completionMode"), spec["completions"]) == ("Indexed", S3_SHARDS), spec
        assert job["status"].get("succeeded") == S3_SHARDS, job["status"]
        build_pods: list[dict[str, Any]] = pm.pods(cp, ns, f"job-name={job['metadata']['name']}")
        assert {p["spec"]["nodeName"] for p in build_pods} == {self.product.node.name}
        prefix = f"{S3_ARTIFACTS[1]}/{ns}/{S3_CLUSTER}/layouts/{layout}"
        keys: list[str] = s3_store(self.s3, S3_ARTIFACTS[0], prefix).list_keys("")
        assert "layout.json" in keys, keys
        for shard in range(S3_SHARDS):
            assert any(k.startswith(f"{shard_dir_name(shard)}/") for k in keys), (shard, keys)
        return keys, build_pods

    def check_shard_pods(self, layout: str) -> list[dict[str, Any]]:
        """Each shard pod: on the node, no claim, its init container (the fetch) exited 0, its containers
        RUNNING in containerd, and /layout holds its own shard's folder and no other."""
        pm, cp, ns, node = self.pm, self.cp, self.ns, self.product.node
        selector = ",".join(
            [
                f"shardrec.io/cluster={S3_CLUSTER}",
                "app.kubernetes.io/component=shard",
                f"shardrec.io/layout={layout}",
            ]
        )
        shard_pods = [p for p in pm.pods(cp, ns, selector) if pm.pod_ready(p)]
        assert len(shard_pods) == S3_SHARDS, [p["metadata"]["name"] for p in shard_pods]
        tasks = node.running_tasks()
        for pod in shard_pods:
            name, shard = pod["metadata"]["name"], int(pod["metadata"]["labels"]["shardrec.io/shard"])
            assert pod["spec"]["nodeName"] == node.name
            volumes = pod["spec"].get("volumes", [])
            assert not [v for v in volumes if "persistentVolumeClaim" in v], volumes
            (init,) = pod["status"]["initContainerStatuses"]
            assert init["state"].get("terminated", {}).get("exitCode") == 0, init
            for container in pod["status"]["containerStatuses"]:
                assert tasks.get(container["containerID"].split("://", 1)[1]) == "RUNNING", name
            files = layout_files(pm, cp, ns, name)
            own = f"{shard_dir_name(shard)}/"
            others = [f for f in files if f.startswith("shard-") and not f.startswith(own)]
            assert not others, f"{name} (shard {shard}) holds other shards' files: {others}"
            assert any(f.startswith(own) for f in files), f"{name}: {files}"
        return shard_pods

    def recall(self, data: Any) -> tuple[float, int]:
        """recall@10 against exact search of 10 user and 10 vector queries through the router's ClusterIP."""
        pm = self.pm
        service = pm.kubectl_json(self.cp, "get", "service", f"{S3_CLUSTER}-router", "-n", self.ns)
        url = f"http://{service['spec']['clusterIP']}:{service['spec']['ports'][0]['port']}/v1/recommend"
        rng = np.random.default_rng(37)
        queries: list[tuple[dict[str, Any], Any]] = [
            ({"user_id": data.user_ids[u], "k": pm.K}, data.users[u]) for u in range(0, pm.USERS, 20)
        ]
        for _ in range(10):
            vector = rng.standard_normal(pm.DIM).astype(np.float32)
            queries.append(({"vector": [float(x) for x in vector], "k": pm.K}, vector))
        hits = 0
        for body, vector in queries:
            answer = pm.post(url, body)
            assert not answer["partial"], answer
            assert answer["shards"] == {"answered": S3_SHARDS, "total": S3_SHARDS}, answer
            got = {entry["item_id"] for entry in answer["items"]}
            hits += len(got & set(pm.exact_top(data.items, data.item_ids, vector)))
        return hits / (pm.K * len(queries)), len(queries)

    def secret_leaks(self, pods: list[dict[str, Any]]) -> list[str]:
        """Where the secret key shows: the cluster object (status), the namespace's Events, pod logs."""
        sources = [
            ("get", "recommendercluster", S3_CLUSTER, "-n", self.ns, "-o", "json"),
            ("get", "events", "-n", self.ns, "-o", "json"),
            *(("logs", p["metadata"]["name"], "-n", self.ns, "--all-containers") for p in pods),
        ]
        return [
            " ".join(args[:3])
            for args in sources
            if self.s3.secret_key in self.cp.kubectl(*args, check=False, timeout=60).stdout
        ]


@pytest.mark.node_scenarios
def test_roll_v1_to_v2_and_two_to_three_shards_with_the_operator_pod_deleted_mid_rollout(
    product_diagnostics: Any, product_module: ModuleType, traffic: Any, record_property: Any
) -> None:
    pm, product = product_module, product_diagnostics
    cp, ns = product.cp, product.ns
    before = wait_ready(pm, product)
    assert before["activeVersion"] == "v1", before
    old_layout = before["activeLayout"]
    t0 = time.monotonic()
    print(f"\n[scenario rollout] patched to v2 x 3 shards at traffic time {traffic.elapsed():.1f}s")
    pm.patch_spec(cp, ns, {"shards": SHARDS_OF["v2"], "index": pm.index_spec("v2")})

    # Mid-rollout: the new layout exists (its build Job or its shards), the router still serves v1.
    pm.wait_for(
        "the v2 layout under way",
        lambda: (
            (s := pm.status(cp, ns)).get("targetLayout") not in ("", old_layout)
            and s.get("activeLayout") == old_layout
            and pm.kubectl_json(cp, "get", "jobs", "-n", ns)["items"]
        ),
        timeout=120,
    )
    operator = next(p for p in pm.pods(cp, ns, pm.operator_selector()) if pm.pod_ready(p))
    pm.kubectl(cp, "delete", "pod", operator["metadata"]["name"], "-n", ns, "--wait=false")
    deleted_at = time.monotonic() - t0
    new_operator = pm.wait_for(
        "a new operator pod Ready",
        lambda: next(
            (
                p
                for p in pm.pods(cp, ns, pm.operator_selector())
                if pm.pod_ready(p) and p["metadata"]["name"] != operator["metadata"]["name"]
            ),
            None,
        ),
        timeout=180,
    )
    operator_back = time.monotonic() - t0

    after = pm.wait_for(
        "v2 active and Ready",
        lambda: (
            (s := pm.status(cp, ns)).get("activeVersion") == "v2"
            and any(c["type"] == "Ready" and c["status"] == "True" for c in s.get("conditions", []))
            and s
        ),
        timeout=600,
    )
    switched = time.monotonic() - t0
    traffic.wait_for(
        "every client answered by v2", lambda c: all(v[-1:] == ["v2"] for v in traffic.versions()), timeout=60
    )
    pm.wait_for(
        f"the old layout {old_layout} retired (its pods gone)",
        lambda: not pm.pods(cp, ns, pm.shard_selector(old_layout)),
        timeout=pm.ROLLBACK_WINDOW_S + 300,
    )
    retired = time.monotonic() - t0
    seen = traffic.counts().sent
    traffic.wait_for("40 more answers after v1 is gone", lambda c: c.sent >= seen + 40, timeout=60)
    counts = traffic.stop()
    record(record_property, "rollout", counts, time.monotonic() - t0)
    print(
        f"[scenario rollout] operator pod deleted {deleted_at:.0f}s after the patch, new one "
        f"({new_operator['metadata']['name']}) Ready at {operator_back:.0f}s; v2 active at {switched:.0f}s; "
        f"{old_layout} gone at {retired:.0f}s; layout {after['activeLayout']}"
    )
    assert_clean(traffic, counts)
    versions = traffic.versions()
    assert all(v == ["v1", "v2"] for v in versions), f"a client saw v1 after v2, or never v2: {versions}"
    assert len(pm.pods(cp, ns, pm.shard_selector(after["activeLayout"]))) == 3 * pm.REPLICAS


# --- item writes carried through a version and shard-count change -----------------------------------------

CARRY_CLUSTER = "carry"  # a second RecommenderCluster beside the product's, same operator and store claim
WRITE_CLASS = "node-write-log"  # a StorageClass name without an object: static PVs only (no provisioner)
WRITE_PVS = 2 * 2 + 3 * 2  # v1: 2 shards x 2 replicas, v2: 3 x 2; one RWO write-log claim per replica
WRITE_KEY_NAME = "e2e-writer"
UPSERTS, DELETE_EVERY = 300, 10  # 300 upserts of new ids; after every 10th, a delete of an earlier one: 30
WRITE_RATE = 2.0  # writes per second (one writer, in order)
WRITE_HOLD_AT = 270  # the last ops wait for the switch, so some land on the new layout whatever its pace
WRITE_RETRY_S = 120.0  # one write retried on 503 (Retry-After) or no answer, at most this long
WRITE_SCALE = 3.0  # written vectors are 3x a standard normal: each is its own nearest neighbour by far
CARRY_READ_CLIENTS, CARRY_READ_RATE = 4, 10.0
# v1 stays kept (its pods run, its leaders fenced) from the roll to v2 until the rollback: a carry back needs
# the kept layout's pods. The rollback test shortens it once the carry back is done, so v2 then goes.
CARRY_ROLLBACK_WINDOW_S = 1800
# The rollback's writes, all on v2 first: BACK_NEW upserts of new ids (`b-`); after every
# BACK_REPLACE_EVERY-th a replacement (new vector) of an item v1 already has, alternately one of v1's own
# items and a live `w-` item of the roll to v2; after every BACK_DELETE_EVERY-th a delete of an earlier
# `b-` id and, every other time, of the v1 item replaced last. 80 + 20 + 8 + 4 = 112 ops.
BACK_NEW, BACK_REPLACE_EVERY, BACK_DELETE_EVERY = 80, 4, 10
BACK_HOLD_AT = 100  # the last 12 ops wait until the routers serve v1 again


@dataclass
class WriteOp:
    """One write and every answer it got, in order: (seconds since the writer started, HTTP status,
    error code or layout that acknowledged it)."""

    item_id: str
    kind: str  # "upsert" | "delete"
    vector: list[float] | None = None
    attempts: list[tuple[float, int, str]] = field(default_factory=list)
    acked: dict[str, Any] | None = None  # the acknowledging answer (layout, shard, sequence, token)

    @property
    def statuses(self) -> list[int]:
        return [status for _, status, _ in self.attempts]


def forward_ops(dim: int) -> list[WriteOp]:
    """The roll to v2's writes: UPSERTS upserts of new ids (`w-`) with a delete of an earlier one after
    every DELETE_EVERY-th."""
    rng = np.random.default_rng(41)
    ops: list[WriteOp] = []
    for number in range(UPSERTS):
        vector = (rng.standard_normal(dim) * WRITE_SCALE).astype(np.float32)
        ops.append(WriteOp(f"w-{number}", "upsert", [float(x) for x in vector]))
        if number % DELETE_EVERY == DELETE_EVERY - 1:
            ops.append(WriteOp(f"w-{number - DELETE_EVERY // 2}", "delete"))
    return ops


def last_acked(ops: list[WriteOp]) -> dict[str, WriteOp]:
    """Each id's last acknowledged op, in writing order (one writer, in order): its state now."""
    state: dict[str, WriteOp] = {}
    for op in ops:
        if op.acked is not None:
            state[op.item_id] = op
    return state


def rollback_ops(dim: int, earlier: list[WriteOp], v1_ids: list[str]) -> list[WriteOp]:
    """The rollback's writes (BACK_NEW, ...): new ids, replacements of items v1 holds (its own, and
    live `w-` items of the roll to v2, acknowledged in `earlier`) and deletes, v1's own items included."""
    rng = np.random.default_rng(43)
    live = [item for item, op in last_acked(earlier).items() if op.kind == "upsert"]
    ops: list[WriteOp] = []
    replaced_v1: list[str] = []

    def upsert(item_id: str) -> None:
        vector = (rng.standard_normal(dim) * WRITE_SCALE).astype(np.float32)
        ops.append(WriteOp(item_id, "upsert", [float(x) for x in vector]))

    for number in range(BACK_NEW):
        upsert(f"b-{number}")
        if number % BACK_REPLACE_EVERY == BACK_REPLACE_EVERY - 1:
            turn = number // BACK_REPLACE_EVERY
            if turn % 2 == 0 or not live:
                replaced_v1.append(v1_ids[(turn * 37 + 11) % len(v1_ids)])
                upsert(replaced_v1[-1])
            else:
                upsert(live[(turn * 7) % len(live)])
        if number % BACK_DELETE_EVERY == BACK_DELETE_EVERY - 1:
            ops.append(WriteOp(f"b-{number - BACK_DELETE_EVERY // 2}", "delete"))
            if (number // BACK_DELETE_EVERY) % 2 == 1 and replaced_v1:
                ops.append(WriteOp(replaced_v1.pop(), "delete"))
    return ops


class Writer:
    """One bounded writer thread: `ops` in order (forward_ops, rollback_ops), paced at WRITE_RATE, each
    retried while the router answers 503 (its Retry-After) or nothing at all (a PUT or DELETE of one id is
    idempotent), for at most WRITE_RETRY_S; any other answer ends it unacknowledged. Ops from `hold_at` on
    wait for `release` (set once the router serves the new layout), bounded by max_seconds. Every attempt
    is recorded."""

    def __init__(
        self, base: str, key: str, ops: list[WriteOp], hold_at: int, max_seconds: float = 900.0
    ) -> None:
        self.base, self.headers = base.rstrip("/"), {"X-API-Key": key, "Content-Type": "application/json"}
        self.max_seconds, self.hold_at = max_seconds, hold_at
        self.release = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.ops = ops
        self.done = 0  # ops finished (acknowledged or given up)
        self._thread = threading.Thread(target=self._run, name="writer", daemon=True)
        self._started = 0.0

    def start(self) -> None:
        self._started = time.monotonic()
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self.release.set()
        self._thread.join(timeout=timeout)

    def elapsed(self) -> float:
        return time.monotonic() - self._started

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def acked(self) -> int:
        with self._lock:
            return sum(op.acked is not None for op in self.ops)

    def _send(self, op: WriteOp) -> tuple[int, dict[str, Any], float]:
        url = f"{self.base}/v1/items/{urllib.parse.quote(op.item_id, safe='')}"
        data = json.dumps({"vector": op.vector}).encode() if op.kind == "upsert" else None
        method = "PUT" if op.kind == "upsert" else "DELETE"
        request = urllib.request.Request(url, data=data, headers=self.headers, method=method)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        retry_after = 1.0
        try:
            with opener.open(request, timeout=15) as response:
                return int(response.status), json.loads(response.read()), 0.0
        except urllib.error.HTTPError as error:
            try:
                body = json.loads(error.read())
            except ValueError:
                body = {}
            retry_after = float(error.headers.get("Retry-After") or 1.0)
            return int(error.code), body if isinstance(body, dict) else {}, retry_after
        except (OSError, ValueError) as error:
            return 0, {"error": {"code": type(error).__name__, "message": str(error)}}, retry_after

    def _one(self, op: WriteOp, deadline: float) -> None:
        first = time.monotonic()
        while not self._stop.is_set():
            status, body, retry_after = self._send(op)
            code = str(body.get("layout") or body.get("error", {}).get("code", "")) if body else ""
            with self._lock:
                op.attempts.append((round(self.elapsed(), 2), status, code))
                if status == 200:
                    op.acked = body
            if status == 200:
                return
            if (
                status not in (0, 503)
                or time.monotonic() - first > WRITE_RETRY_S
                or time.monotonic() > deadline
            ):
                return
            self._stop.wait(min(max(retry_after, 0.2), 2.0))

    def _run(self) -> None:
        deadline = self._started + self.max_seconds
        period = 1.0 / WRITE_RATE
        for number, op in enumerate(self.ops):
            if number == self.hold_at:
                self.release.wait(timeout=max(0.0, deadline - time.monotonic()))
            if self._stop.is_set() or time.monotonic() >= deadline:
                return
            began = time.monotonic()
            self._one(op, deadline)
            with self._lock:
                self.done += 1
            self._stop.wait(max(0.0, period - (time.monotonic() - began)))

    def summary(self) -> dict[str, Any]:
        with self._lock:
            ops = list(self.ops)
        upserts = [op for op in ops if op.kind == "upsert"]
        deletes = [op for op in ops if op.kind == "delete"]
        layouts: dict[str, int] = {}
        for op in ops:
            if op.acked is not None:
                layouts[str(op.acked.get("layout"))] = layouts.get(str(op.acked.get("layout")), 0) + 1
        retried = [op for op in ops if len(op.attempts) > 1]
        return {
            "upserts_sent": sum(bool(op.attempts) for op in upserts),
            "upserts_acked": sum(op.acked is not None for op in upserts),
            "deletes_sent": sum(bool(op.attempts) for op in deletes),
            "deletes_acked": sum(op.acked is not None for op in deletes),
            "attempts": sum(len(op.attempts) for op in ops),
            "answers_503": sum(op.statuses.count(503) for op in ops),
            "no_answer": sum(op.statuses.count(0) for op in ops),
            "retried_ops": len(retried),
            "retried_then_acked": sum(op.acked is not None for op in retried),
            "acked_per_layout": layouts,
        }


def carry_store_manifests(ns: str, node_name: str, root: Path) -> list[dict[str, Any]]:
    """WRITE_PVS hostPath PersistentVolumes of WRITE_CLASS on the real node, one directory each (owned by
    the pods' UID: the kubelet applies no fsGroup to hostPath). RWO, Retain: a write-log claim binds one
    and the volume is never reused afterwards."""
    manifests: list[dict[str, Any]] = []
    for number in range(WRITE_PVS):
        path = root / f"wl-{number}"
        manifests.append(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": f"{ns}-wl-{number}", "labels": {"shardrec-e2e/write-log": ns}},
                "spec": {
                    "capacity": {"storage": "1Gi"},
                    "accessModes": ["ReadWriteOnce"],
                    "persistentVolumeReclaimPolicy": "Retain",
                    "storageClassName": WRITE_CLASS,
                    "hostPath": {"path": str(path), "type": "Directory"},
                    "nodeAffinity": {
                        "required": {
                            "nodeSelectorTerms": [
                                {
                                    "matchExpressions": [
                                        {
                                            "key": "kubernetes.io/hostname",
                                            "operator": "In",
                                            "values": [node_name],
                                        }
                                    ]
                                }
                            ]
                        }
                    },
                },
            }
        )
    return manifests


def carry_cluster_manifest(pm: ModuleType, ns: str, secret: str) -> dict[str, Any]:
    """v1 on 2 shards x 2 replicas, 1 router, strict, writes on (ack all, claims of WRITE_CLASS), API keys
    from `secret`, a kept layout kept CARRY_ROLLBACK_WINDOW_S; the same store claim and embeddings as the
    product's cluster."""
    return {
        "apiVersion": "shardrec.io/v1alpha1",
        "kind": "RecommenderCluster",
        "metadata": {"name": CARRY_CLUSTER, "namespace": ns},
        "spec": {
            "shards": SHARDS_OF["v1"],
            "replicasPerShard": pm.REPLICAS,
            "imagePullPolicy": "Never",
            "router": {"replicas": 1, "consistency": "strict", "timeoutMs": pm.ROUTER_TIMEOUT_MS},
            "rollout": {"rollbackWindowSeconds": CARRY_ROLLBACK_WINDOW_S},
            "auth": {"apiKeysSecretRef": {"name": secret}},
            "writes": {
                "enabled": True,
                "ack": "all",
                "logVolume": {"size": "1Gi", "storageClassName": WRITE_CLASS},
            },
            "index": pm.index_spec("v1"),
        },
    }


class CarryWatch:
    """Polls (every ~1 s, bounded by stop()) the carry cluster's status and its carrier pods' reports;
    keeps each change with the seconds since start: the carry's timeline."""

    def __init__(self, pm: ModuleType, cp: Any, ns: str) -> None:
        self.pm, self.cp, self.ns = pm, cp, ns
        self.transitions: list[str] = []
        self.reports: dict[str, dict[str, Any]] = {}  # to_layout -> the last report seen
        self.phases: list[str] = []
        self.status: dict[str, Any] = {}
        self.back_carries: dict[tuple[str, str], dict[str, Any]] = {}  # (layout, fromLayout) -> last seen
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="carry-watch", daemon=True)
        self._started = 0.0

    def start(self) -> None:
        self._started = time.monotonic()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _note(self, line: str) -> None:
        self.transitions.append(f"{time.monotonic() - self._started:6.1f}s {line}")

    def _run(self) -> None:
        from shardrec.api.carry import CARRY_PROGRESS_ANNOTATION

        last_status: tuple[Any, ...] = ()
        selector = f"shardrec.io/cluster={CARRY_CLUSTER},app.kubernetes.io/component=carrier"
        while not self._stop.is_set():
            try:
                status = dict(
                    self.pm.kubectl_json(
                        self.cp, "get", "recommendercluster", CARRY_CLUSTER, "-n", self.ns
                    ).get("status")
                    or {}
                )
                self.status = status
                for carry in status.get("carries", []):
                    if carry.get("back"):
                        self.back_carries[(carry["layout"], carry.get("fromLayout", ""))] = carry
                seen = (
                    status.get("activeLayout"),
                    status.get("targetLayout"),
                    tuple(b.get("predicate") for b in status.get("blockedBy", [])),
                    json.dumps(status.get("carries", []), sort_keys=True),
                )
                if seen != last_status:
                    last_status = seen
                    self._note(
                        f"active {seen[0]} target {seen[1]} blockedBy {list(seen[2])} carries {seen[3]}"
                    )
                for pod in self.pm.pods(self.cp, self.ns, selector):
                    raw = pod["metadata"].get("annotations", {}).get(CARRY_PROGRESS_ANNOTATION)
                    if not raw:
                        continue
                    report = json.loads(raw)
                    key = (
                        report.get("phase"),
                        report.get("caught_up"),
                        report.get("handed_over"),
                        report.get("done"),
                    )
                    before = self.reports.get(report["to_layout"])
                    old = before and (
                        before.get("phase"),
                        before.get("caught_up"),
                        before.get("handed_over"),
                        before.get("done"),
                    )
                    self.reports[report["to_layout"]] = report
                    if key != old:
                        self.phases.append(str(report.get("phase")))
                        self._note(
                            f"carrier {pod['metadata']['name']}: phase {key[0]} cut {report.get('cut')} "
                            f"after {report.get('after')} caught_up {key[1]} forwarded "
                            f"{report.get('forwarded')} handed_over {key[2]} done {key[3]} "
                            f"message {report.get('message', '')[:200]!r}"
                        )
            except (AssertionError, ValueError, KeyError) as error:  # a kubectl hiccup: next poll
                self._note(f"poll failed: {str(error)[:200]}")
            self._stop.wait(1.0)


@dataclass
class CarryCluster:
    """The writes cluster of the carry scenario: its API key (read,write), its router's base URL (the
    Service's ClusterIP) and the embeddings of each version."""

    cp: Any
    ns: str
    key: str
    base: str
    data: dict[str, Any]
    written: list[WriteOp] = field(default_factory=list)  # every write so far, in order
    rolled: tuple[str, str] | None = None  # (v1, v2) layouts once the roll to v2 passed, v1 kept

    def status(self, pm: ModuleType) -> dict[str, Any]:
        got: dict[str, Any] = (
            pm.kubectl_json(self.cp, "get", "recommendercluster", CARRY_CLUSTER, "-n", self.ns).get("status")
            or {}
        )
        return got


@pytest.fixture(scope="class")
def carry_cluster(product: Any, product_module: ModuleType) -> Iterator[CarryCluster]:
    """The `carry` RecommenderCluster (writes on, API keys, v1 kept CARRY_ROLLBACK_WINDOW_S) Ready on v1,
    its write-log volumes on the node, shared by the roll to v2 and the rollback (TestItemWritesCarried);
    everything removed afterwards (the cluster, its Secret, the PVs and their directories)."""
    pm = product_module
    cp, ns = product.cp, product.ns
    root = Path(tempfile.mkdtemp(prefix="shardrec-write-logs-"))
    root.chmod(0o755)
    for number in range(WRITE_PVS):
        (root / f"wl-{number}").mkdir()
    pm.chown_tree(root, pm.RUN_AS)
    key = os.urandom(16).hex()  # what a client sends; the Secret's line is `<name>:<key> read,write`
    secret = f"{CARRY_CLUSTER}-api-keys"
    try:
        for manifest in carry_store_manifests(ns, product.node.name, root):
            pm.kubectl(cp, "apply", "-f", "-", input=json.dumps(manifest))
        pm.kubectl(
            cp,
            "create",
            "secret",
            "generic",
            secret,
            "-n",
            ns,
            f"--from-literal=api-keys={WRITE_KEY_NAME}:{key} read,write\n",
        )
        pm.kubectl(cp, "apply", "-f", "-", input=json.dumps(carry_cluster_manifest(pm, ns, secret)))

        def ready() -> str | None:
            got = pm.kubectl_json(cp, "get", "recommendercluster", CARRY_CLUSTER, "-n", ns)
            status = got.get("status", {})
            if status.get("phase") == "Failed":
                raise AssertionError(f"cluster {CARRY_CLUSTER} Failed: {status}")
            conds = {c["type"]: c["status"] for c in status.get("conditions", [])}
            return status.get("activeLayout") if conds.get("Ready") == "True" else None

        try:
            pm.wait_for(f"RecommenderCluster {CARRY_CLUSTER} Ready on v1", ready, timeout=420)
        except BaseException:
            print(pm.diagnostics(cp, ns))
            raise
        service = pm.kubectl_json(cp, "get", "service", f"{CARRY_CLUSTER}-router", "-n", ns)
        base = f"http://{service['spec']['clusterIP']}:{service['spec']['ports'][0]['port']}"
        yield CarryCluster(cp, ns, key, base, product.data)
    finally:
        cp.kubectl(
            "delete", "recommendercluster", CARRY_CLUSTER, "-n", ns, "--ignore-not-found", "--wait=true",
            "--timeout=180s", check=False, timeout=200,
        )  # fmt: skip
        cp.kubectl("delete", "secret", secret, "-n", ns, "--ignore-not-found", check=False)
        cp.kubectl(
            "delete", "pvc", "-n", ns, "-l", f"shardrec.io/cluster={CARRY_CLUSTER}", "--ignore-not-found",
            "--wait=false", check=False,
        )  # fmt: skip
        cp.kubectl("delete", "pv", "-l", f"shardrec-e2e/write-log={ns}", "--wait=false", check=False)
        shutil.rmtree(root, ignore_errors=True)


def carry_shard_selector(layout: str) -> str:
    return (
        f"shardrec.io/cluster={CARRY_CLUSTER},app.kubernetes.io/component=shard,shardrec.io/layout={layout}"
    )


def carry_version_check(cluster: CarryCluster, written: set[str]) -> Callable[[Any], str | None]:
    """`version_check` for the writes cluster: items of the labelled version or ids the writers write
    (`written`, into whichever layout serves), the labelled version's shard total."""
    ids = {version: set(data.item_ids) for version, data in cluster.data.items()}

    def check(answer: Any) -> str | None:
        version = answer.version
        if version not in ids:
            return f"unknown index_version {version!r}"
        items = [entry["item_id"] for entry in answer.body.get("items", [])]
        foreign = [item for item in items if item not in ids[version] and item not in written]
        if foreign or len(items) != 10:
            return f"answer labelled {version} has {len(items)} items, not of {version}: {foreign[:3]}"
        total = answer.body.get("shards", {}).get("total")
        if total != SHARDS_OF[version]:
            return f"answer labelled {version} covers {total} shards, {version} has {SHARDS_OF[version]}"
        return None

    return check


def check_written(traffic_module: ModuleType, cluster: CarryCluster, ops: list[WriteOp]) -> dict[str, Any]:
    """Through the router, on the layout it serves now, each id's state after its last acknowledged op
    (`ops`: every write so far, in order): an upsert is found by id (`/v1/similar` answers for it) and is
    the first of the top 10 for its own (last) vector; a delete is absent (`/v1/similar` 404 unknown_item,
    not in the top 10 for the vector it had). Returns the counts and the first problems."""
    headers = {"X-API-Key": cluster.key}
    state = last_acked(ops)
    deleted = {item for item, op in state.items() if op.kind == "delete"}
    vectors = {op.item_id: op.vector for op in ops if op.kind == "upsert" and op.acked is not None}
    live = [op for op in state.values() if op.kind == "upsert"]
    problems: list[str] = []
    found = nearest = absent = 0
    versions: set[str] = set()

    def ask(path: str, body: dict[str, Any]) -> Any:
        answer = traffic_module.post(f"{cluster.base}{path}", body, headers, 15.0)
        if answer.status == 200 and answer.version:
            versions.add(answer.version)
        return answer

    for op in live:
        similar = ask("/v1/similar", {"item_id": op.item_id, "k": 1})
        if similar.status == 200:
            found += 1
        else:
            problems.append(f"{op.item_id} (acked {op.acked}): /v1/similar {similar.status} {similar.body}")
        top = ask("/v1/recommend", {"vector": op.vector, "k": 10})
        items = [entry["item_id"] for entry in top.body.get("items", [])] if top.status == 200 else []
        if items[:1] == [op.item_id]:
            nearest += 1
        else:
            problems.append(f"{op.item_id}: its own vector's top 10 is {top.status} {items}")
    for item_id in sorted(deleted):
        similar = ask("/v1/similar", {"item_id": item_id, "k": 1})
        top = ask("/v1/recommend", {"vector": vectors[item_id], "k": 10})
        items = [entry["item_id"] for entry in top.body.get("items", [])] if top.status == 200 else []
        code = (
            similar.body.get("error", {}).get("code") if isinstance(similar.body.get("error"), dict) else None
        )
        if similar.status == 404 and top.status == 200 and item_id not in items:
            absent += 1
        else:
            problems.append(
                f"deleted {item_id}: /v1/similar {similar.status} {code}; top 10 {top.status} {items}"
            )
    return {
        "live": len(live),
        "found": found,
        "nearest": nearest,
        "deleted": len(deleted),
        "absent": absent,
        "versions": sorted(versions),
        "problems": problems,
    }


@dataclass
class CarryRun:
    """One carry scenario's moving parts (carry_run): reads, the writer and the watch, started together;
    `roll()` patches the spec to `version` and waits through every step; the seconds of each step (since
    the start) are kept."""

    name: str
    pm: ModuleType
    cluster: CarryCluster
    reads: Any
    writer: Writer
    watch: CarryWatch
    version: str  # what the spec goes to
    old_layout: str  # what serves before
    new_layout: str = ""
    at: dict[str, float] = field(default_factory=dict)
    t0: float = 0.0

    def start(self) -> None:
        self.t0 = time.monotonic()
        self.reads.start()
        self.writer.start()
        self.watch.start()

    def mark(self, name: str) -> None:
        self.at[name] = round(time.monotonic() - self.t0, 1)

    def stop(self) -> Any:
        counts = self.reads.stop()
        self.writer.stop()
        self.watch.stop()
        return counts

    def switched(self) -> dict[str, Any] | None:
        status = self.watch.status
        if status.get("phase") == "Failed":
            raise AssertionError(f"cluster {CARRY_CLUSTER} Failed: {status}")
        return status if status.get("activeVersion") == self.version else None

    def drive(self, steps: Callable[[], None]) -> Any:
        """Start, run `steps`, stop; the timeline, the writer and the cluster's state printed if they
        failed. Returns the read counts."""
        pm, cp, ns = self.pm, self.cluster.cp, self.cluster.ns
        self.start()
        try:
            steps()
        except BaseException:
            print(f"[scenario {self.name}] timeline:\n  " + "\n  ".join(self.watch.transitions))
            print(f"[scenario {self.name}] writer: {self.writer.summary()}; at {self.at}")
            print(
                f"[scenario {self.name}] first writes: "
                + "; ".join(f"{op.item_id} {op.attempts}" for op in self.writer.ops[:5])
            )
            print(
                f"[scenario {self.name}] reads: {self.reads.counts()}; "
                f"first problems: {self.reads.problems()[:5]}"
            )
            print(pm.diagnostics(cp, ns))
            raise
        finally:
            counts = self.stop()
        return counts

    def roll(self, spec: dict[str, Any]) -> None:
        pm, cp, ns, reads, writer = self.pm, self.cluster.cp, self.cluster.ns, self.reads, self.writer
        reads.wait_for("the first 40 whole answers", lambda c: c.ok >= 40, timeout=60)
        pm.wait_for(
            f"40 writes acknowledged on {self.old_layout}",
            lambda: writer.acked() >= 40 or not writer.running,
            120,
        )
        self.mark("patched")
        pm.kubectl(
            cp, "patch", "recommendercluster", CARRY_CLUSTER, "-n", ns, "--type", "merge", "-p",
            json.dumps({"spec": spec}),
        )  # fmt: skip
        print(f"\n[scenario {self.name}] patched to {spec} at {self.at['patched']}s; {writer.acked()} acked")
        self.new_layout = pm.wait_for(f"{self.version} active (after the hand-over)", self.switched, 600)[
            "activeLayout"
        ]
        self.mark("switched")
        writer.release.set()
        reads.wait_for(
            f"every read client answered by {self.version}",
            lambda c: all(v[-1:] == [self.version] for v in reads.versions()),
            60,
        )
        pm.wait_for(
            "the carrier's report: done",
            lambda: (self.watch.reports.get(self.new_layout) or {}).get("done") is True,
            timeout=300,
        )
        self.mark("carrier_done")
        pm.wait_for("the writer through every op", lambda: not writer.running, timeout=WRITE_RETRY_S + 300)
        self.mark("writer_done")
        carriers = f"shardrec.io/cluster={CARRY_CLUSTER},app.kubernetes.io/component=carrier"
        pm.wait_for(
            "the carrier's Deployment deleted (done)",
            lambda: not pm.kubectl_json(cp, "get", "deployments", "-n", ns, "-l", carriers)["items"],
            timeout=120,
        )
        self.mark("carrier_deleted")

    def more_reads(self) -> None:
        seen = self.reads.counts().sent
        self.reads.wait_for("40 more answers", lambda c: c.sent >= seen + 40, timeout=60)

    def report(self, counts: Any, written: dict[str, Any], checked: dict[str, Any]) -> None:
        name = self.name
        retried = [
            f"{op.kind} {op.item_id}: "
            + ", ".join(f"{at}s {status} {code}" for at, status, code in op.attempts)
            for op in self.writer.ops
            if len(op.attempts) > 1
        ]
        print(
            f"[scenario {name}] reads {counts} over {self.reads.seconds:.0f}s; "
            f"versions per client {self.reads.versions()}"
        )
        print(f"[scenario {name}] {self.old_layout} -> {self.new_layout}; seconds since the start: {self.at}")
        print(f"[scenario {name}] writes: {written}")
        last = self.watch.reports.get(self.new_layout) or {}
        print(
            f"[scenario {name}] the carrier's last report: cut {last.get('cut')} (old leaders' last seqs) "
            f"after {last.get('after')}, {last.get('forwarded')} forwarded; writes acked on "
            f"{self.old_layout}: {written['acked_per_layout'].get(self.old_layout)}"
        )
        print(
            f"[scenario {name}] checked on {checked['versions']}: "
            f"{dict(checked, problems=len(checked['problems']))}"
        )
        print(f"[scenario {name}] retried writes:\n  " + "\n  ".join(retried[:40]))
        print(f"[scenario {name}] timeline:\n  " + "\n  ".join(self.watch.transitions))
        for problem in checked["problems"][:20]:
            print(f"[scenario {name}] {problem}")
        for problem in self.reads.problems()[:10]:
            print(f"[scenario {name}] read: {problem}")

    def record(
        self, record_property: Any, counts: Any, written: dict[str, Any], checked: dict[str, Any]
    ) -> None:
        prefix = self.name.replace(" ", "_")
        record(record_property, f"{prefix}_reads", counts, time.monotonic() - self.t0)
        for key, value in {**written, **checked, **self.at}.items():
            record_property(
                f"{prefix}_{key}", json.dumps(value) if isinstance(value, (dict, list)) else value
            )


def carry_run(
    name: str,
    pm: ModuleType,
    traffic_module: ModuleType,
    cluster: CarryCluster,
    *,
    ops: list[WriteOp],
    hold_at: int,
    version: str,
) -> CarryRun:
    """The reads (CARRY_READ_CLIENTS bounded clients, carry_version_check), the writer of `ops` and the
    watch on the carry cluster as it serves now; the spec goes to `version` in `roll()`."""
    status = cluster.status(pm)
    written = {op.item_id for op in [*cluster.written, *ops]}
    reads = traffic_module.Traffic(
        f"{cluster.base}/v1/recommend",
        bodies,
        check=carry_version_check(cluster, written),
        clients=CARRY_READ_CLIENTS,
        rate=CARRY_READ_RATE,
        max_requests=MAX_REQUESTS,
        max_seconds=MAX_SECONDS,
        headers={"X-API-Key": cluster.key},
    )
    writer = Writer(cluster.base, cluster.key, ops, hold_at, max_seconds=MAX_SECONDS)
    watch = CarryWatch(pm, cluster.cp, cluster.ns)
    return CarryRun(name, pm, cluster, reads, writer, watch, version, status["activeLayout"])


def assert_every_write_acked(written: dict[str, Any], writer: Writer, layouts: set[str]) -> None:
    unacked = [f"{op.kind} {op.item_id}: {op.attempts}" for op in writer.ops if op.acked is None]
    assert not unacked, f"{len(unacked)} writes never acknowledged: {unacked[:10]}"
    assert written["retried_then_acked"] == written["retried_ops"], written
    assert set(written["acked_per_layout"]) == layouts, written["acked_per_layout"]


def assert_written_state(checked: dict[str, Any], version: str) -> None:
    assert not checked["problems"], checked["problems"][:20]
    assert checked["versions"] == [version], checked["versions"]
    assert (checked["found"], checked["nearest"]) == (checked["live"], checked["live"]), checked
    assert checked["absent"] == checked["deleted"], checked


def rollback_counts(cluster: CarryCluster, run: CarryRun) -> dict[str, int]:
    """What the rollback's writes did to items v1 already held, and how many were acked before the patch."""
    v1_ids = set(cluster.data["v1"].item_ids)
    earlier = {op.item_id for op in cluster.written}
    acked = [op for op in run.writer.ops if op.acked is not None]
    return {
        "replaced_v1_items": sum(op.kind == "upsert" and op.item_id in v1_ids for op in acked),
        "replaced_roll_items": sum(op.kind == "upsert" and op.item_id in earlier for op in acked),
        "deleted_v1_items": sum(
            op.kind == "delete" and op.item_id in v1_ids for op in last_acked(run.writer.ops).values()
        ),
        "acked_before_patch": sum(op.attempts[-1][0] < run.at["patched"] for op in acked),
    }


def job_uids(pm: ModuleType, cp: Any, ns: str) -> dict[str, str]:
    """Job name -> uid in `ns` (a Job deleted and made again under its name has another uid)."""
    items = pm.kubectl_json(cp, "get", "jobs", "-n", ns)["items"]
    return {job["metadata"]["name"]: job["metadata"]["uid"] for job in items}


def events(pm: ModuleType, cp: Any, ns: str, reason: str) -> list[dict[str, Any]]:
    """The carry cluster's Events with this reason."""
    found: list[dict[str, Any]] = pm.kubectl_json(
        cp,
        "get",
        "events",
        "-n",
        ns,
        "--field-selector",
        f"reason={reason},involvedObject.name={CARRY_CLUSTER}",
    )["items"]
    return found


class TestItemWritesCarried:
    """Issue 18 on real pods, both ways, on one writes cluster (`carry_cluster`, class-scoped): the roll
    v1 -> v2 carries v1's writes forward, then the rollback to the kept v1 carries v2's back. The
    rollback needs the roll's outcome (v2 serving, v1 kept, the writes acknowledged so far): run both
    (`-k carried`)."""

    @pytest.mark.node_scenarios
    def test_item_writes_are_carried_through_v1_to_v2_and_two_to_three_shards(
        self,
        carry_cluster: CarryCluster,
        product_module: ModuleType,
        traffic_module: ModuleType,
        record_property: Any,
    ) -> None:
        """A writes cluster (v1, 2 shards x 2 replicas, write-log claims on hostPath PVs, an API key with
        read,write) takes bounded reads (4 clients) and one bounded writer (300 upserts of new ids, 30
        deletes of them, each retried on 503) while its spec changes to v2 on 3 shards: the operator runs
        the carrier (`python -m shardrec.serving.carry` in the serving image), builds v2 with the carry
        folder, switches after the hand-over (old leaders fenced: writes meanwhile get 503 and are
        retried) and asks for the finish; the carrier reports done, its Deployment goes, v1 stays kept
        (its pods run: the rollback below needs them). Then, through the router on v2: every acknowledged
        upsert found by id and first for its own vector, every acknowledged delete absent; every write
        acknowledged in the end; 0 failed, 0 503, 0 partial, 0 wrong reads (the roll's budget is the
        rollout scenario's: none; only writes are fenced)."""
        pm, cluster = product_module, carry_cluster
        before = cluster.status(pm)
        assert before["activeVersion"] == "v1", before
        run = carry_run(
            "carry", pm, traffic_module, cluster, ops=forward_ops(pm.DIM), hold_at=WRITE_HOLD_AT, version="v2"
        )

        def steps() -> None:
            run.roll({"shards": SHARDS_OF["v2"], "index": pm.index_spec("v2")})
            run.more_reads()

        counts = run.drive(steps)
        writer = run.writer
        written = writer.summary()
        checked = check_written(traffic_module, cluster, writer.ops)
        run.record(record_property, counts, written, checked)
        run.report(counts, written, checked)
        kept = pm.pods(cluster.cp, cluster.ns, carry_shard_selector(run.old_layout))
        layouts = {entry["name"]: entry for entry in cluster.status(pm).get("layouts", [])}
        print(f"[scenario carry] {run.old_layout}: {len(kept)} pods, {layouts.get(run.old_layout)}")

        assert_every_write_acked(written, writer, {run.old_layout, run.new_layout})
        assert (written["upserts_acked"], written["deletes_acked"]) == (UPSERTS, UPSERTS // DELETE_EVERY), (
            written
        )
        assert_written_state(checked, "v2")
        assert checked["deleted"] == UPSERTS // DELETE_EVERY, checked
        handed = [r.get("handed_over") for r in run.watch.reports.values() if r.get("handed_over")]
        assert handed, f"no carrier report named a hand-over: {run.watch.transitions}"
        assert_clean(run.reads, counts)
        versions = run.reads.versions()
        assert all(v == ["v1", "v2"] for v in versions), f"a client saw v1 after v2: {versions}"
        assert len(kept) == SHARDS_OF["v1"] * pm.REPLICAS and all(pm.pod_ready(p) for p in kept), kept
        assert "kept for rollback" in layouts[run.old_layout].get("message", ""), layouts
        cluster.written = list(writer.ops)
        cluster.rolled = (run.old_layout, run.new_layout)

    @pytest.mark.node_scenarios
    def test_item_writes_are_carried_back_on_a_rollback_to_the_kept_v1_on_two_shards(
        self,
        carry_cluster: CarryCluster,
        product_module: ModuleType,
        traffic_module: ModuleType,
        record_property: Any,
    ) -> None:
        """The carry back, after the roll above (v2 on 3 shards serving, v1 kept with its pods): bounded
        reads and one writer on v2 (80 new ids, 20 replacements of items v1 holds, half of them v1's own
        and half the roll's `w-` items, 12 deletes, 4 of them of v1's own items), then the spec goes back
        to v1 on 2 shards while the writer goes on (retrying 503s). The operator plans a carry back
        (`status.carries[]` with `back`, Progressing/Event CarryingWritesBack, no build Job): the carrier
        in back mode opens v1's leaders, replays v2's logs from their first record, hands over (v2's
        leaders fenced) and the routers switch to v1; the carrier reports done (Event WritesCarriedBack)
        and goes; v2 goes after its window (shortened to ROLLBACK_WINDOW_S afterwards). Then, through the
        router on v1: every write acknowledged in both tests is v1's state (upserts found by id and first
        for their own vector, deletes absent); 0 failed, 0 503, 0 partial, 0 wrong reads, every client
        saw v2 then v1."""
        pm, cluster = product_module, carry_cluster
        if cluster.rolled is None:
            pytest.skip("needs the roll to v2 of the test above (v2 serving, v1 kept): run both, -k carried")
        v1, v2 = cluster.rolled
        cp, ns = cluster.cp, cluster.ns
        before = cluster.status(pm)
        assert (before["activeVersion"], before["activeLayout"]) == ("v2", v2), before
        kept = pm.pods(cp, ns, carry_shard_selector(v1))
        assert len(kept) == SHARDS_OF["v1"] * pm.REPLICAS and all(pm.pod_ready(p) for p in kept), kept
        jobs = job_uids(pm, cp, ns)
        ops = rollback_ops(pm.DIM, cluster.written, cluster.data["v1"].item_ids)
        run = carry_run(
            "carry back", pm, traffic_module, cluster, ops=ops, hold_at=BACK_HOLD_AT, version="v1"
        )

        def steps() -> None:
            run.roll({"shards": SHARDS_OF["v1"], "index": pm.index_spec("v1")})
            pm.kubectl(
                cp, "patch", "recommendercluster", CARRY_CLUSTER, "-n", ns, "--type", "merge", "-p",
                json.dumps({"spec": {"rollout": {"rollbackWindowSeconds": pm.ROLLBACK_WINDOW_S}}}),
            )  # fmt: skip
            run.mark("window_shortened")
            pm.wait_for(
                f"{v2} retired after its window (its pods gone)",
                lambda: not pm.pods(cp, ns, carry_shard_selector(v2)),
                timeout=pm.ROLLBACK_WINDOW_S + 300,
            )
            run.mark("v2_gone")
            run.more_reads()

        counts = run.drive(steps)
        writer = run.writer
        written = writer.summary()
        every = [*cluster.written, *writer.ops]
        checked = check_written(traffic_module, cluster, every)
        written.update(rollback_counts(cluster, run))
        run.record(record_property, counts, written, checked)
        run.report(counts, written, checked)
        status = cluster.status(pm)
        back = run.watch.back_carries.get((v1, v2))
        carrier = run.watch.reports.get(v1) or {}
        new_jobs = job_uids(pm, cp, ns)  # v2's build Job went with v2
        carrying, carried = events(pm, cp, ns, "CarryingWritesBack"), events(pm, cp, ns, "WritesCarriedBack")
        print(
            f"[scenario carry back] status.carries {status.get('carries')}; seen back {back}; events "
            f"CarryingWritesBack {len(carrying)}, WritesCarriedBack {len(carried)}; "
            f"jobs {jobs} -> {new_jobs}"
        )

        assert back is not None, (
            f"no status.carries entry with back for {v1} from {v2}: {run.watch.transitions}"
        )
        assert carrier.get("from_layout") == v2 and carrier.get("done") is True, carrier
        assert carrier.get("handed_over"), f"the carry back never handed over: {carrier}"
        assert carrying and carried, (carrying, carried)
        assert new_jobs.items() <= jobs.items(), f"a carry back builds nothing: {jobs} -> {new_jobs}"
        assert (status["activeVersion"], status["activeLayout"]) == ("v1", v1), status
        assert [
            (c["layout"], c.get("back"), c.get("done")) for c in status.get("carries", []) if c.get("back")
        ] == [(v1, True, True)], status.get("carries")
        assert_every_write_acked(written, writer, {v2, v1})
        assert written["acked_before_patch"] >= 40, written
        assert written["replaced_v1_items"] and written["replaced_roll_items"] and written["deleted_v1_items"]
        assert_written_state(checked, "v1")
        assert_clean(run.reads, counts)
        versions = run.reads.versions()
        assert all(v == ["v2", "v1"] for v in versions), f"a client saw v2 after v1: {versions}"


# --- a pod-template change (the data-plane image) rolled shard by shard ----------------------------------

ROLL_TAG = "-roll"  # the second tag of the same serving image


def retagged(image: str) -> str:
    """`repo:tag` -> `repo:tag-roll` (`repo` -> `repo:latest-roll`): another name, the same image."""
    name, _, tag = image.rpartition(":")
    if not name or "/" in tag:
        return f"{image}:latest{ROLL_TAG}"
    return f"{name}:{tag}{ROLL_TAG}"


def pod_images(pod: dict[str, Any]) -> set[str]:
    spec = pod["spec"]
    return {c["image"] for c in [*spec.get("initContainers", []), *spec["containers"]]}


class RollWatch:
    """Samples of the serving layout's shard pods while a template roll runs: per shard, the pods that
    are not terminating and Ready, and whether the shard is mid-roll, i.e. not at rest, where at rest is
    exactly `replicasPerShard` pods, none terminating, all Ready, all on one image (all old or all new)."""

    def __init__(self, pm: ModuleType, product: Any, layout: str, shards: int) -> None:
        self.pm, self.product, self.layout, self.shards = pm, product, layout, shards
        self.samples = 0
        self.most_mid_roll = 0
        self.fewest_ready = dict.fromkeys(range(shards), pm.REPLICAS)
        self.rolling: dict[int, list[float]] = {}  # shard -> [first, last] time seen mid-roll
        self.violations: list[str] = []
        self.roll_statuses: list[dict[str, Any]] = []  # distinct status.templateRoll values, in order
        self.states: dict[str, str] = {}  # pod -> its last sampled `image state`
        self.transitions: list[str] = []  # "<at>s <pod> <image> <state>" whenever a pod's changed

    def sample(self, at: float) -> list[dict[str, Any]]:
        pm, cp, ns = self.pm, self.product.cp, self.product.ns
        pods: list[dict[str, Any]] = pm.pods(cp, ns, pm.shard_selector(self.layout))
        self.samples += 1
        for pod, line in zip(pods, summary(pm, pods), strict=True):
            name, state = pod["metadata"]["name"], line.split(" ", 1)[1]
            if self.states.get(name) != state:
                self.states[name] = state
                self.transitions.append(f"{at:.1f}s {line}")
        mid_roll = []
        for shard in range(self.shards):
            group = [p for p in pods if p["metadata"]["labels"].get("shardrec.io/shard") == str(shard)]
            live = [p for p in group if not p["metadata"].get("deletionTimestamp")]
            ready = [p for p in live if pm.pod_ready(p)]
            images = set().union(*map(pod_images, group)) if group else set()
            self.fewest_ready[shard] = min(self.fewest_ready[shard], len(ready))
            if not ready:
                self.violations.append(f"{at:.1f}s: shard {shard} had no Ready pod: {summary(pm, group)}")
            if not (len(group) == len(ready) == pm.REPLICAS and len(images) == 1):
                mid_roll.append(shard)
                seen = self.rolling.setdefault(shard, [at, at])
                seen[1] = at
        self.most_mid_roll = max(self.most_mid_roll, len(mid_roll))
        if len(mid_roll) > 1:
            self.violations.append(f"{at:.1f}s: shards {mid_roll} mid-roll at once: {summary(pm, pods)}")
        return pods

    def note_status(self, status: dict[str, Any]) -> None:
        roll = status.get("templateRoll")
        if roll and (not self.roll_statuses or self.roll_statuses[-1] != roll):
            self.roll_statuses.append(roll)

    def order(self) -> list[int]:
        return sorted(self.rolling, key=lambda shard: self.rolling[shard][0])


def summary(pm: ModuleType, pods: list[dict[str, Any]]) -> list[str]:
    """`name image state` per pod, state one of terminating, ready, unready (for failure messages)."""

    def state(pod: dict[str, Any]) -> str:
        if pod["metadata"].get("deletionTimestamp"):
            return "terminating"
        return "ready" if pm.pod_ready(pod) else "unready"

    return [f"{p['metadata']['name']} {','.join(sorted(pod_images(p)))} {state(p)}" for p in pods]


def roll_shards(watch: RollWatch, traffic: Any, new: str, t0: float, timeout: float = 600) -> float:
    """Sample until every shard pod of the layout runs `new`, Ready, and status.templateRoll is gone
    (bounded); new 503 answers go into the timeline. Returns the seconds since t0 it took."""
    pm, cp, ns = watch.pm, watch.product.cp, watch.product.ns
    deadline = t0 + timeout
    unavailable = traffic.counts().unavailable
    while time.monotonic() < deadline:
        at = time.monotonic() - t0
        pods = watch.sample(at)
        if (now_unavailable := traffic.counts().unavailable) > unavailable:
            watch.transitions.append(f"{at:.1f}s 503 answers so far: {now_unavailable}")
            unavailable = now_unavailable
        status = pm.status(cp, ns)
        watch.note_status(status)
        on_new = [p for p in pods if pod_images(p) == {new} and pm.pod_ready(p)]
        if len(pods) == len(on_new) == watch.shards * pm.REPLICAS and not status.get("templateRoll"):
            return time.monotonic() - t0
        time.sleep(0.5)
    raise AssertionError(
        f"the roll did not finish in {timeout:.0f} s: {summary(pm, pods)}; "
        f"templateRoll {status.get('templateRoll')}"
    )


@pytest.mark.node_scenarios
def test_a_new_image_rolls_shard_by_shard_under_traffic(
    product_diagnostics: Any, product_module: ModuleType, traffic: Any, record_property: Any
) -> None:
    """`spec.image` changed to a second tag of the same serving image (tagged in the node's containerd):
    the operator rolls the shard pods one shard at a time (StatefulSets OnDelete, ReplaceShardPod), the
    routers roll as a Deployment. Polled throughout (bounded): never two shards mid-roll, never a shard
    without a Ready pod; every shard pod ends on the new image, status.templateRoll gone; 0 failed, 0 503,
    0 partial, 0 wrong."""
    pm, product = product_module, product_diagnostics
    cp, ns = product.cp, product.ns
    status = wait_ready(pm, product)
    layout, shards = status["activeLayout"], SHARDS_OF[status["activeVersion"]]
    assert not status.get("templateRoll"), status["templateRoll"]
    first = pm.pods(cp, ns, pm.shard_selector(layout))[0]
    old = first["spec"]["containers"][0]["image"]
    new = retagged(old)
    product.node.ctr("images", "tag", "--force", old, new)
    assert new in product.node.image_names(), f"{new} not in the node's containerd after `ctr images tag`"

    watch = RollWatch(pm, product, layout, shards)
    t0 = time.monotonic()
    watch.sample(0.0)
    pm.patch_spec(cp, ns, {"image": new})
    print(f"\n[scenario image_roll] {old} -> {new} at traffic time {traffic.elapsed():.1f}s ({layout})")

    done = roll_shards(watch, traffic, new, t0)

    router = f"deployment/{pm.CLUSTER}-router"
    pm.wait_for(
        "the router Deployment on the new image",
        lambda: (
            pm.kubectl_json(cp, "get", router, "-n", ns)["spec"]["template"]["spec"]["containers"][0]["image"]
            == new
        ),
        timeout=60,
    )
    pm.kubectl(cp, "rollout", "status", router, "-n", ns, "--timeout=300s", timeout=320)
    routers_done = time.monotonic() - t0
    seen = traffic.counts().sent
    traffic.wait_for("40 more answers after the roll", lambda c: c.sent >= seen + 40, timeout=60)
    counts = traffic.stop()
    seconds = time.monotonic() - t0
    record(record_property, "image_roll", counts, seconds)
    spans = {shard: f"{a:.0f}-{b:.0f}s" for shard, (a, b) in sorted(watch.rolling.items())}
    reported = [(r.get("shard"), r.get("updatedReplicas"), r.get("waitingFor")) for r in watch.roll_statuses]
    print(
        f"[scenario image_roll] shard pods all on {new}, templateRoll gone at {done:.0f}s; routers rolled "
        f"at {routers_done:.0f}s; {watch.samples} samples: at most {watch.most_mid_roll} shard(s) mid-roll "
        f"at once, mid-roll spans {spans}, fewest Ready pods per shard {watch.fewest_ready}; "
        f"templateRoll (shard, updatedReplicas, waitingFor) seen: {reported}"
    )
    print("[scenario image_roll] timeline (seconds after the patch):\n  " + "\n  ".join(watch.transitions))
    record_property("image_roll_shard_pods_done_seconds", round(done, 1))
    record_property("image_roll_samples", watch.samples)
    assert not watch.violations, watch.violations[:5]
    assert sorted(watch.rolling) == list(range(shards)), f"not every shard was seen rolling: {spans}"
    assert watch.roll_statuses, "status.templateRoll never reported the roll"
    assert_clean(traffic, counts)
    final = pm.status(cp, ns)
    assert final["activeLayout"] == layout and not final.get("templateRoll"), final


# --- one shard without any pod; Prometheus --------------------------------------------------------------


def derived_rules(directory: Path) -> Path:
    """The shipped rules file with one change, made by code: the no-ready-replica alert's `for:`."""
    doc = yaml.safe_load(ALERTS.read_text())
    derived = copy.deepcopy(doc)
    changed = 0
    for group in derived["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == ALERT:
                rule["for"] = ALERT_FOR
                changed += 1
    assert changed == 1, f"{ALERT} appears {changed} times in {ALERTS}"
    path = directory / "alerts-derived.yaml"
    path.write_text(yaml.safe_dump(derived, sort_keys=False))
    return path


def prometheus_config(kubeconfig: Path, ns: str, rules: Path) -> dict[str, Any]:
    """Pods discovered through this API server (kubernetes_sd_configs, the admin kubeconfig of the control
    plane's state dir: its CA and client certificate); scraped where the pods' annotations say, at their pod
    IPs (routed from the host into the node's netns); `namespace` and `cluster` as the shipped ServiceMonitor
    sets them (the alert groups by both)."""
    return {
        "global": {"scrape_interval": "2s", "scrape_timeout": "1s", "evaluation_interval": "2s"},
        "rule_files": [str(rules)],
        "scrape_configs": [
            {
                "job_name": "shardrec-pods",
                "kubernetes_sd_configs": [
                    {"role": "pod", "kubeconfig_file": str(kubeconfig), "namespaces": {"names": [ns]}}
                ],
                "relabel_configs": [
                    {
                        "source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"],
                        "regex": "true",
                        "action": "keep",
                    },
                    {
                        "source_labels": [
                            "__address__",
                            "__meta_kubernetes_pod_annotation_prometheus_io_port",
                        ],
                        "regex": r"([^:]+)(?::\d+)?;(\d+)",
                        "replacement": "$1:$2",
                        "target_label": "__address__",
                    },
                    {
                        "source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_path"],
                        "regex": "(.+)",
                        "target_label": "__metrics_path__",
                    },
                    {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
                    {
                        "source_labels": ["__meta_kubernetes_pod_label_shardrec_io_cluster"],
                        "target_label": "cluster",
                    },
                    {
                        "source_labels": ["__meta_kubernetes_pod_label_app_kubernetes_io_component"],
                        "target_label": "component",
                    },
                    {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
                ],
            }
        ],
    }


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def get(self, path: str) -> Any:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"{self.url}{path}", timeout=5) as response:
            return json.load(response)["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.get(f"/api/v1/query?query={urllib.parse.quote(promql)}")["result"]
        return result

    def alert_state(self, name: str, **labels: str) -> str:
        for alert in self.get("/api/v1/alerts")["alerts"]:
            if alert["labels"].get("alertname") == name and labels.items() <= alert["labels"].items():
                return str(alert["state"])
        return "inactive"


@pytest.fixture
def prometheus(product_diagnostics: Any, product_module: ModuleType, tmp_path: Path) -> Iterator[Prometheus]:
    """Prometheus (e2e/tools/build-prometheus.sh: Debian's has no Kubernetes discovery) on 127.0.0.1 (a free
    port), stopped by its PID afterwards."""
    from shardrec.tools.local.ports import free_port

    binary = product_module.find_prometheus()
    config = prometheus_config(
        product_diagnostics.cp.kubeconfig, product_diagnostics.ns, derived_rules(tmp_path)
    )
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = int(free_port())
    log_path = tmp_path / "prometheus.log"
    with log_path.open("w") as log:
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
    prom = Prometheus(f"http://127.0.0.1:{port}")
    try:

        def ready() -> bool:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            try:
                prom.get("/api/v1/status/buildinfo")
                return True
            except OSError:
                return False

        product_module.wait_for("Prometheus ready", ready, timeout=60)
        yield prom
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        print(f"[prometheus] log tail:\n{log_path.read_text()[-1500:]}")


class Outage:
    """One shard of the serving layout taken to zero pods and back, under fresh traffic."""

    def __init__(self, pm: ModuleType, product: Any, traffic_module: ModuleType, shard: int) -> None:
        self.pm, self.product, self.traffic_module, self.shard = pm, product, traffic_module, shard
        status = wait_ready(pm, product)
        self.layout, self.shards = status["activeLayout"], SHARDS_OF[status["activeVersion"]]
        self.statefulset = f"{pm.CLUSTER}-{self.layout}-{shard}"

    def load(self) -> Any:
        """Fresh traffic; a partial answer must cover exactly the other shards."""
        cp, ns = self.product.cp, self.product.ns
        versions = version_check(self.product)

        def check(answer: Any) -> str | None:
            if answer.partial and not self.partial_without_the_shard(answer):
                return f"a partial answer covers {answer.body.get('shards')}, not all shards but {self.shard}"
            return versions(answer)

        traffic = self.traffic_module.Traffic(
            self.pm.router_url(cp, ns),
            bodies,
            check=check,
            clients=CLIENTS,
            rate=RATE,
            max_requests=MAX_REQUESTS,
            max_seconds=MAX_SECONDS,
        )
        traffic.start()
        traffic.wait_for("the first 40 whole answers", lambda c: c.ok >= 40, timeout=60)
        return traffic

    def take_down(self) -> None:
        """Every pod of the shard gone, honestly: the operator paused (it would scale the StatefulSet
        back), then the shard's StatefulSet scaled to 0 by hand, as an admin's mistake would leave it."""
        pm, cp, ns = self.pm, self.product.cp, self.product.ns
        pm.patch_spec(cp, ns, {"paused": True})

        def paused() -> bool:
            conditions = pm.status(cp, ns).get("conditions", [])
            return any(c["type"] == "Progressing" and c.get("reason") == "Paused" for c in conditions)

        pm.wait_for("the operator to report the pause", paused, timeout=60)
        pm.kubectl(cp, "scale", "statefulset", self.statefulset, "-n", ns, "--replicas=0")
        selector = pm.shard_selector(self.layout, self.shard)
        pm.wait_for(f"no pod of {self.statefulset}", lambda: not pm.pods(cp, ns, selector), 120)

    def bring_back(self) -> None:
        """Unpause: the operator applies its StatefulSet again (replicasPerShard), the shard comes back."""
        pm, cp, ns = self.pm, self.product.cp, self.product.ns
        pm.patch_spec(cp, ns, {"paused": False})
        pm.wait_for(
            "the shard back (the operator restored its replicas)",
            lambda: pm.all_ready(cp, ns, self.shards, self.layout),
            timeout=240,
        )

    def names_the_shard(self, answer: Any) -> bool:
        message = str(answer.body.get("error", {}).get("message", ""))
        header = answer.header("X-Shardrec-Unavailable-Shards")
        return bool(header == str(self.shard) and f"shard {self.shard} (" in message)

    def partial_without_the_shard(self, answer: Any) -> bool:
        return bool(answer.body.get("shards") == {"answered": self.shards - 1, "total": self.shards})


def answers_after_recovery(traffic: Any, timeout: float = 60.0) -> tuple[Any, float, Any]:
    """Once the shard's pods are Ready again: windows of 100 requests until one is all whole (bounded).
    Returns (that window's counts, seconds from Ready to its start, counts of the requests before it).
    The routers need a moment: they probe replicas on an interval and re-resolve the pods' DNS names."""
    began, before = time.monotonic(), traffic.counts()
    while True:
        start = traffic.counts()
        goal = start.sent + 100
        traffic.wait_for("100 answers after the shard came back", lambda c, goal=goal: c.sent >= goal, 60)
        window = traffic.counts() - start
        if window.ok == window.sent or time.monotonic() - began > timeout:
            return window, time.monotonic() - began, start - before


@pytest.mark.node_scenarios
def test_a_shard_without_pods_strict_503_and_the_alert_fires(
    product_diagnostics: Any,
    product_module: ModuleType,
    traffic_module: ModuleType,
    prometheus: Prometheus,
    record_property: Any,
) -> None:
    """strict (the deployment's mode): every request 503 naming the shard while it has no pod; the shipped
    ShardrecShardNoReadyReplica goes pending then fires (Prometheus found the pods through the API server);
    whole answers once the shard is back; the alert resolves."""
    pm, product = product_module, product_diagnostics
    ns = product.ns
    outage = Outage(pm, product, traffic_module, shard=1)
    labels = {"namespace": ns, "cluster": pm.CLUSTER, "shard": str(outage.shard)}
    live = f'shardrec_router_live_replicas{{namespace="{ns}",shard="{outage.shard}"}} > 0'
    pm.wait_for(
        "Prometheus to discover and scrape both routers",
        lambda: len(prometheus.query(live)) == pm.ROUTERS,
        timeout=120,
    )
    targets = prometheus.get("/api/v1/targets")["activeTargets"]
    up = sorted(t["labels"].get("pod", "") for t in targets if t["health"] == "up")
    print(f"\n[prometheus] {len(up)} pod targets up, discovered through the API server: {up}")
    assert prometheus.alert_state(ALERT, **labels) == "inactive"

    t0 = time.monotonic()
    traffic = outage.load()
    try:
        outage.take_down()
        gone = time.monotonic() - t0
        traffic.wait_for("100 answers 503", lambda c: c.unavailable >= 100, timeout=60)
        pm.wait_for("the alert pending", lambda: prometheus.alert_state(ALERT, **labels) != "inactive", 120)
        pending = time.monotonic() - t0
        pm.wait_for("the alert firing", lambda: prometheus.alert_state(ALERT, **labels) == "firing", 120)
        firing = time.monotonic() - t0
        outage.bring_back()
        back = time.monotonic() - t0
        after, to_whole, between = answers_after_recovery(traffic)
    finally:
        counts = traffic.stop()
    record(record_property, "outage_strict", counts, time.monotonic() - t0)
    print(
        f"[scenario outage_strict] {outage.statefulset} at 0 pods {gone:.0f}s in; alert pending at "
        f"{pending:.0f}s, firing at {firing:.0f}s (for: {ALERT_FOR}); shard back at {back:.0f}s; "
        f"whole again {to_whole:.1f}s later ({between} in between); then: {after}"
    )
    unavailable = traffic.unavailable()
    assert unavailable and all(map(outage.names_the_shard, unavailable)), [a.body for a in unavailable[:3]]
    assert (counts.failed, counts.partial, counts.wrong) == (0, 0, 0), traffic.problems()[:10]
    assert after.unavailable == 0 and after.ok == after.sent, (
        f"not whole again after the shard came back: {after}"
    )
    _, resolved = pm.wait_for(
        "the alert resolved",
        lambda: prometheus.alert_state(ALERT, **labels) == "inactive" and (True, time.monotonic() - t0),
        120,
    )
    print(f"[scenario outage_strict] alert resolved at {resolved:.0f}s")


@pytest.mark.node_scenarios
def test_a_shard_without_pods_under_available_gives_flagged_partial_answers(
    product_diagnostics: Any, product_module: ModuleType, traffic_module: ModuleType, record_property: Any
) -> None:
    """consistency: available (the routers roll to the new config under traffic): while the shard has no
    pod, answers are 200, flagged partial, from the other shards; whole again once it is back."""
    pm, product = product_module, product_diagnostics
    cp, ns = product.cp, product.ns
    router = f"deployment/{pm.CLUSTER}-router"

    def template_hash() -> str:
        deployment = pm.kubectl_json(cp, "get", router, "-n", ns)
        return str(
            deployment["spec"]["template"]["metadata"]["annotations"].get("shardrec.io/router-config-hash")
        )

    before = template_hash()
    pm.patch_spec(cp, ns, {"router": {"consistency": "available"}})
    # The operator rewrites the router's config and its pod template (a new config hash) a moment after the
    # patch; `rollout status` before that would see the old, finished rollout.
    pm.wait_for(
        "the router Deployment to carry the new config", lambda: template_hash() != before, timeout=60
    )
    pm.kubectl(cp, "rollout", "status", router, "-n", ns, "--timeout=180s", timeout=200)
    outage = Outage(pm, product, traffic_module, shard=1)
    t0 = time.monotonic()
    traffic = outage.load()
    try:
        outage.take_down()
        traffic.wait_for("100 partial answers", lambda c: c.partial >= 100, timeout=60)
        during = traffic.counts()
        outage.bring_back()
        after, to_whole, between = answers_after_recovery(traffic)
    finally:
        counts = traffic.stop()
    record(record_property, "outage_available", counts, time.monotonic() - t0)
    print(
        f"[scenario outage_available] shard back; whole again {to_whole:.1f}s later ({between} in between); "
        f"then: {after}"
    )
    assert (counts.failed, counts.unavailable, counts.wrong) == (0, 0, 0), traffic.problems()[:10]
    assert during.partial >= 100
    assert after.partial == 0 and after.ok == after.sent, (
        f"not whole again after the shard came back: {after}"
    )
