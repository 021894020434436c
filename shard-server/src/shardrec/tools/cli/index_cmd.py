"""`recctl index build|verify|fetch|delete|list`: layouts in a folder or an S3 store.

See docs/object-storage.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from shardrec.api.commands import (
    DEFAULT_S3_REGION,
    IndexBuildFlags,
    ObjectStoreCliFlags,
    ObjectStoreFlags,
    build_report,
)
from shardrec.serving.carry.store import CarryFolderError, delete_carry_folders, fetch_carry
from shardrec.serving.cpus import usable_cpus
from shardrec.serving.index.build import (
    BuildError,
    PartPlan,
    build_layout,
    build_shard_part,
    manifest_from_parts,
    plan_parts,
    reusable_layout,
    write_users_for_parts,
)
from shardrec.serving.index.embeddings import EmbeddingsError
from shardrec.serving.index.layout import LayoutError, WantedLayout, verify_layout
from shardrec.serving.index.manifest import SHARD_MANIFEST_FILE, LayoutManifest, ShardEntry, shard_dir_name
from shardrec.serving.index.scoring import METRICS
from shardrec.serving.storage.errors import StoreError
from shardrec.serving.storage.layouts import (
    check_shard_part,
    delete_layout,
    fetch_router,
    fetch_shard,
    list_layouts,
    publish_layout,
    publish_parts,
    reusable_stored_layout,
    upload_shard_part,
)
from shardrec.serving.storage.stores import (
    ENV_ENDPOINT,
    ENV_PATH_STYLE,
    ENV_REGION,
    FileStore,
    ObjectStore,
    S3Settings,
    open_store,
)
from shardrec.serving.storage.urls import LocationError, S3Location, is_remote, parse_location
from shardrec.tools.cli.main import CliError


def _add_object_store_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "object store (s3:// URLs; credentials only from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
        "AWS_SESSION_TOKEN)"
    )
    group.add_argument(
        ObjectStoreCliFlags.ENDPOINT,
        dest="s3_endpoint",
        default=os.environ.get(ENV_ENDPOINT) or None,
        help=f"S3 API endpoint URL, e.g. http://127.0.0.1:8333 (default: AWS; env {ENV_ENDPOINT})",
    )
    group.add_argument(
        ObjectStoreCliFlags.REGION,
        dest="s3_region",
        default=os.environ.get(ENV_REGION) or DEFAULT_S3_REGION,
        help=f"region (default {DEFAULT_S3_REGION}; env {ENV_REGION})",
    )
    group.add_argument(
        ObjectStoreCliFlags.PATH_STYLE,
        dest="s3_path_style",
        action="store_true",
        default=os.environ.get(ENV_PATH_STYLE, "") in {"1", "true", "yes"},
        help="path-style addressing (endpoint/bucket/key), as most self-hosted stores need "
        f"(env {ENV_PATH_STYLE}=1)",
    )


def object_store_flags(args: argparse.Namespace) -> ObjectStoreFlags:
    return ObjectStoreFlags(endpoint=args.s3_endpoint, region=args.s3_region, path_style=args.s3_path_style)


def _settings(args: argparse.Namespace) -> S3Settings:
    flags = object_store_flags(args)
    return S3Settings(endpoint=flags.endpoint, region=flags.region, path_style=flags.path_style)


def _store(url: str, args: argparse.Namespace) -> ObjectStore:
    try:
        return open_store(url, _settings(args))
    except LocationError as exc:
        raise CliError(str(exc)) from exc


def _add_layout_flags(parser: argparse.ArgumentParser) -> None:
    """What names a layout: the flags `index build` and `index publish` share."""
    parser.add_argument(
        "--embeddings",
        required=True,
        help="embeddings directory (docs/embeddings-format.md): a path or s3://bucket/prefix",
    )
    parser.add_argument(
        "--out",
        required=True,
        help="layout to create: a folder, or s3://bucket/store-prefix/<layout-id>; an existing layout "
        "with the same parameters that verifies is reused",
    )
    parser.add_argument("--version", required=True, help="index version label, e.g. v3 or 2026-11-23")
    parser.add_argument("--shards", type=int, required=True, help="number of shards (partitions)")
    parser.add_argument("--metric", choices=METRICS, default="cosine", help="similarity (default cosine)")
    parser.add_argument("--m", type=int, default=16, help="HNSW graph degree M (default 16)")
    parser.add_argument("--ef-construction", type=int, default=200, help="HNSW ef_construction (default 200)")
    parser.add_argument(
        "--layout", default=None, help="layout id recorded in layout.json (default: --out's name)"
    )
    parser.add_argument(
        "--dimension", type=int, default=None, help="fail unless the embeddings have this dimension"
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="local scratch for a remote source or --out (default: a temporary folder, removed after)",
    )
    parser.add_argument(
        IndexBuildFlags.CARRY_DIR,
        default=None,
        metavar="DIR",
        help="a carry folder (carry.json and the old shards' write logs up to the cut), a path or "
        "s3://bucket/prefix (downloaded and checked complete first): fold those writes into the "
        "build, upserts in and deletes out (fold-in at the next version)",
    )


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("index", help="build, verify, fetch, delete and list index layouts")
    commands = parser.add_subparsers(dest="index_command", metavar="ACTION", required=True)

    build = commands.add_parser(
        "build", help="build a layout (or one shard of it) from an embeddings directory"
    )
    _add_layout_flags(build)
    build.add_argument(
        IndexBuildFlags.WORKERS,
        type=int,
        default=None,
        help="build threads (default: the CPUs this process may use: affinity and CPU quota)",
    )
    build.add_argument(
        IndexBuildFlags.ONLY_SHARD,
        type=int,
        default=None,
        metavar="N",
        help="build and store only shard N's files (shard-NNNN/, manifest.json last); "
        "`recctl index publish` then writes layout.json. A part that already verifies is reused",
    )
    build.add_argument(
        IndexBuildFlags.PUBLISH_WHEN_COMPLETE,
        action="store_true",
        help="with --only-shard: after this part, publish if every shard's part is there (the "
        "last part to finish publishes: one pod per shard of an Indexed Job, no extra step)",
    )
    build.add_argument(
        IndexBuildFlags.REPORT_FILE,
        type=Path,
        default=None,
        metavar="FILE",
        help="once the layout exists (built, published or reused), write its id, version and the "
        "model's offline metrics there as JSON (a build pod: /dev/termination-log, which the "
        "operator reads for spec.index.qualityGate)",
    )
    build.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_object_store_flags(build)
    build.set_defaults(func=run_build)

    publish = commands.add_parser(
        "publish",
        help="after one `build --only-shard N` per shard: verify every shard part, write the users "
        "part and layout.json last",
    )
    _add_layout_flags(publish)
    publish.add_argument("--no-progress", action="store_true", help="accepted for symmetry; no bar")
    _add_object_store_flags(publish)
    publish.set_defaults(func=run_publish)

    verify = commands.add_parser("verify", help="check manifests, shard numbering and every sha256")
    verify.add_argument("layout_dir", type=Path, metavar="DIR", help="layout folder")
    verify.set_defaults(func=run_verify)

    fetch = commands.add_parser(
        "fetch", help="copy one shard's files (or the router's) of a stored layout, verified"
    )
    fetch.add_argument("--store", required=True, help="store: a folder or s3://bucket/prefix")
    fetch.add_argument("--layout", required=True, help="layout id (its folder under the store)")
    fetch.add_argument("--dest", type=Path, required=True, help="local layout folder to fill")
    part = fetch.add_mutually_exclusive_group(required=True)
    part.add_argument("--shard", type=int, help="this shard's files")
    part.add_argument("--router", action="store_true", help="what the router loads (the user table)")
    _add_object_store_flags(fetch)
    fetch.set_defaults(func=run_fetch)

    delete = commands.add_parser("delete", help="delete a stored layout (layout.json first)")
    delete.add_argument("--store", required=True, help="store: a folder or s3://bucket/prefix")
    delete.add_argument("--layout", required=True, help="layout id")
    delete.add_argument(
        "--carry-store",
        help="also delete the layout's carry folder and every carry-back folder naming it, under this "
        "folder or s3://bucket/prefix (the cluster's, holding carry/ and carry-back/)",
    )
    _add_object_store_flags(delete)
    delete.set_defaults(func=run_delete)

    listing = commands.add_parser("list", help="layouts in a store: complete or not, created when")
    listing.add_argument("--store", required=True, help="store: a folder or s3://bucket/prefix")
    listing.add_argument("--json", action="store_true", help="one JSON array")
    _add_object_store_flags(listing)
    listing.set_defaults(func=run_list)


@contextmanager
def _scratch(work_dir: Path | None) -> Iterator[Path]:
    if work_dir is not None:
        work_dir.mkdir(parents=True, exist_ok=True)
        yield work_dir
        return
    folder = Path(tempfile.mkdtemp(prefix="shardrec-build-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _local_carry(args: argparse.Namespace, scratch: Path) -> Path | None:
    """--carry-dir as a local folder: an s3:// carry folder (the carrier writes it onto the object
    store) is downloaded into `scratch` and checked complete; a path is used in place (the build
    checks it as it reads it)."""
    if args.carry_dir is None:
        return None
    if not is_remote(args.carry_dir):
        return Path(args.carry_dir)
    dest = scratch / "carry"
    shutil.rmtree(dest, ignore_errors=True)
    try:
        folder = fetch_carry(args.carry_dir, dest, _settings(args))
    except CarryFolderError as exc:
        raise BuildError(f"{IndexBuildFlags.CARRY_DIR} {exc}") from exc
    print(f"downloaded the carry folder {args.carry_dir} to {folder}")
    return folder


def download_source(store: ObjectStore, dest: Path) -> Path:
    """Copy every object under an s3:// embeddings prefix into `dest` (same relative names)."""
    keys = store.list_keys("")
    if not keys:
        raise CliError(f"{store.describe()}: no objects: not an embeddings directory")
    for key in keys:
        target = dest / key
        target.parent.mkdir(parents=True, exist_ok=True)
        store.download(key, target)
    return dest


