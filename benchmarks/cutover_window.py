"""How long routers disagree during a switch: the mixed window, with and without the staged preload.

    python benchmarks/cutover_window.py [--routers 3] [--switches 20] [--users 300000] [--write-doc]

Real processes on 127.0.0.1: two layouts (v1, v2) of the same items, each served by its own shard
servers, and `--routers` router processes watching one topology file (the local runtime's way; on
Kubernetes the ConfigMap watch replaces the file poll). Each switch alternates v1 <-> v2:

- staged: write `staged` = next layout, wait until every router reports it prepared (`/readyz`),
  then write `active` = next (what the operator and the local runtime do);
- direct: write `active` = next at once (no preload; each router loads the user table on its own).

Every router reports `switched_at` (its wall clock when the new layout began to answer; all routers
share this machine's clock). The mixed window of a switch is max - min of those times over the
routers: while it lasts, two clients of the same Service may get answers from different layouts.
Bounded: at most `--switches` switches per mode, each waiting at most 60 s.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, Server, router_argv, running, shard_argv, start_server, write_marked_section

from shardrec.api.topology import LayoutTopology, ReplicaEndpoint, RouterServing, ShardEndpoints, Topology
from shardrec.serving.index.build import build_layout
from shardrec.serving.index.embeddings import write_embeddings_dir
from shardrec.tools.local.state import atomic_write_text

DOC = REPO / "docs" / "benchmarks.md"
BEGIN, END = "<!-- cutover-window:begin -->", "<!-- cutover-window:end -->"
SHARDS = 2
WAIT_S = 60.0


def build(work: Path, users: int, items: int, dimension: int) -> dict[str, Path]:
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(items, dimension)).astype(np.float32)
    user_vectors = rng.normal(size=(users, dimension)).astype(np.float32)
    source = write_embeddings_dir(
        work / "embeddings",
        vectors,
        [f"item-{i}" for i in range(items)],
        users=user_vectors,
        user_ids=[f"user-{u}" for u in range(users)],
    )
    layouts = {}
    for version in ("v1", "v2"):
        out = work / f"layout-{version}"
        build_layout(source, out, version=version, shards=SHARDS, metric="ip", progress=False)
        layouts[version] = out
    return layouts


def layout_topology(version: str, folder: Path, shards: Sequence[Server]) -> LayoutTopology:
    return LayoutTopology(
        layout=folder.name,
        version=version,
        shards=SHARDS,
        dimension=int(np.load(folder.parent / "embeddings" / "items.npy", mmap_mode="r").shape[1]),
        metric="ip",
        artifact_dir=str(folder),
        endpoints=[
            ShardEndpoints(shard=s, replicas=[ReplicaEndpoint(name=f"{version}-{s}", url=shards[s].url)])
            for s in range(SHARDS)
        ],
    )


def reports(client: httpx.Client, routers: Sequence[Server]) -> list[RouterServing | None]:
    out: list[RouterServing | None] = []
    for router in routers:
        try:
            response = client.get(router.url + "/readyz")
            out.append(
                RouterServing.model_validate(response.json()["serving"]) if response.is_success else None
            )
        except (httpx.HTTPError, KeyError, ValueError):
            out.append(None)
    return out


def wait_for(client: httpx.Client, routers: Sequence[Server], check: str, layout: str) -> list[RouterServing]:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        seen = reports(client, routers)
        if all(r is not None and getattr(r, check) == layout for r in seen):
            return [r for r in seen if r is not None]
        time.sleep(0.01)
    raise RuntimeError(f"routers did not report {check}={layout} within {WAIT_S}s")


def measure(
    path: Path,
    routers: Sequence[Server],
    topologies: dict[str, LayoutTopology],
    switches: int,
    *,
    staged: bool,
    revision: int,
) -> tuple[list[float], int]:
    """Windows (ms) of `switches` switches starting from v1 active at `revision`; and the last revision.
    An even number of switches ends on v1 again."""
    windows = []
    with httpx.Client(timeout=2) as client:
        current = "v1"
        for _ in range(switches):
            following = "v2" if current == "v1" else "v1"
            nxt = topologies[following]
            if staged:
                revision += 1
                doc = Topology(revision=revision, active=topologies[current], staged=nxt)
                atomic_write_text(path, doc.model_dump_json())
                wait_for(client, routers, "prepared", nxt.layout)
            revision += 1
            atomic_write_text(path, Topology(revision=revision, active=nxt).model_dump_json())
            done = wait_for(client, routers, "layout", nxt.layout)
            times = [r.switched_at for r in done]
            windows.append((max(times) - min(times)) * 1000.0)
            current = following
    return windows, revision


def table(rows: dict[str, list[float]], routers: int, users: int) -> str:
    lines = [
        f"| mode ({routers} routers, {users:,} users) | switches | median window (ms) | max window (ms) |",
        "|---|---:|---:|---:|",
    ]
    for mode, windows in rows.items():
        lines.append(f"| {mode} | {len(windows)} | {statistics.median(windows):.1f} | {max(windows):.1f} |")
    return "\n".join(lines)


INTRO = """## Cutover: how long routers disagree

