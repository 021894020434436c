"""Build a layout: partition items, build one hnswlib index per shard in parallel, publish atomically.

Everything is written into a staging folder beside the target; `layout.json` is published last
(temp file, fsync, rename), and the staging folder is renamed onto the target, so a reader sees
either no layout or a complete one. hnswlib releases the GIL inside `add_items`, so shard builds
run on threads and share the (memory-mapped) item matrix instead of copying it to processes.
A build given `Checkpoints` saves each shard's partial index now and then, so one killed part-way
(hours into 10M items) continues where it was when started again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import hnswlib
import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from shardrec.serving.cpus import usable_cpus
from shardrec.serving.index.carry import apply_to_embeddings, carried_state
from shardrec.serving.index.embeddings import Embeddings, load_embeddings
from shardrec.serving.index.files import fsync_dir, fsync_file, publish_atomically, sha256_file, write_durably
from shardrec.serving.index.foldin import fold_in_spec, item_gram
from shardrec.serving.index.layout import LayoutError, WantedLayout, parameter_mismatches, verify_layout
from shardrec.serving.index.manifest import (
    INDEX_FILE,
    LAYOUT_FILE,
    SHARD_IDS_FILE,
    SHARD_MANIFEST_FILE,
    USERS_DIR,
    CarriedPart,
    FileEntry,
    HnswParams,
    LayoutManifest,
    ShardEntry,
    ShardManifest,
    UsersPart,
    shard_dir_name,
)
from shardrec.serving.index.partitioning import assign_shards
from shardrec.serving.index.scoring import METRICS, Metric, hnsw_space
from shardrec.serving.index.users import write_users_part

_ADD_CHUNK = 8192
_LABEL_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


class BuildError(ValueError):
    """The build cannot start or finish; the message names the flag or file at fault."""


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _file_entry(folder: Path, name: str) -> FileEntry:
    path = folder / name
    fsync_file(path)
    return FileEntry(name=name, bytes=path.stat().st_size, sha256=sha256_file(path))


def _check_arguments(
    *, version: str, layout: str, shards: int, metric: str, m: int, ef_construction: int, workers: int
) -> None:
    for flag, value in (("--version", version), ("--layout", layout)):
        if not _LABEL_PATTERN.match(value):
            raise BuildError(f"{flag} {value!r}: use 1-63 letters, digits, '.', '_' or '-'")
    if shards < 1:
        raise BuildError(f"--shards must be at least 1, got {shards}")
    if metric not in METRICS:
        raise BuildError(f"--metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if m < 2:
        raise BuildError(f"--m must be at least 2, got {m}")
    if ef_construction < m:
        raise BuildError(f"--ef-construction ({ef_construction}) must be at least --m ({m})")
    if workers < 1:
        raise BuildError(f"--workers must be at least 1, got {workers}")


@dataclass(frozen=True)
class Checkpoints:
    """Where a long build saves each shard's partial index, so a build killed part-way (a session
    ended, a node drained) continues from there when started again instead of from nothing.

    After `every_seconds` of adding (at the next chunk boundary), and when a shard is complete,
    its index is saved under `folder/shard-NNNN/` with progress.json (`ShardProgress`). A build
    given the same folder loads each shard's checkpoint, refusing one made for other items or
    parameters, and adds the rest. build_layout leaves the folder in place: the caller removes
    it once it has read what it wants (the build's cost over every run, `read_progress`), so a
    kill between the publish and the caller's record loses nothing.

    A resumed shard is not byte-identical to an uninterrupted one (nor is any build on several
    threads): hnswlib does not save its level generator, so the levels drawn after a load come
    from its default seed. The graph is built by the same rule, with the same parameters."""

    folder: Path
    every_seconds: float = 600.0


@dataclass(frozen=True)
class ShardProgress:
    """progress.json of a shard's checkpoint. Wall and CPU seconds are those of `add_items` over
    every run up to the checkpoint (saving and loading checkpoints are counted apart, in
    `checkpoint_seconds`: an uninterrupted build does not pay them); CPU is the process's, so when
    shards are built side by side it is shared by them. `runs`: the runs that added items."""

    fingerprint: str
    count: int
    added: int
    index_file: str
    wall_seconds: float
    cpu_seconds: float
    runs: int
    checkpoint_seconds: float


_PROGRESS_FILE = "progress.json"


def read_progress(checkpoints: Path, shard: int) -> ShardProgress | None:
    """The progress of shard `shard`'s checkpoint under `checkpoints` (None: none saved yet)."""
    path = checkpoints / shard_dir_name(shard) / _PROGRESS_FILE
    if not path.exists():
        return None
    try:
        return ShardProgress(**json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, TypeError) as exc:
        raise BuildError(f"{path}: not a checkpoint's progress ({exc}); delete the checkpoint") from exc


def _fingerprint(embeddings: Embeddings, positions: npt.NDArray[np.int64], header: dict[str, object]) -> str:
    """sha256 of what a shard's index is built from: the hnswlib parameters, the shard's number
    (its seed), ids and vectors in build order, so a checkpoint is never continued with other
    items. The layout's name and version are not part of the index."""
    used = ("shard", "shards", "dimension", "metric", "hnsw")
    digest = hashlib.sha256(repr([(key, str(header[key])) for key in used]).encode())
    for start in range(0, len(positions), 262_144):
        chosen = positions[start : start + 262_144]
        digest.update("\n".join(embeddings.item_ids[p] for p in chosen.tolist()).encode())
        digest.update(np.ascontiguousarray(embeddings.items[chosen]).tobytes())
    return digest.hexdigest()


class _ShardCheckpoint:
    """One shard's checkpoint: resume from it, save to it, and account the adds' wall and CPU."""

    def __init__(self, checkpoints: Checkpoints, shard: int, fingerprint: str, count: int) -> None:
        self.settings = checkpoints
        self.folder = checkpoints.folder / shard_dir_name(shard)
        self.shard = shard
        self.fingerprint = fingerprint
        self.count = count
        self.progress = ShardProgress(fingerprint, count, 0, "", 0.0, 0.0, 0, 0.0)
        self.runs_before = 0
        self.span_wall = self.span_cpu = self.last_save = 0.0

    def resume(self, space: str, dimension: int) -> hnswlib.Index | None:
        """The checkpointed index (None: start afresh), then start timing the adds."""
        self.folder.mkdir(parents=True, exist_ok=True)
        saved = read_progress(self.settings.folder, self.shard)
        index = None
        if saved is not None:
            if (saved.fingerprint, saved.count) != (self.fingerprint, self.count):
                raise BuildError(
                    f"{self.folder}: a checkpoint of other items or parameters; delete it to build afresh"
                )
            started = time.monotonic()
            index = hnswlib.Index(space=space, dim=dimension)
            index.load_index(str(self.folder / saved.index_file), max_elements=self.count)
            if index.get_current_count() != saved.added:
                raise BuildError(
                    f"{self.folder / saved.index_file}: holds {index.get_current_count()} items, "
                    f"{_PROGRESS_FILE} says {saved.added}; delete the checkpoint"
                )
            self.progress = saved
            self.runs_before = saved.runs
            self._count_checkpoint_time(time.monotonic() - started)
        self._start_span()
        return index

    def added(self, index: hnswlib.Index, done: int) -> None:
        """After a chunk: save when a checkpoint is due or the shard is complete."""
        if done < self.count and time.monotonic() - self.last_save < self.settings.every_seconds:
            return
        wall, cpu = time.monotonic() - self.span_wall, time.process_time() - self.span_cpu
        started = time.monotonic()
        name = f"index-{done:012d}.bin"
        path = self.folder / name
        index.save_index(str(path))
        if path.stat().st_size != index.index_file_size():
            raise BuildError(f"{path}: wrote {path.stat().st_size} of {index.index_file_size()} bytes")
        fsync_file(path)
        previous = self.progress
        self.progress = ShardProgress(
            self.fingerprint,
            self.count,
            done,
            name,
            round(previous.wall_seconds + wall, 3),
            round(previous.cpu_seconds + cpu, 3),
            self.runs_before + 1,
            previous.checkpoint_seconds,
        )
        self._count_checkpoint_time(time.monotonic() - started)
        for stale in self.folder.glob("index-*.bin"):
            if stale.name != name:
                stale.unlink()
        self._start_span()

    def _count_checkpoint_time(self, seconds: float) -> None:
        progress = self.progress
        total = round(progress.checkpoint_seconds + seconds, 3)
        self.progress = ShardProgress(**{**asdict(progress), "checkpoint_seconds": total})
        if progress.index_file:
            text = json.dumps(asdict(self.progress), indent=2)
            publish_atomically(self.folder / _PROGRESS_FILE, text.encode())

    def _start_span(self) -> None:
        self.span_wall = self.last_save = time.monotonic()
        self.span_cpu = time.process_time()


def _build_shard(
    folder: Path,
    embeddings: Embeddings,
    positions: npt.NDArray[np.int64],
    header: dict[str, object],
    *,
    threads: int,
    advance: Callable[[int], None],
    checkpoints: Checkpoints | None = None,
) -> ShardEntry:
    started = time.monotonic()
    folder.mkdir(parents=True)
    metric: Metric = header["metric"]  # type: ignore[assignment]
    params: HnswParams = header["hnsw"]  # type: ignore[assignment]
    count, shard = len(positions), int(str(header["shard"]))
    checkpoint = None
    index = None
    if checkpoints is not None:
        checkpoint = _ShardCheckpoint(checkpoints, shard, _fingerprint(embeddings, positions, header), count)
        index = checkpoint.resume(hnsw_space(metric), embeddings.dimension)
    if index is None:
        index = hnswlib.Index(space=hnsw_space(metric), dim=embeddings.dimension)
        index.init_index(
            max_elements=count, ef_construction=params.ef_construction, M=params.m, random_seed=1 + shard
        )
    resumed_at = index.get_current_count()
    advance(resumed_at)
    for start in range(resumed_at, count, _ADD_CHUNK):
        chosen = positions[start : start + _ADD_CHUNK]
        # Labels are positions within the shard, i.e. line numbers of ids.txt.
        index.add_items(embeddings.items[chosen], np.arange(start, start + len(chosen)), num_threads=threads)
        advance(len(chosen))
        if checkpoint is not None:
            checkpoint.added(index, start + len(chosen))
    index.save_index(str(folder / INDEX_FILE))
    # hnswlib writes with an unchecked ofstream: on a full disk (or past a file-size limit) it
    # returns normally with the file cut short, which would then be checksummed as if whole.
    expected, written = index.index_file_size(), (folder / INDEX_FILE).stat().st_size
    if written != expected:
        raise BuildError(f"{folder / INDEX_FILE}: wrote {written} of {expected} bytes (is the disk full?)")
    del index
    write_durably(
        folder / SHARD_IDS_FILE, "".join(f"{embeddings.item_ids[p]}\n" for p in positions.tolist()).encode()
    )
    manifest = ShardManifest(
        **header,
        count=count,
        files=[_file_entry(folder, INDEX_FILE), _file_entry(folder, SHARD_IDS_FILE)],
        built_at=_now(),
        build_seconds=round(time.monotonic() - started, 3),
    )
    write_durably(folder / SHARD_MANIFEST_FILE, manifest.model_dump_json(indent=2).encode())
    return ShardEntry(
        shard=shard,
        directory=folder.name,
        count=count,
        manifest_sha256=sha256_file(folder / SHARD_MANIFEST_FILE),
    )


def _publish(staging: Path, out_dir: Path) -> None:
    """Move the finished staging folder onto `out_dir`, layout.json last."""
    if not out_dir.exists():
        staging.rename(out_dir)
        fsync_dir(out_dir.parent)
        return
    # The target exists but holds no layout.json (e.g. a pre-created volume folder or a build that
    # died): replace its entries one by one, then publish layout.json.
    for child in sorted(staging.iterdir()):
        if child.name == LAYOUT_FILE:
            continue
        target = out_dir / child.name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        child.rename(target)
    fsync_dir(out_dir)
    publish_atomically(out_dir / LAYOUT_FILE, (staging / LAYOUT_FILE).read_bytes())
    shutil.rmtree(staging)


@dataclass(frozen=True)
class _Header:
    """What every shard's manifest says about its layout."""

    layout: str
    version: str
    shards: int
    dimension: int
    metric: Metric
    hnsw: HnswParams

    def of_shard(self, shard: int) -> dict[str, object]:
        return {
            "layout": self.layout,
            "version": self.version,
            "shard": shard,
            "shards": self.shards,
            "dimension": self.dimension,
            "metric": self.metric,
            "hnsw": self.hnsw,
        }


def build_layout(
    embeddings_dir: Path,
    out_dir: Path,
    *,
    version: str,
    shards: int,
    metric: Metric = "cosine",
    m: int = 16,
    ef_construction: int = 200,
    workers: int | None = None,
    layout: str | None = None,
    expected_dimension: int | None = None,
    progress: bool = True,
    carry_dir: Path | None = None,
    checkpoints: Checkpoints | None = None,
) -> LayoutManifest:
    """Build and atomically publish the layout `out_dir` from an embeddings directory, plus the
    write logs of an earlier layout up to its cut when `carry_dir` names a carry folder (carry.py).
    With `checkpoints`, shards continue from (and save to) their checkpoints there."""
    workers = workers or usable_cpus()
    layout = layout or out_dir.name
    _check_arguments(
        version=version,
        layout=layout,
        shards=shards,
        metric=metric,
        m=m,
        ef_construction=ef_construction,
        workers=workers,
    )
    wanted = WantedLayout(layout, version, shards, metric, m, ef_construction, expected_dimension)
    existing = reusable_layout(out_dir, wanted)
    if existing is not None:
        return existing
    started = time.monotonic()
    embeddings, carried = _load_checked(embeddings_dir, expected_dimension, carry_dir)
    assignment = _assign_items(embeddings, shards)
    staging = _fresh_staging(out_dir)
    hnsw = HnswParams(m=m, ef_construction=ef_construction)
    header = _Header(layout, version, shards, embeddings.dimension, metric, hnsw)
    try:
        entries = _build_shards(
            staging,
            embeddings,
            assignment,
            header,
            workers=workers,
            progress=progress,
            checkpoints=checkpoints,
        )
        users = _write_users(staging, embeddings, metric)
        manifest = LayoutManifest(
            layout=layout,
            version=version,
            shards=shards,
            dimension=embeddings.dimension,
            metric=metric,
            hnsw=hnsw,
            item_count=len(embeddings.item_ids),
            shard_entries=entries,
            users=users,
            built_at=_now(),
            build_seconds=round(time.monotonic() - started, 3),
            source={"embeddings_dir": str(embeddings_dir.resolve()), "metadata": embeddings.metadata},
            quality=_quality_of(embeddings.metadata),
            carried=carried,
        )
        _seal(staging, manifest)
        _publish(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def reusable_layout(out_dir: Path, wanted: WantedLayout) -> LayoutManifest | None:
    """The layout already built in `out_dir` when it verifies (every sha256) and has the wanted
    parameters, so a rollback to a kept layout reuses it; None when `out_dir` holds no layout.
    Layouts are immutable: one that differs or does not verify is an error, never overwritten."""
    if not (out_dir / LAYOUT_FILE).exists():
        return None
    try:
        manifest = verify_layout(out_dir)
    except LayoutError as exc:
        raise BuildError(
            f"{out_dir}: holds a layout that does not verify ({exc}); delete it to rebuild"
        ) from exc
    mismatches = parameter_mismatches(manifest, wanted)
    if mismatches:
        raise BuildError(
            f"{out_dir}: already holds a different layout ({'; '.join(mismatches)}); "
            "versions are immutable, pick a new --out"
        )
    return manifest


def _quality_of(metadata: dict[str, Any]) -> dict[str, Any] | None:
    """The trainer's offline metrics (metadata.json `quality`), when it recorded any."""
    quality = metadata.get("quality")
    return dict(quality) if isinstance(quality, dict) else None


def _load_checked(
    embeddings_dir: Path, expected_dimension: int | None, carry_dir: Path | None = None
) -> tuple[Embeddings, CarriedPart | None]:
    """The embeddings, with the dimension the caller expects (None: any), and the carried writes
    of `carry_dir` applied (deterministic, so every per-shard build agrees on the items)."""
    embeddings = load_embeddings(embeddings_dir)
    if expected_dimension is not None and embeddings.dimension != expected_dimension:
        raise BuildError(
            f"{embeddings_dir / 'items.npy'}: dimension {embeddings.dimension}, expected {expected_dimension}"
        )
    if carry_dir is None:
        return embeddings, None
    try:
        cut, state = carried_state(carry_dir)
        embeddings = apply_to_embeddings(embeddings, state)
    except ValueError as exc:
        raise BuildError(f"--carry-dir {carry_dir}: {exc}") from exc
    deletes = sum(1 for vector in state.values() if vector is None)
    carried = CarriedPart(
        layout=cut.from_layout,
        shards=cut.from_shards,
        upto=list(cut.upto),
        upserts=len(state) - deletes,
        deletes=deletes,
    )
    return embeddings, carried


def _assign_items(embeddings: Embeddings, shards: int) -> npt.NDArray[np.int64]:
    """Each item's shard; every shard must get at least one item."""
    assignment = assign_shards(embeddings.item_ids, shards)
    counts = np.bincount(assignment, minlength=shards)
    if (counts == 0).any():
        raise BuildError(
            f"--shards {shards}: {len(embeddings.item_ids)} items leave shards "
            f"{np.flatnonzero(counts == 0).tolist()} empty; use fewer shards"
        )
    return assignment


def _fresh_staging(out_dir: Path) -> Path:
    """An empty staging folder beside `out_dir` (a leftover of this pid is removed)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.parent / f".{out_dir.name}.building-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    return staging


def _build_shards(
    staging: Path,
    embeddings: Embeddings,
    assignment: npt.NDArray[np.int64],
    header: _Header,
    *,
    workers: int,
    progress: bool,
    checkpoints: Checkpoints | None = None,
) -> list[ShardEntry]:
    """Every shard's index, `min(shards, workers)` shards at a time, the workers' threads shared
    among them."""
    shards = header.shards
    parallel = min(shards, workers)
    threads_per_shard = max(1, workers // parallel)
    lock = threading.Lock()
    with tqdm(
        total=len(embeddings.item_ids),
        unit="item",
        desc=f"{header.layout}: {shards} shards",
        disable=not progress,
    ) as bar:

        def advance(done: int) -> None:
            with lock:
                bar.update(done)

        def one(shard: int) -> ShardEntry:
            positions = np.flatnonzero(assignment == shard).astype(np.int64)
            return _build_shard(
                staging / shard_dir_name(shard),
                embeddings,
                positions,
                header.of_shard(shard),
                threads=threads_per_shard,
                advance=advance,
                checkpoints=checkpoints,
            )

        with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="index-build") as pool:
            return list(pool.map(one, range(shards)))


def _write_users(staging: Path, embeddings: Embeddings, metric: Metric) -> UsersPart | None:
    """The user table, when the embeddings have users, with the fold-in of recent items the
    embeddings' model family allows (and, for ALS, the Gram matrix of the stored item vectors)."""
    if embeddings.users is None or embeddings.user_ids is None:
        return None
    spec = fold_in_spec(embeddings.metadata)
    gram = item_gram(embeddings.items, metric) if spec.method == "als" else None
    return write_users_part(
        staging / USERS_DIR,
        embeddings.users,
        embeddings.user_ids,
        embeddings.seen,
        embeddings.seen_unknown_items,
        fold_in=(spec, gram),
    )


def _seal(staging: Path, manifest: LayoutManifest) -> None:
    """Make every shard folder durable, then write layout.json into the staging folder."""
    for folder in staging.iterdir():
        if folder.is_dir():
            fsync_dir(folder)
    publish_atomically(staging / LAYOUT_FILE, manifest.model_dump_json(indent=2).encode())


# --- a build per shard (an Indexed Job), then a publish step -------------------------------------------


@dataclass(frozen=True)
class PartPlan:
    """What a one-shard build and the publish step both derive from the embeddings: the
    deterministic assignment (partitioning.py), so every pod agrees on each shard's items."""

    embeddings: Embeddings
    assignment: npt.NDArray[np.int64]
    header: _Header
    carried: CarriedPart | None = None

    def positions(self, shard: int) -> npt.NDArray[np.int64]:
        return np.flatnonzero(self.assignment == shard).astype(np.int64)

    def count(self, shard: int) -> int:
        return int(np.count_nonzero(self.assignment == shard))

    def expected_header(self, shard: int) -> dict[str, object]:
        """The fields a shard part's manifest.json must carry to belong to this layout."""
        return self.header.of_shard(shard)


def plan_parts(
    embeddings_dir: Path, wanted: WantedLayout, *, workers: int = 1, carry_dir: Path | None = None
) -> PartPlan:
    """Load the embeddings and assign items to shards, after checking the arguments."""
    _check_arguments(
        version=wanted.version,
        layout=wanted.layout,
        shards=wanted.shards,
        metric=wanted.metric,
        m=wanted.m,
        ef_construction=wanted.ef_construction,
        workers=workers,
    )
    embeddings, carried = _load_checked(embeddings_dir, wanted.dimension, carry_dir)
    assignment = _assign_items(embeddings, wanted.shards)
    metric: Metric = wanted.metric  # type: ignore[assignment]
    hnsw = HnswParams(m=wanted.m, ef_construction=wanted.ef_construction)
    header = _Header(wanted.layout, wanted.version, wanted.shards, embeddings.dimension, metric, hnsw)
    return PartPlan(embeddings, assignment, header, carried)


def build_shard_part(plan: PartPlan, shard: int, work_dir: Path, *, workers: int, progress: bool) -> Path:
    """Build shard `shard` alone into a fresh `work_dir/shard-NNNN` (index, ids, manifest.json with
    sha256s) and return that folder. Same seed and item order as build_layout, so with one thread the
    files are byte-identical to a one-shot build's."""
    if not 0 <= shard < plan.header.shards:
        raise BuildError(f"--only-shard {shard}: the layout has shards 0..{plan.header.shards - 1}")
    if workers < 1:
        raise BuildError(f"--workers must be at least 1, got {workers}")
    folder = work_dir / shard_dir_name(shard)
    if folder.exists():
        shutil.rmtree(folder)
    positions = plan.positions(shard)
    with tqdm(total=len(positions), unit="item", desc=f"shard {shard}", disable=not progress) as bar:

        def advance(done: int) -> None:
            bar.update(done)

        _build_shard(
            folder, plan.embeddings, positions, plan.header.of_shard(shard), threads=workers, advance=advance
        )
    fsync_dir(folder)
    return folder


def write_users_for_parts(plan: PartPlan, work_dir: Path) -> UsersPart | None:
    """The router's part, written by the publish step into a fresh `work_dir/users`."""
    target = work_dir / USERS_DIR
    if target.exists():
        shutil.rmtree(target)
    work_dir.mkdir(parents=True, exist_ok=True)
    return _write_users(work_dir, plan.embeddings, plan.header.metric)


def manifest_from_parts(
    plan: PartPlan,
    entries: list[ShardEntry],
    users: UsersPart | None,
    *,
    embeddings_dir: Path,
    build_seconds: float,
) -> LayoutManifest:
    """layout.json of a layout assembled from verified shard parts. Pure."""
    header = plan.header
    return LayoutManifest(
        layout=header.layout,
        version=header.version,
        shards=header.shards,
        dimension=header.dimension,
        metric=header.metric,
        hnsw=header.hnsw,
        item_count=len(plan.embeddings.item_ids),
        shard_entries=entries,
        users=users,
        built_at=_now(),
        build_seconds=round(build_seconds, 3),
        source={"embeddings_dir": str(embeddings_dir.resolve()), "metadata": plan.embeddings.metadata},
        quality=_quality_of(plan.embeddings.metadata),
        carried=plan.carried,
    )
