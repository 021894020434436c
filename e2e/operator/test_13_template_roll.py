"""Scenario 12: an image change rolls the serving layout shard by shard, never a shard at 0 Ready.

The StatefulSets are `OnDelete`; the operator replaces one pod at a time and the real StatefulSet
controller (kube-controller-manager) recreates it from the new template. A watch on the shard
pods checks the invariants on every single pod event, not on a poll: at no moment are two shards
in motion (a pod starting, terminating or surging, or fewer Ready pods than replicas), and no
shard ever has 0 Ready pods. With 1 replica per shard the roll goes by surge (a second pod
first); with 2 it replaces one of them at a time.
"""

from __future__ import annotations

import json
import threading
import urllib.parse
import urllib.request
from collections import defaultdict
from typing import Any

import pytest

from shardrec_operator.desired import labels
from shardrec_operator.reconcile import resources as kinds

pytestmark = [pytest.mark.controlplane]

Obj = dict[str, Any]


def _ready(pod: Obj) -> bool:
    if pod["metadata"].get("deletionTimestamp"):
        return False
    conditions = pod.get("status", {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


class PodWatch:
    """Every shard pod event, with the invariants checked on the state after each one."""

    def __init__(self, scenario: Any, shards: int, replicas: int) -> None:
        self.scenario = scenario
        self.shards = shards
        self.replicas = replicas
        self.pods: dict[str, Obj] = {}
        self.violations: list[str] = []
        self.events = 0
        self.max_pods_in_a_shard = 0
        self.stop = threading.Event()
        selector = f"{labels.CLUSTER}=recs,{labels.COMPONENT}=shard"
        listed = scenario.kube.get(
            kinds.POD.path(scenario.namespace) + "?labelSelector=" + urllib.parse.quote(selector)
        )
        for pod in listed["items"]:
            self.pods[pod["metadata"]["name"]] = pod
        self.check("initial list")
        self.path = (
            kinds.POD.path(scenario.namespace)
            + f"?watch=1&timeoutSeconds=300&labelSelector={urllib.parse.quote(selector)}"
            + f"&resourceVersion={listed['metadata']['resourceVersion']}"
        )
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        api = self.scenario.kube.cp.api
        request = urllib.request.Request(api.base_url + self.path, headers={"Accept": "application/json"})
        with api.opener.open(request, timeout=310) as stream:
            while not self.stop.is_set():
                line = stream.readline()
                if not line:
                    return
                event = json.loads(line)
                pod = event["object"]
                if event["type"] == "DELETED":
                    self.pods.pop(pod["metadata"]["name"], None)
                elif event["type"] in ("ADDED", "MODIFIED"):
                    self.pods[pod["metadata"]["name"]] = pod
                self.events += 1
                self.check(f"{event['type']} {pod['metadata']['name']}")

    def check(self, after: str) -> None:
        by_shard: dict[int, list[Obj]] = defaultdict(list)
        for pod in self.pods.values():
            by_shard[int(pod["metadata"]["labels"][labels.SHARD])].append(pod)
        moving = []
        for shard in range(self.shards):
            pods = by_shard.get(shard, [])
            self.max_pods_in_a_shard = max(self.max_pods_in_a_shard, len(pods))
            ready = sum(1 for pod in pods if _ready(pod))
            if ready == 0:
                self.violations.append(f"after {after}: shard {shard} has 0 Ready pods")
            if ready < self.replicas or len(pods) != self.replicas or any(not _ready(p) for p in pods):
                moving.append(shard)
        if len(moving) > 1:
            self.violations.append(f"after {after}: shards {moving} are in motion together")

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=1)


def _all_on(scenario: Any, image: str, replicas: int) -> bool:
    """True once every shard runs `replicas` Ready pods of `image` and the roll is over (an
    AssertionError says what is still missing; `wait_for` reports the last one)."""
    sets = scenario.children(kinds.STATEFUL_SET)
    pods = [p for p in scenario.children(kinds.POD, f"{labels.COMPONENT}=shard") if _ready(p)]
    status = scenario.status()
    assert all(s["spec"]["replicas"] == replicas for s in sets), [s["spec"]["replicas"] for s in sets]
    assert len(pods) == len(sets) * replicas, sorted(p["metadata"]["name"] for p in pods)
    images = {p["metadata"]["name"]: p["spec"]["containers"][0]["image"] for p in pods}
    assert set(images.values()) == {image}, images
    assert status.get("templateRoll") is None, status.get("templateRoll")
    assert status.get("phase") == "Ready", status.get("phase")
    return True


def test_image_change_rolls_one_shard_at_a_time(scenario: Any, harness: Any) -> None:
    shards = 3
    seen: dict[str, Any] = {}

    def roll_to(image: str, replicas: int) -> None:
        layout = scenario.status()["activeLayout"]
        watch = PodWatch(scenario, shards, replicas)
        try:
            scenario.patch_spec({"image": image})
            progress = scenario.wait_status(
                "the roll to start", lambda s: s.get("templateRoll") is not None, timeout=30
            )
            seen.setdefault("rolls", []).append(progress["templateRoll"])
            harness.wait_for(f"every shard pod on {image}", lambda: _all_on(scenario, image, replicas), 180)
        finally:
            watch.close()
        assert not watch.violations, "\n".join(watch.violations[:10])
        assert watch.events > 0
        assert scenario.status()["activeLayout"] == layout  # the layout never changed
        seen[image] = watch

    scenario.create(shards=shards, replicasPerShard=1)
    scenario.run(
        [
            ("Ready on v1", lambda: scenario.wait_ready("v1")),
            ("roll an image change at 1 replica per shard (surge)", lambda: roll_to("shardrec:roll-2", 1)),
            ("two replicas per shard", lambda: scenario.patch_spec({"replicasPerShard": 2})),
            (
                "all shards at 2 replicas",
                lambda: harness.wait_for(
                    "2 replicas", lambda: _all_on(scenario, "shardrec:roll-2", 2), timeout=60
                ),
            ),
            ("roll an image change at 2 replicas per shard", lambda: roll_to("shardrec:roll-3", 2)),
        ]
    )
    assert seen["shardrec:roll-2"].max_pods_in_a_shard == 2  # the surge pod existed
    assert seen["shardrec:roll-3"].max_pods_in_a_shard == 2  # no surge at 2 replicas
    assert seen["rolls"][0]["surge"] is True
    replaced = scenario.events("ReplacingPod")
    assert sum(int(e.get("count") or 1) for e in replaced) == shards * 1 + shards * 2
