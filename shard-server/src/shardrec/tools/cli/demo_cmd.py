"""`recctl demo`: the whole product on real data in one command (`make demo`).

Trains implicit-ALS embeddings on MovieLens latest-small (holding out each user's latest rating,
so the evaluation is honest), starts a local 4-shard x 2-replica cluster with its router on
127.0.0.1:8080, prints recommendations with titles, an item-to-item example and the evaluation
table, then tells the user how to drive it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import httpx
import yaml

from shardrec.tools.cli.main import CliError
from shardrec.tools.local.state import StateDir, is_supervisor_running

DEMO_USERS = ("1", "42", "414")
DEMO_ITEM = "1"  # Toy Story (1995)
CLUSTER_NAME = "movielens"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("demo", help="train on MovieLens and run a local sharded cluster")
    parser.add_argument("--movielens", type=Path, help="MovieLens folder (default: ../shared/data/...)")
    parser.add_argument("--workdir", type=Path, default=Path(".shardrec"), help="where data and state go")
    parser.add_argument("--port", type=int, default=8080, help="router port on 127.0.0.1")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--skip-eval", action="store_true", help="do not print the evaluation table")
    parser.set_defaults(func=run)


def _recctl(*args: str) -> None:
    completed = subprocess.run([sys.executable, "-m", "shardrec.tools.cli.main", *args], check=False)
    if completed.returncode != 0:
        raise CliError(f"`recctl {' '.join(args)}` failed (exit {completed.returncode})")


def cluster_manifest(
    embeddings: Path, version: str, shards: int, replicas: int, dimension: int = 64
) -> dict[str, Any]:
    return {
        "apiVersion": "shardrec.io/v1alpha1",
        "kind": "RecommenderCluster",
        "metadata": {"name": CLUSTER_NAME},
        "spec": {
            "shards": shards,
            "replicasPerShard": replicas,
            "index": {
                "version": version,
                "source": str(embeddings.resolve()),
                "dimension": dimension,
                "metric": "ip",
                "hnsw": {"m": 16, "efConstruction": 200, "efSearch": 100},
            },
            "router": {"consistency": "strict", "timeoutMs": 1000},
            "rollout": {"keepPreviousLayouts": 1, "rollbackWindowSeconds": 60, "drainSeconds": 2},
        },
    }


def _dimension(embeddings: Path) -> int:
    """The embedding dimension the trainer recorded in metadata.json."""
    from shardrec.serving.index.embeddings import read_metadata

    counts = read_metadata(embeddings / "metadata.json").get("counts") or {}
    return int(counts.get("dimension", 64))


def _print_recommendations(router: str, titles: dict[str, str]) -> None:
    with httpx.Client(base_url=router, timeout=10) as client:
        for user in DEMO_USERS:
            answer = client.post("/v1/recommend", json={"user_id": user, "k": 5}).json()
            print(f"\nTop 5 for user {user} (index {answer['index_version']}, "
                  f"{answer['shards']['answered']}/{answer['shards']['total']} shards):")  # fmt: skip
            for item in answer["items"]:
                print(f"  {item['score']:7.3f}  {titles.get(item['item_id'], item['item_id'])}")
        similar = client.post("/v1/similar", json={"item_id": DEMO_ITEM, "k": 5}).json()
        print(f"\nMovies similar to {titles.get(DEMO_ITEM, DEMO_ITEM)}:")
        for item in similar["items"]:
            print(f"  {item['score']:7.3f}  {titles.get(item['item_id'], item['item_id'])}")


def run(args: argparse.Namespace) -> int:
    from shardrec.tools.pipeline.evaluate_job import evaluate_embeddings
    from shardrec.tools.pipeline.movielens import load_titles, resolve_movielens_dir
    from shardrec.tools.pipeline.sources import DataSource
    from shardrec.tools.pipeline.train_job import train_embeddings
    from shardrec.tools.pipeline.training import TrainParams

    movielens = resolve_movielens_dir(args.movielens)
    workdir: Path = args.workdir
    embeddings = workdir / "data" / "movielens-v1"
    state = StateDir((workdir / CLUSTER_NAME).resolve())
    if is_supervisor_running(state):
        raise CliError(
            f"the demo cluster is already running ({state.root}); stop it with "
            f"`recctl down --name {CLUSTER_NAME}` first"
        )
    if not (embeddings / "metadata.json").exists():
        params = TrainParams()  # the tuned defaults (docs/evaluation.md, `recctl train --tune`)
        print(f"== training embeddings on {movielens}: {params.describe()}")
        summary = train_embeddings(DataSource("movielens", movielens), embeddings, params, holdout=1)
        print(f"   {summary.users} users x {summary.items} items in {summary.training_seconds:.1f}s")
    manifest = workdir / "data" / "cluster.yaml"
    manifest.write_text(
        yaml.safe_dump(
            cluster_manifest(embeddings, "v1", args.shards, args.replicas, _dimension(embeddings)),
            sort_keys=False,
        ),
        encoding="utf-8",
    )
    print(f"== starting {args.shards} shards x {args.replicas} replicas and the router")
    _recctl("up", "-f", str(manifest), "--state-dir", str(state.root), "--port", str(args.port),
            "--detach", "--wait", "240")  # fmt: skip
    router = f"http://127.0.0.1:{args.port}"
    _print_recommendations(router, load_titles(movielens))
    if not args.skip_eval:
        print("\n== offline evaluation (each user's latest rating held out)")
        report = evaluate_embeddings(embeddings, router_url=router, progress=True)
        print(report.markdown())
    print(_next_steps(router, manifest, state.root))
    return 0


def _next_steps(router: str, manifest: Path, state: Path) -> str:
    return textwrap.dedent(
        f"""
        The cluster keeps running in the background. Try:
          curl -s {router}/v1/recommend -H 'content-type: application/json' -d '{{"user_id": "42", "k": 10}}'
          open {router}/docs            # OpenAPI
          curl -s {router}/metrics      # Prometheus metrics
          .venv/bin/recctl status --state-dir {state}
        Roll a new index version (blue/green, no failed requests):
          sed -i 's/version: v1/version: v2/' {manifest}
          .venv/bin/recctl apply -f {manifest} --state-dir {state} --wait 240
        Rebalance to 3 shards the same way (edit `shards:`), then stop everything:
          .venv/bin/recctl down --state-dir {state}
        """
    )