def _summary(manifest: Any, where: str, verb: str) -> str:
    counts = [entry.count for entry in manifest.shard_entries]
    return (
        f"{verb} layout {manifest.layout} (version {manifest.version}) in {where}: {manifest.item_count} "
        f"items in {manifest.shards} shards {counts}, dimension {manifest.dimension}, "
        f"metric {manifest.metric}, {manifest.users.count if manifest.users else 0} users, "
        f"{manifest.build_seconds:.1f}s"
    )


def _report(args: argparse.Namespace, manifest: Any) -> None:
    """Write the build report (--report-file) for a layout that now exists."""
    if args.report_file is None:
        return
    try:
        args.report_file.write_text(build_report(manifest.layout, manifest.version, manifest.quality))
    except OSError as exc:
        raise CliError(f"{IndexBuildFlags.REPORT_FILE} {args.report_file}: {exc.strerror or exc}") from exc


def run_build(args: argparse.Namespace) -> int:
    try:
        return _run_build(args)
    except (BuildError, EmbeddingsError, LayoutError, StoreError, LocationError) as exc:
        raise CliError(str(exc)) from exc
    except OSError as exc:  # a full disk, a file-size limit, a read-only folder: one line
        where = f"{exc.filename}: " if exc.filename else ""
        raise CliError(f"{where}{exc.strerror or exc}") from exc


