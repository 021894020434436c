"""`recctl demo`: the whole product on real data in one command (`make demo`).

Trains implicit-ALS embeddings on MovieLens latest-small (holding out each user's latest rating,
so the evaluation is honest), starts a local 4-shard x 2-replica cluster with its router on
127.0.0.1:8080, prints recommendations with titles, an item-to-item example, a user's three new
clicks changing their recommendations at once (recent_items: fold-in at the router), a new movie
written while serving (PUT /v1/items, then DELETE) changing them at once too, and the evaluation
table, then tells the user how to drive it. With `--canary` it then trains a v2 with
other ALS parameters and rolls it out as a canary under bounded demo traffic, printing the
canary's analysis table and whether v2 was promoted or rolled back (`demo_canary`).
"""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import yaml

if TYPE_CHECKING:
    from shardrec.tools.pipeline.training import TrainParams

from shardrec.planning.canary import describe_step
from shardrec.tools.cli import demo_canary
from shardrec.tools.cli.main import CliError
from shardrec.tools.local.state import StateDir, is_supervisor_running

DEMO_USERS = ("1", "42", "414")
DEMO_ITEM = "1"  # Toy Story (1995)
FOLD_IN_USER = "42"
FOLD_IN_CLICKS = ("6377", "4886", "2355")  # Finding Nemo, Monsters, Inc., A Bug's Life
CLUSTER_NAME = "movielens"
NEW_MOVIE = "shardrec-new-1"
NEW_MOVIE_TITLE = "A new movie (written while serving)"
API_KEYS_FILE = "api-keys.txt"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("demo", help="train on MovieLens and run a local sharded cluster")
    parser.add_argument("--movielens", type=Path, help="MovieLens folder (default: ../shared/data/...)")
    parser.add_argument("--workdir", type=Path, default=Path(".shardrec"), help="where data and state go")
    parser.add_argument("--port", type=int, default=8080, help="router port on 127.0.0.1")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--skip-eval", action="store_true", help="do not print the evaluation table")
    canary = parser.add_argument_group(
        "canary (rollout.strategy: Canary of a v2 trained with other parameters)"
    )
    canary.add_argument(
        "--canary",
        action="store_true",
        help="then train a v2 with other ALS parameters, roll it out as a canary (shadow, then 25%% of "
        "users) under bounded demo traffic, and print its analysis table and outcome",
    )
    canary.add_argument(
        "--canary-regularization",
        type=float,
        metavar="X",
        help=f"v2's ALS regularization (default {demo_canary.DEFAULT_REGULARIZATION:g}; "
        "e.g. 100 gives a v2 the analysis rolls back)",
    )
    canary.add_argument(
        "--canary-alpha",
        type=float,
        metavar="X",
        help=f"v2's ALS alpha (default {demo_canary.DEFAULT_ALPHA:g})",
    )
    canary.add_argument(
        "--canary-timeout",
        type=float,
        metavar="SECONDS",
        help=f"stop the demo traffic after this long (default {demo_canary.DEFAULT_TIMEOUT_S:g}; "
        f"it also stops after {demo_canary.MAX_REQUESTS} requests or once the canary is decided)",
    )
    parser.set_defaults(func=run)


def _recctl(*args: str) -> None:
    completed = subprocess.run([sys.executable, "-m", "shardrec.tools.cli.main", *args], check=False)
    if completed.returncode != 0:
        raise CliError(f"`recctl {' '.join(args)}` failed (exit {completed.returncode})")


def demo_api_key(data: Path) -> tuple[Path, str]:
    """The demo's API key: item writes need a key with the `write` permission, and a router with keys
    asks one of every request. `<data>/api-keys.txt` holds `demo:<key> read,write` (mode 0600),
    made once and reused, so the printed curl lines keep working across demo runs."""
    path = data / API_KEYS_FILE
    if path.exists():
        name, _, rest = path.read_text(encoding="utf-8").strip().partition(":")
        fields = rest.split()
        if name == "demo" and fields:
            return path, fields[0]
    key = secrets.token_urlsafe(18)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as keys:
        keys.write(f"demo:{key} read,write\n")
    return path, key