During a switch, the routers behind one Service change layout one after the other; until the last
one has, two requests of one client through different routers can be answered from different
layouts. The *mixed window* of a switch is the time from the first router answering from the new
layout to the last (each router reports `switched_at`; all share this machine's clock). Three real
router processes watch one topology file (polled every 100 ms, which dominates the staged window;
on Kubernetes a ConfigMap watch replaces the poll). With the staged preload (what the operator and
the local runtime do) each router has loaded the user table before the switch and only swaps a
reference; without it, each router loads every user on its own clock. Clients that must never go
back pin the layout order instead (docs/router.md)."""


def write_doc(text: str, command: str) -> None:
    """Replace (or append) this command's marked section of docs/benchmarks.md; `make bench`
    keeps every marked section when it rewrites the rest."""
    block = f"{BEGIN}\n{INTRO}\n\n`{command}` on this machine ({time.strftime('%Y-%m-%d')}):\n\n{text}\n{END}"
    write_marked_section(DOC, block)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--routers", type=int, default=3)
    parser.add_argument("--switches", type=int, default=20)
    parser.add_argument("--users", type=int, default=300_000)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--dimension", type=int, default=32)
    parser.add_argument("--write-doc", action="store_true", help="write the table into docs/benchmarks.md")
    args = parser.parse_args(argv)
    command = " ".join(
        ["python benchmarks/cutover_window.py", *(a for a in (argv or []) if a != "--write-doc")]
    )
    with tempfile.TemporaryDirectory(prefix="shardrec-cutover-") as tmp:
        work = Path(tmp)
        layouts = build(work, args.users, args.items, args.dimension)
        shard_servers: dict[str, list[Server]] = {}
        servers: list[Server] = []
        with running(servers):
            for version, folder in layouts.items():
                shard_servers[version] = []
                for shard in range(SHARDS):
                    server = start_server(f"shard-{version}-{shard}", shard_argv(folder, shard))
                    servers.append(server)
                    shard_servers[version].append(server)
            topologies = {v: layout_topology(v, f, shard_servers[v]) for v, f in layouts.items()}
            path = work / "topology.json"
            atomic_write_text(path, Topology(revision=1, active=topologies["v1"]).model_dump_json())
            routers = []
            for number in range(args.routers):
                router = start_server(f"router-{number}", router_argv(path))
                servers.append(router)
                routers.append(router)
            switches = args.switches + args.switches % 2  # even: each mode starts and ends on v1
            staged, revision = measure(path, routers, topologies, switches, staged=True, revision=1)
            direct, _ = measure(path, routers, topologies, switches, staged=False, revision=revision)
            rows = {"staged preload, then switch": staged, "direct switch (no preload)": direct}
    text = table(rows, args.routers, args.users)
    print(text)
    if args.write_doc:
        write_doc(text, command)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