def _wanted(args: argparse.Namespace, out_name: str) -> WantedLayout:
    return WantedLayout(
        args.layout or out_name,
        args.version,
        args.shards,
        args.metric,
        args.m,
        args.ef_construction,
        args.dimension,
    )


def _out_store(args: argparse.Namespace) -> tuple[ObjectStore, str]:
    """--out as a store and the layout's key in it (a folder: its parent is a FileStore)."""
    out = parse_location(args.out)
    if isinstance(out, S3Location):
        store_location, out_name = out.parent_and_name()
        return open_store(store_location, _settings(args)), out_name
    return FileStore(out.parent), out.name


@contextmanager
def _local_embeddings(args: argparse.Namespace, scratch: Path) -> Iterator[Path]:
    source = parse_location(args.embeddings)
    if isinstance(source, S3Location):
        embeddings_dir = download_source(open_store(source, _settings(args)), scratch / "embeddings")
        print(f"downloaded {args.embeddings} to {embeddings_dir}")
        yield embeddings_dir
    else:
        yield source


def _run_build_part(args: argparse.Namespace) -> int:
    """`index build --only-shard N`: one shard part into the store, reused when it verifies."""
    store, out_name = _out_store(args)
    wanted = _wanted(args, out_name)
    shard = args.only_shard
    existing = reusable_stored_layout(store, out_name, wanted)
    if existing is not None:
        print(_summary(existing, args.out, "reused existing"))
        _report(args, existing)
        return 0
    with _scratch(args.work_dir) as scratch, _local_embeddings(args, scratch) as embeddings_dir:
        workers = args.workers or usable_cpus()
        carry_dir = _local_carry(args, scratch)
        plan = plan_parts(embeddings_dir, wanted, workers=workers, carry_dir=carry_dir)
        if not 0 <= shard < wanted.shards:
            raise BuildError(f"--only-shard {shard}: the layout has shards 0..{wanted.shards - 1}")
        found = check_shard_part(store, out_name, plan.expected_header(shard), plan.count(shard))
        if isinstance(found, ShardEntry):
            print(f"reused existing shard {shard} of layout {wanted.layout} in {args.out}")
        else:
            folder = build_shard_part(
                plan, shard, scratch / "parts", workers=workers, progress=not args.no_progress
            )
            upload_shard_part(folder, store, out_name)
            print(
                f"built shard {shard} of layout {wanted.layout} in {args.out}: {plan.count(shard)} items "
                f"(previous part: {found})"
            )
        if not args.publish_when_complete:
            return 0
        missing = _missing_parts(store, out_name, wanted.shards)
        if missing:
            print(f"shards {missing} not built yet: the last part to finish publishes the layout")
            return 0
        manifest = _publish_parts(store, out_name, plan, embeddings_dir, scratch, started=time.monotonic())
    print(_summary(manifest, args.out, "published"))
    _report(args, manifest)
    return 0