def cluster_manifest(
    embeddings: Path,
    version: str,
    shards: int,
    replicas: int,
    dimension: int = 64,
    *,
    api_keys_file: Path | None = None,
    writes: bool = False,
) -> dict[str, Any]:
    manifest: dict[str, Any] = {
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
    if api_keys_file is not None:
        manifest["spec"]["auth"] = {"apiKeysFile": str(api_keys_file.resolve())}
    if writes:  # the demo writes a new movie while serving
        manifest["spec"]["writes"] = {"enabled": True}
    return manifest


def _dimension(embeddings: Path) -> int:
    """The embedding dimension the trainer recorded in metadata.json."""
    from shardrec.serving.index.embeddings import read_metadata

    counts = read_metadata(embeddings / "metadata.json").get("counts") or {}
    return int(counts.get("dimension", 64))


def _print_recommendations(router: str, titles: dict[str, str], key: str) -> None:
    with httpx.Client(base_url=router, timeout=10, headers={"x-api-key": key}) as client:
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


def fold_in_lines(client: httpx.Client, titles: dict[str, str]) -> list[str]:
    """User FOLD_IN_USER's top 5, then the top 5 right after three new clicks (`recent_items`:
    the router folds the user in from them, no retraining, no new index version)."""
    before = client.post("/v1/recommend", json={"user_id": FOLD_IN_USER, "k": 5})
    body = {
        "user_id": FOLD_IN_USER,
        "k": 5,
        "recent_items": [{"item_id": item} for item in FOLD_IN_CLICKS],
    }
    after = client.post("/v1/recommend", json=body)
    clicked = ", ".join(titles.get(item, item) for item in FOLD_IN_CLICKS)
    lines = [f"\nUser {FOLD_IN_USER} clicks {clicked}: recommendations at once (POST /v1/recommend "
             "with recent_items, same index version)"]  # fmt: skip
    if after.status_code != 200:
        error = after.json().get("error", {})
        return [*lines, f"  not available: {after.status_code} {error.get('code')}: {error.get('message')}"]
    old = [item["item_id"] for item in before.json()["items"]]
    new = [item["item_id"] for item in after.json()["items"]]
    lines.append(f"  {'before':<44} after")
    for previous, current in zip(old, new, strict=False):
        mark = " " if current in old else "*"
        lines.append(f"  {titles.get(previous, previous)[:42]:<44}{mark}{titles.get(current, current)}")
    lines.append(f"  (* new in the top 5: {sum(item not in old for item in new)} of {len(new)})")
    return lines


def _top(client: httpx.Client, k: int = 5) -> list[str]:
    answer = client.post("/v1/recommend", json={"user_id": FOLD_IN_USER, "k": k})
    answer.raise_for_status()
    return [item["item_id"] for item in answer.json()["items"]]


def new_movie_vector(embeddings: Path) -> list[float] | None:
    """A vector for a cold item close to FOLD_IN_USER's taste, as a content model would give one:
    the user's own direction, scaled to the longest item vector (so, by inner product, it ranks
    first for that user). None when the embeddings have no such user."""
    import numpy as np

    from shardrec.serving.index.embeddings import load_embeddings

    loaded = load_embeddings(embeddings)
    if loaded.users is None or FOLD_IN_USER not in (loaded.user_ids or []):
        return None
    user = np.asarray(loaded.users[(loaded.user_ids or []).index(FOLD_IN_USER)], dtype=np.float64)
    longest = float(np.linalg.norm(np.asarray(loaded.items, dtype=np.float64), axis=1).max())
    return [float(x) for x in user * (longest / float(np.linalg.norm(user)))]


def new_movie_lines(client: httpx.Client, titles: dict[str, str], vector: list[float] | None) -> list[str]:
    """A new movie written while serving (`PUT /v1/items/{id}`: the router sends it to its shard's
    leader and replicas, no rebuild, no new index version), FOLD_IN_USER's top 5 before and right
    after it, then its `DELETE` and the top 5 again."""
    lines = [f"\nA new movie, {NEW_MOVIE!r}, written while serving (PUT /v1/items/{NEW_MOVIE}: "
             "a vector near user 42's taste), then deleted (DELETE)"]  # fmt: skip
    if vector is None:
        return [*lines, f"  skipped: user {FOLD_IN_USER} is not in these embeddings"]
    named = {**titles, NEW_MOVIE: NEW_MOVIE_TITLE}
    before = _top(client)
    body = {"vector": vector, "metadata": {"title": NEW_MOVIE_TITLE}}
    written = client.put(f"/v1/items/{NEW_MOVIE}", json=body)
    if written.status_code != 200:
        error = written.json().get("error", {})
        return [*lines, f"  not available: {written.status_code} {error.get('code')}: {error.get('message')}"]
    ack = written.json()
    after = _top(client)
    deleted = client.delete(f"/v1/items/{NEW_MOVIE}")
    deleted.raise_for_status()
    gone = _top(client)
    lines.append(
        f"  acknowledged by {ack['acknowledged_by']} of {ack['ready_replicas']} replicas of shard "
        f"{ack['shard']} (token {ack['token']}); the delete as {deleted.json()['token']}"
    )
    lines.append(f"  {'before':<34} {'after the PUT':<36} after the DELETE")
    for row in zip(before, after, gone, strict=False):
        cells = [named.get(item, item)[:32] for item in row]
        mark = "*" if row[1] == NEW_MOVIE else " "
        lines.append(f"  {cells[0]:<34}{mark}{cells[1]:<36}{cells[2]}")
    lines.append(
        f"  (* the new movie: in the top 5 at once: {NEW_MOVIE in after}; "
        f"after its delete: {NEW_MOVIE in gone})"
    )
    return lines


def run(args: argparse.Namespace) -> int:
    from shardrec.tools.pipeline.evaluate_job import evaluate_embeddings
    from shardrec.tools.pipeline.movielens import load_titles, resolve_movielens_dir
    from shardrec.tools.pipeline.sources import DataSource
    from shardrec.tools.pipeline.train_job import train_embeddings
    from shardrec.tools.pipeline.training import TrainParams

    v2_params = _canary_params(args)
    timeout_s = demo_canary.check_timeout(
        args.canary_timeout if args.canary_timeout is not None else demo_canary.DEFAULT_TIMEOUT_S
    )
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
    keys_file, key = demo_api_key(workdir / "data")
    v1 = cluster_manifest(
        embeddings,
        "v1",
        args.shards,
        args.replicas,
        _dimension(embeddings),
        api_keys_file=keys_file,
        writes=True,
    )
    manifest.write_text(yaml.safe_dump(v1, sort_keys=False), encoding="utf-8")
    print(f"== starting {args.shards} shards x {args.replicas} replicas and the router")
    _recctl("up", "-f", str(manifest), "--state-dir", str(state.root), "--port", str(args.port),
            "--detach", "--wait", "240")  # fmt: skip
    router = f"http://127.0.0.1:{args.port}"
    titles = load_titles(movielens)
    _print_recommendations(router, titles, key)
    with httpx.Client(base_url=router, timeout=10, headers={"x-api-key": key}) as client:
        print("\n".join(fold_in_lines(client, titles)))
        print("\n".join(new_movie_lines(client, titles, new_movie_vector(embeddings))))
    if not args.skip_eval:
        print("\n== offline evaluation (each user's latest rating held out)")
        report = evaluate_embeddings(embeddings, router_url=router, api_key=key, progress=True)
        print(report.markdown())
    canary_manifest = None
    if v2_params is not None:
        canary_manifest = _run_canary(
            args,
            movielens=movielens,
            v1_embeddings=embeddings,
            v1=v1,
            params=v2_params,
            state=state,
            router=router,
            key=key,
            timeout_s=timeout_s,
        )
    print(_next_steps(router, manifest, state.root, key, canary_manifest))
    return 0


def _canary_params(args: argparse.Namespace) -> TrainParams | None:
    """v2's recipe with --canary (None without); a --canary-* flag without --canary is an error."""
    given = [
        flag
        for flag, value in (
            ("--canary-regularization", args.canary_regularization),
            ("--canary-alpha", args.canary_alpha),
            ("--canary-timeout", args.canary_timeout),
        )
        if value is not None
    ]
    if not args.canary:
        if given:
            raise CliError(f"{given[0]} needs --canary")
        return None
    regularization = args.canary_regularization
    alpha = args.canary_alpha
    return demo_canary.canary_params(
        demo_canary.DEFAULT_REGULARIZATION if regularization is None else regularization,
        demo_canary.DEFAULT_ALPHA if alpha is None else alpha,
    )


def _run_canary(
    args: argparse.Namespace,
    *,
    movielens: Path,
    v1_embeddings: Path,
    v1: dict[str, Any],
    params: TrainParams,
    state: StateDir,
    router: str,
    key: str,
    timeout_s: float,
) -> Path:
    """Train v2, apply it with rollout.strategy Canary, drive demo traffic until the canary is
    decided (bounded), print the analysis table and the outcome. Returns v2's manifest."""
    from shardrec.serving.index.embeddings import USER_IDS_FILE, read_ids, read_metadata
    from shardrec.tools.local.status_table import render_canary_analysis
    from shardrec.tools.pipeline.sources import DataSource
    from shardrec.tools.pipeline.train_job import train_embeddings

    data: Path = args.workdir / "data"
    embeddings = demo_canary.embeddings_dir(data, params)
    if not (embeddings / "metadata.json").exists():
        print(f"\n== training {demo_canary.VERSION} with other parameters: {params.describe()}")
        summary = train_embeddings(DataSource("movielens", movielens), embeddings, params, holdout=1)
        print(f"   {summary.users} users x {summary.items} items in {summary.training_seconds:.1f}s")
    print(f"\n== canary of {demo_canary.VERSION}: the two recipes")
    print(demo_canary.quality_line("v1", read_metadata(v1_embeddings / "metadata.json")))
    print(demo_canary.quality_line(demo_canary.VERSION, read_metadata(embeddings / "metadata.json")))
    manifest = data / f"cluster-{demo_canary.VERSION}-canary.yaml"
    manifest.write_text(
        yaml.safe_dump(demo_canary.canary_manifest(v1, embeddings), sort_keys=False), encoding="utf-8"
    )
    steps = ", then ".join(describe_step(demo_canary.CANARY, i) for i in range(len(demo_canary.CANARY.steps)))
    print(f"   rollout.strategy: Canary: {steps} ({manifest})")
    _recctl("apply", "-f", str(manifest), "--state-dir", str(state.root))
    print(f"   building and starting {demo_canary.VERSION} beside v1 (v1 keeps serving)")
    started = demo_canary.wait_for_start(state)
    users = demo_canary.demo_users(read_ids(v1_embeddings / USER_IDS_FILE))
    print(
        f"   canary started; demo traffic: /v1/recommend for {len(users)} users on {router}, "
        f"at most {demo_canary.MAX_REQUESTS} requests and {timeout_s:g}s"
    )
    watch = demo_canary.drive(router, state, users, started, timeout_s=timeout_s, api_key=key)
    answered = ", ".join(f"{version} {count}" for version, count in sorted(watch.versions.items()))
    print(f"   sent {watch.sent} requests, {len(watch.failed)} failed; answers by version: {answered}")
    for failure in watch.failed[:3]:
        print(f"     {failure}")
    print("\n== canary analysis (status.canary of the local runtime)")
    print(render_canary_analysis(watch.canary, demo_canary.CANARY))
    phase = watch.canary.phase
    if phase == "Promoted":
        switched = demo_canary.wait_for_switch(state)
        where = "the router now answers every user from it" if switched else "the switch is still under way"
        print(f"\n{demo_canary.VERSION} promoted: {where}.")
    elif phase == "RolledBack":
        served = watch.versions[demo_canary.VERSION]
        where = (
            f"v1 answers every user again ({demo_canary.VERSION} answered {served} of the demo's requests)"
            if served
            else "v1 answered every request throughout"
        )
        print(f"\n{demo_canary.VERSION} rolled back by its analysis: {where}.")
    elif phase == "Aborted":
        print(f"\n{demo_canary.VERSION} aborted by command: v1 keeps serving.")
    else:
        raise CliError(
            f"the canary is still running after the demo traffic ({watch.sent} requests, "
            f"--canary-timeout {timeout_s:g}s): it needs requests to be decided; "
            f"`recctl status --state-dir {state.root}` shows it"
        )
    return manifest


def _next_steps(router: str, manifest: Path, state: Path, key: str, canary: Path | None = None) -> str:
    if canary is not None:
        rollout = f"""\
        The canary's manifest is {canary}; `recctl status` shows its analysis.
        Put v1's manifest back (after a promotion: back to v1, instant while v1 is kept):
          .venv/bin/recctl apply -f {manifest} --state-dir {state} --wait 240"""
    else:
        rollout = f"""\
        Roll a new index version (blue/green, no failed requests):
          sed -i 's/version: v1/version: v2/' {manifest}
          .venv/bin/recctl apply -f {manifest} --state-dir {state} --wait 240
        Or a canary of a v2 trained with other parameters, with its analysis table:
          .venv/bin/recctl down --state-dir {state} && .venv/bin/recctl demo --canary"""
    return textwrap.dedent(
        f"""
        The cluster keeps running in the background. Its API key (every request needs one, writes
        need its write permission) is in the keys file beside the manifest. Try:
          KEY='{key}'
          curl -s {router}/v1/recommend -H "x-api-key: $KEY" -H 'content-type: application/json' \\
            -d '{{"user_id": "42", "k": 10}}'
          curl -s {router}/v1/recommend -H "x-api-key: $KEY" -H 'content-type: application/json' \\
            -d '{{"recent_items": [{{"item_id": "6377"}}, {{"item_id": "4886", "weight": 5}}], "k": 10}}'
          curl -s -X DELETE {router}/v1/items/1 -H "x-api-key: $KEY"   # Toy Story gone, at once
          open {router}/docs            # OpenAPI
          curl -s {router}/metrics      # Prometheus metrics
          .venv/bin/recctl status --state-dir {state}
{rollout}
        Rebalance to 3 shards the same way (edit `shards:`), then stop everything:
          .venv/bin/recctl down --state-dir {state}
        """
    )
