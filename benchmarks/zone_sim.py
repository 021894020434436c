"""Zone-aware replica choice, simulated: the share of shard requests that cross zones, with and
without the preference, and how evenly replicas are loaded.

    python benchmarks/zone_sim.py [--queries 3000] [--write-doc]

The router's own `choose_replica` (serving/router/replicas.py) over Replica objects: 3 zones, 8
shards, replicas of each shard spread over the zones as a zone topology spread constraint places
them (replica i of shard s in zone (s + i) mod 3), one router per zone, each query fanned out to
every shard. Each request is counted as outstanding until the next query (so the load term of the
power of two choices is exercised), then completed. Scenarios: 3 replicas per shard (one in each
zone), 2 replicas per shard (a third of the shards have none in a given zone), and 3 replicas
with zone "b" down (its replicas known dead). Pure computation, seeded; no processes.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, write_marked_section

from shardrec.serving.router.replicas import Replica, choose_replica

DOC = REPO / "docs" / "benchmarks.md"
BEGIN, END = "<!-- zone-choice:begin -->", "<!-- zone-choice:end -->"
ZONES = ("a", "b", "c")
SHARDS = 8


@dataclass(frozen=True)
class Outcome:
    cross_share: float
    busiest_over_mean: float
    failed: int


def simulate(replicas_per_shard: int, down: str | None, prefer: bool, queries: int, seed: int) -> Outcome:
    rng = random.Random(seed)
    shards = [
        [
            Replica(name=f"s{s}-r{i}", url=f"http://s{s}-r{i}", client=None, zone=ZONES[(s + i) % len(ZONES)])
            for i in range(replicas_per_shard)
        ]
        for s in range(SHARDS)
    ]
    for replicas in shards:
        for replica in replicas:
            if replica.zone == down:
                replica.probed(False, 0.0)  # ejected and known dead, as the health probe finds it
    routers = [zone for zone in ZONES if zone != down]
    counts: Counter[str] = Counter()
    cross = total = failed = 0
    for query in range(queries):
        router_zone = routers[query % len(routers)]
        chosen = []
        for replicas in shards:
            picked = choose_replica(replicas, 0.0, rng, (), router_zone if prefer else None)
            if picked is None:
                failed += 1
                continue
            picked.started()
            chosen.append(picked)
            counts[picked.name] += 1
            total += 1
            cross += picked.zone != router_zone
        for done in chosen:
            done.succeeded(0.002, 0.0)
    live = [r.name for replicas in shards for r in replicas if r.zone != down]
    mean = total / len(live)
    return Outcome(cross / total, max(counts[name] for name in live) / mean, failed)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--queries", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--write-doc", action="store_true")
    args = parser.parse_args()
    scenarios = (
        ("3 replicas per shard, one per zone", 3, None),
        ("2 replicas per shard (some shards have none in a zone)", 2, None),
        ('3 replicas per shard, zone "b" down (routers in a and c)', 3, "b"),
    )
    lines = [
        "| scenario | cross-zone share, no preference | cross-zone share, zone-aware "
        "| busiest replica / mean, "
        "no preference | busiest replica / mean, zone-aware | failed requests |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, replicas, down in scenarios:
        plain = simulate(replicas, down, False, args.queries, args.seed)
        aware = simulate(replicas, down, True, args.queries, args.seed)
        lines.append(
            f"| {name} | {plain.cross_share:.3f} | {aware.cross_share:.3f} | {plain.busiest_over_mean:.2f} "
            f"| {aware.busiest_over_mean:.2f} | {plain.failed + aware.failed} |"
        )
    section = (
        f"{BEGIN}\n## Zone-aware replica choice (simulation, `benchmarks/zone_sim.py`)\n\n"
        f"`python benchmarks/zone_sim.py --queries {args.queries} --write-doc`: the router's "
        f"`choose_replica` over 3 zones, {SHARDS} shards, one router per zone, every query fanned out to "
        "every shard; replica i of shard s in zone (s + i) mod 3. Cross-zone share = shard requests "
        "sent to a replica outside the router's zone / all shard requests.\n\n"
        + "\n".join(lines)
        + f"\n{END}\n"
    )
    print(section)
    if args.write_doc:
        write_marked_section(DOC, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