def run_publish(args: argparse.Namespace) -> int:
    try:
        return _run_publish(args)
    except (BuildError, EmbeddingsError, LayoutError, StoreError, LocationError) as exc:
        raise CliError(str(exc)) from exc


def _run_publish(args: argparse.Namespace) -> int:
    """Verify every shard part, write the users part, then layout.json last."""
    started = time.monotonic()
    store, out_name = _out_store(args)
    wanted = _wanted(args, out_name)
    existing = reusable_stored_layout(store, out_name, wanted)
    if existing is not None:
        print(_summary(existing, args.out, "reused existing"))
        return 0
    with _scratch(args.work_dir) as scratch, _local_embeddings(args, scratch) as embeddings_dir:
        plan = plan_parts(embeddings_dir, wanted, carry_dir=_local_carry(args, scratch))
        manifest = _publish_parts(store, out_name, plan, embeddings_dir, scratch, started=started)
    print(_summary(manifest, args.out, "published"))
    return 0


def _publish_parts(
    store: ObjectStore, out_name: str, plan: PartPlan, embeddings_dir: Path, scratch: Path, *, started: float
) -> LayoutManifest:
    """Check every shard part, then write the users part and layout.json last."""
    entries: list[ShardEntry] = []
    problems: list[str] = []
    for shard in range(plan.header.shards):
        found = check_shard_part(store, out_name, plan.expected_header(shard), plan.count(shard))
        if isinstance(found, ShardEntry):
            entries.append(found)
        else:
            problems.append(f"shard {shard}: {found}")
    if problems:
        raise BuildError(
            f"{store.describe(out_name)}: not every shard part verifies, layout.json not written: "
            + "; ".join(problems)
            + " (run `recctl index build --only-shard N` for each)"
        )
    users = write_users_for_parts(plan, scratch / "publish")
    shard_seconds = sum(_part_seconds(store, out_name, entry) for entry in entries)
    manifest = manifest_from_parts(
        plan,
        entries,
        users,
        embeddings_dir=embeddings_dir,
        build_seconds=shard_seconds + time.monotonic() - started,
    )
    publish_parts(store, out_name, manifest, scratch / "publish")
    return manifest


def _missing_parts(store: ObjectStore, out_name: str, shards: int) -> list[int]:
    """Shards whose part is not complete yet (no manifest.json, which is uploaded last)."""
    keys = set(store.list_keys(out_name + "/"))
    return [
        shard
        for shard in range(shards)
        if f"{out_name}/{shard_dir_name(shard)}/{SHARD_MANIFEST_FILE}" not in keys
    ]


def _part_seconds(store: ObjectStore, layout_id: str, entry: ShardEntry) -> float:
    """A shard part's build_seconds (its manifest was verified just before)."""
    data = store.read_bytes(f"{layout_id}/{entry.directory}/{SHARD_MANIFEST_FILE}")
    return float(json.loads(data)["build_seconds"])


