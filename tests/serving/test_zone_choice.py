"""Zone-aware replica choice: a router prefers shard replicas in its own zone and crosses zones only
when none is usable there; the operator writes each replica's zone from its pod's label."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import replace

from shardrec.api.topology import Topology
from shardrec.serving.router.replicas import EjectionPolicy, Replica, choose_replica
from shardrec_operator.desired.topology_configmap import build_layout_topology, replica_zones
from tests.controller.samples import cluster, layout_of
from tests.serving.test_router_app import SHARDS, World, running, settings

POLICY = EjectionPolicy()


def spread(zones: list[str | None]) -> list[Replica[None]]:
    return [
        Replica(name=f"r{i}", url=f"http://127.0.0.1:{9000 + i}", client=None, policy=POLICY, zone=zone)
        for i, zone in enumerate(zones)
    ]


def picks(
    replicas: list[Replica[None]], zone: str | None, avoid: list[Replica[None]] | None = None
) -> Counter[str]:
    rng = random.Random(1)
    chosen = Counter[str]()
    for _ in range(400):
        replica = choose_replica(replicas, 0.0, rng, avoid or [], zone)
        chosen[replica.name if replica else "none"] += 1
    return chosen


def test_a_router_picks_only_replicas_in_its_zone_when_there_are_some() -> None:
    replicas = spread(["a", "b", "a", "c"])
    assert set(picks(replicas, "a")) == {"r0", "r2"}
    assert set(picks(replicas, "b")) == {"r1"}


def test_without_a_zone_on_either_side_every_replica_is_a_candidate() -> None:
    assert set(picks(spread(["a", "b", "c"]), None)) == {"r0", "r1", "r2"}
    assert set(picks(spread([None, None]), "a")) == {"r0", "r1"}


def test_it_crosses_zones_when_its_zone_has_no_replica_or_none_usable() -> None:
    replicas = spread(["a", "b", "c"])
    assert set(picks(replicas, "d")) == {"r0", "r1", "r2"}
    replicas[0].probed(False, 0.0)  # the zone's only replica is ejected and known dead
    assert set(picks(replicas, "a")) == {"r1", "r2"}
    fresh = spread(["a", "b"])
    assert set(picks(fresh, "a", avoid=[fresh[0]])) == {"r1"}  # the retry after a failure


def test_local_load_still_balances_by_cost_among_the_zones_replicas() -> None:
    replicas = spread(["a", "a", "b"])
    replicas[0].outstanding = 10
    chosen = picks(replicas, "a")
    assert chosen["r1"] == 400  # the idle local one, never the idle remote one


def test_the_operator_writes_each_replicas_zone_from_its_pods_label() -> None:
    sample = cluster()
    layout = layout_of(sample)
    first = build_layout_topology(sample, layout, {0: 2})
    names = [replica.name for replica in first.endpoints[0].replicas]
    pods = [
        {"metadata": {"name": names[0], "labels": {"topology.kubernetes.io/zone": "z1"}}},
        {"metadata": {"name": names[1], "labels": {}}},
    ]
    assert replica_zones(pods) == {names[0]: "z1"}
    topology = build_layout_topology(sample, layout, {0: 2}, zones=replica_zones(pods))
    assert [replica.zone for replica in topology.endpoints[0].replicas] == ["z1", None]
    assert all(replica.zone is None for entry in first.endpoints for replica in entry.replicas)


def zoned(world: World, zones: tuple[str, ...]) -> Topology:
    """v1 with replica r of every shard in zones[r]."""
    active = world.build("v1", seed=1)
    endpoints = [
        entry.model_copy(
            update={
                "replicas": [r.model_copy(update={"zone": zones[i]}) for i, r in enumerate(entry.replicas)]
            }
        )
        for entry in active.endpoints
    ]
    return Topology(revision=1, active=active.model_copy(update={"endpoints": endpoints}))


def test_the_router_sends_every_shard_request_to_its_zone_and_counts_the_locality() -> None:
    world = World()
    config = replace(settings(), zone="b")

    async def main() -> None:
        async with running(world, config, zoned(world, ("a", "b"))) as (client, _):
            for user in ("u0", "u1", "u2") * 5:
                assert (await client.post("/v1/recommend", json={"user_id": user})).status_code == 200
            text = (await client.get("/metrics")).text
        for shard in range(SHARDS):
            local, remote = world.replicas_of("v1", shard)[1], world.replicas_of("v1", shard)[0]
            assert local.calls and not remote.calls
        counted = "shardrec_router_shard_requests_by_zone_total"
        same = [line for line in text.splitlines() if line.startswith(counted) and 'locality="same"' in line]
        assert same and all(float(line.rsplit(" ", 1)[1]) > 0 for line in same)
        assert f'{counted}{{locality="other",shard="0"}} 0.0' in text

    asyncio.run(main())


def test_with_its_zones_replicas_refusing_the_router_crosses_zones() -> None:
    world = World()
    config = replace(settings(), zone="b")

    async def main() -> None:
        async with running(world, config, zoned(world, ("a", "b"))) as (client, _):
            for shard in range(SHARDS):
                world.replicas_of("v1", shard)[1].mode = "refuse"
            response = await client.post("/v1/recommend", json={"user_id": "u0"})
            assert response.status_code == 200
            text = (await client.get("/metrics")).text
        for shard in range(SHARDS):
            assert world.replicas_of("v1", shard)[0].calls  # the retry went to zone a
        assert 'shardrec_router_shard_requests_by_zone_total{locality="other",shard="0"} 1.0' in text

    asyncio.run(main())