def _run_build(args: argparse.Namespace) -> int:
    if args.only_shard is not None:
        return _run_build_part(args)
    if args.publish_when_complete:
        raise BuildError(f"{IndexBuildFlags.PUBLISH_WHEN_COMPLETE} needs {IndexBuildFlags.ONLY_SHARD}")
    out = parse_location(args.out)
    source = parse_location(args.embeddings)
    out_name = out.parent_and_name()[1] if isinstance(out, S3Location) else out.name
    wanted = WantedLayout(
        args.layout or out_name,
        args.version,
        args.shards,
        args.metric,
        args.m,
        args.ef_construction,
        args.dimension,
    )
    store: ObjectStore | None = None
    if isinstance(out, S3Location):
        store_location, out_name = out.parent_and_name()
        store = open_store(store_location, _settings(args))
        existing = reusable_stored_layout(store, out_name, wanted)
    else:
        existing = reusable_layout(out, wanted)
    if existing is not None:
        print(_summary(existing, args.out, "reused existing"))
        _report(args, existing)
        return 0
    with _scratch(args.work_dir) as scratch:
        if isinstance(source, S3Location):
            embeddings_dir = download_source(open_store(source, _settings(args)), scratch / "embeddings")
            print(f"downloaded {args.embeddings} to {embeddings_dir}")
        else:
            embeddings_dir = source
        local_out = out if isinstance(out, Path) else scratch / "layout" / out_name
        if store is not None and local_out.exists():
            shutil.rmtree(local_out)
        manifest = build_layout(
            embeddings_dir,
            local_out,
            version=args.version,
            shards=args.shards,
            metric=args.metric,
            m=args.m,
            ef_construction=args.ef_construction,
            workers=args.workers,
            layout=wanted.layout,
            expected_dimension=args.dimension,
            progress=not args.no_progress,
            carry_dir=_local_carry(args, scratch),
        )
        if store is not None:
            publish_layout(local_out, store, out_name)
    print(_summary(manifest, args.out, "built"))
    _report(args, manifest)
    return 0


def run_verify(args: argparse.Namespace) -> int:
    try:
        manifest = verify_layout(args.layout_dir)
    except LayoutError as exc:
        raise CliError(str(exc)) from exc
    summary = {
        "layout": manifest.layout,
        "version": manifest.version,
        "shards": manifest.shards,
        "items": manifest.item_count,
        "dimension": manifest.dimension,
        "metric": manifest.metric,
        "users": manifest.users.count if manifest.users else 0,
    }
    print(f"ok: {json.dumps(summary)}")
    return 0


def run_fetch(args: argparse.Namespace) -> int:
    store = _store(args.store, args)
    try:
        if args.router:
            manifest = fetch_router(store, args.layout, args.dest)
            what = "the router's part"
        else:
            manifest = fetch_shard(store, args.layout, args.shard, args.dest)
            what = f"shard {args.shard}"
    except (StoreError, LayoutError) as exc:
        raise CliError(str(exc)) from exc
    print(
        f"fetched {what} of layout {manifest.layout} (version {manifest.version}) into {args.dest}, verified"
    )
    return 0


def run_delete(args: argparse.Namespace) -> int:
    store = _store(args.store, args)
    try:
        count = delete_layout(store, args.layout)
    except StoreError as exc:
        raise CliError(str(exc)) from exc
    print(f"deleted layout {args.layout} from {store.describe()}: {count} objects")
    if args.carry_store is not None:
        carry_store = _store(args.carry_store, args)
        try:
            carried = delete_carry_folders(carry_store, args.layout)
        except StoreError as exc:
            raise CliError(str(exc)) from exc
        where = carry_store.describe()
        print(f"deleted the carry folders of layout {args.layout} from {where}: {carried} objects")
    return 0


def run_list(args: argparse.Namespace) -> int:
    store = _store(args.store, args)
    try:
        layouts = list_layouts(store)
    except StoreError as exc:
        raise CliError(str(exc)) from exc
    if args.json:
        print(json.dumps([layout.as_json() for layout in layouts]))
        return 0
    print(f"{'LAYOUT':<40} {'COMPLETE':<9} {'VERSION':<20} {'CREATED':<21} OBJECTS")
    for layout in layouts:
        print(
            f"{layout.layout:<40} {'yes' if layout.complete else 'no':<9} {layout.version or '-':<20} "
            f"{layout.created or '-':<21} {layout.objects}"
        )
    return 0
