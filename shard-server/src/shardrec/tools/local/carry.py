"""Fold-in at the next version in the local runtime: no acknowledged write is lost at a cutover.

1. The cut. When the build of a new layout starts while another layout is active, `take_cut`
   copies the active layout's leader logs (replica 0 is each shard's sequence authority, and the
   router acknowledges a write only after the leader's fsync, so its log holds every acknowledged
   write) into `carry/<new layout>/` with their last sequences as the cut (serving/index/carry.py).
   The build gets `--carry-dir` and folds those records into the source.
2. The forwarding. Every pass, `forward` reads the old leader logs after the last forwarded
   sequence, re-partitions the records by the new layout's shard count and sends them to the new
   layout's shards: to replica 0 of each new shard (which numbers, logs and applies them) and to
   its other replicas (numbered records, as the router replicates). Progress is kept in
   `carry/<new layout>/forwarded.json`, written after the new shards acknowledged. The pass itself
   is serving/carry/forwarding.py's, shared with the Kubernetes carrier; this module feeds it the
   log files (`FileOldLogs`, and `FileLeaderLog` for a follower's catch-up).
3. The gate. Until one pass has forwarded everything the old logs held when it read them
   (`caught_up`), the supervisor reports the new layout's replicas as not ready, so the planner
   cannot stage or switch to it.
4. The hand-over. When the planner switches the router to the new layout, the supervisor first
   fences the old layout's leaders (`POST /v1/admin/writes/fence`: they lead no new write, the
   router answers 503 and the client retries, then on the new layout) and forwards everything
   their logs hold; only then does it write the topology. Without the fence, a write the old
   layout acknowledged just before the switch could be forwarded after a newer write of the same
   item made on the new layout, and undo it. The forwarding goes on after the switch (a fenced
   leader that restarts is open again, and a router worker may still be on the old topology)
   until the old layout is deleted and a last pass found nothing new.

What a newer layout needs of an old layout's logs is either in its carry folder (a copy, up to
the cut) or forwarded into its own logs (after the cut). Deleting a layout removes its processes
and, with retention, its artifact folder; its `writes/<layout>/` and `carry/<layout>/` go only
later (`unneeded`): once the layout is neither known nor kept as an artifact (a rollback to a kept
layout replays its own logs) and no forwarding from it is still running.

On Kubernetes the same steps run in a carrier process per carrying layout
(`python -m shardrec.serving.carry`, serving/carry/carrier.py): the logs are read over HTTP (each
is on its leader's own volume), the carry folder and its progress are on the index store, and the
hand-over, the opening and the end are the operator's requests (docs/operator.md, "The carrier").

Not covered: a write taken by an old leader that restarted after its fence (or whose fence
failed while it was down) while a router still used the old topology, racing a write of the same
item on the new layout, may apply after it; a rollback to a kept layout (its artifact is reused,
so writes made on the newer layout are not carried back; its leaders are opened again).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

import httpx

from shardrec.planning.layouts import LayoutSpec
from shardrec.serving.carry.forwarding import (
    ForwardError,
    NewLayout,
    OldLogError,
    OldRead,
    Progress,
    ShardCalls,
    forward_pass,
)
from shardrec.serving.index.carry import (
    CARRY_FILE,
    PROGRESS_FILE,
    Cut,
    carried_state,
    in_range,
    read_carry,
    read_records,
    read_tail,
    write_carry,
)
from shardrec.serving.index.write_log import WriteLogError, WriteRecord, log_path
from shardrec.serving.shard.app import MAX_WRITE_OPS
from shardrec.tools.local.state import StateDir, atomic_write_json, read_json

log = logging.getLogger("shardrec.local")


def unneeded(present: Iterable[str], known: set[str], artifacts: set[str], sources: set[str]) -> list[str]:
    """Which of the layouts with a `writes/` or `carry/` folder (`present`) may lose them: not
    `known` (deleted), no artifact left (`artifacts`: a kept layout replays its own logs when rolled
    back to, and a newer cut reads its carry folder), and not the source of a forwarding that has
    not ended (`sources`). Pure."""
    return sorted(layout for layout in set(present) if layout not in known | artifacts | sources)


class CutError(Exception):
    """The serving layout's logs cannot be cut (unreadable, corrupt): the new build must not start."""


class FileOldLogs:
    """The old leaders' log files, followed from where the last successful pass read up to (each
    record is read once); `commit` moves that point once the pass's progress is written."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = list(paths)
        self.offsets = [0] * len(self.paths)
        self.sizes: tuple[int, ...] | None = None
        self._read_to: list[int] = list(self.offsets)

    def current_sizes(self) -> tuple[int, ...]:
        return tuple(path.stat().st_size if path.exists() else -1 for path in self.paths)

    def read(self, after: Sequence[int]) -> OldRead:
        try:
            tails = [read_tail(path, offset) for path, offset in zip(self.paths, self.offsets, strict=True)]
        except (OSError, WriteLogError) as exc:
            raise OldLogError(str(exc)) from exc
        self._read_to = [end for _, end in tails]
        return OldRead({shard: records for shard, (records, _) in enumerate(tails)})

    def commit(self, sizes: tuple[int, ...]) -> None:
        self.offsets, self.sizes = list(self._read_to), sizes


class FileLeaderLog:
    """The new leaders' log files, for a follower that must catch up."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = list(paths)

    def records_after(self, shard: int, applied: int) -> list[WriteRecord]:
        return in_range(read_records(self.paths[shard]), applied)[:MAX_WRITE_OPS]


class LocalCarry:
    """Cuts, forwards and gates for the layouts of one state folder. The forwarding itself is
    serving/carry/forwarding.py's, fed by the log files."""

    def __init__(self, state: StateDir, client: httpx.Client, token: str) -> None:
        self._state = state
        self._calls = ShardCalls(client, token)
        self._old_logs: dict[str, FileOldLogs] = {}
        """Per carrying layout, its old leaders' logs as far as they were read."""

    def close(self) -> None:
        self._calls.client.close()

    def folder(self, layout_id: str) -> Path:
        return self._state.root / "carry" / layout_id

    def leader_log(self, layout: str, shards: int, shard: int) -> Path:
        return log_path(self._state.write_log_dir(layout, 0), shards, shard)

    # --- the cut ---------------------------------------------------------------------------------

    def take_cut(self, new: LayoutSpec, old: LayoutSpec) -> Path:
        """The carry folder of `new` from `old`'s leader logs as they are now (kept if it exists:
        a restarted supervisor resumes the same cut)."""
        folder = self.folder(new.id)
        if (folder / CARRY_FILE).exists():
            return folder
        logs = {
            shard: read_records(self.leader_log(old.id, old.shards, shard)) for shard in range(old.shards)
        }
        cut = Cut(old.id, old.shards, tuple(logs[s][-1].seq if logs[s] else 0 for s in range(old.shards)))
        prior = carried_state(self.folder(old.id))[1] if (self.folder(old.id) / CARRY_FILE).exists() else {}
        write_carry(folder, cut, logs, prior)
        atomic_write_json(folder / PROGRESS_FILE, Progress(list(cut.upto)).as_dict())
        log.info("layout %s carries %s's writes up to %s", new.id, old.id, list(cut.upto))
        return folder

    # --- the gate --------------------------------------------------------------------------------

    def progress(self, layout_id: str) -> Progress | None:
        """None: `layout_id` carries nothing (built from its source alone)."""
        path = self.folder(layout_id) / PROGRESS_FILE
        if not path.exists():
            return None
        return Progress.from_dict(read_json(path))

    def source(self, layout_id: str) -> str | None:
        """The layout whose writes `layout_id` still forwards (None: none, or the forwarding ended)."""
        progress = self.progress(layout_id)
        if progress is None or progress.done:
            return None
        try:
            return read_carry(self.folder(layout_id))[0].from_layout
        except WriteLogError:
            return None

    def holds_back(self, layout_id: str) -> bool:
        """True while `layout_id` must not take traffic: writes of its old layout still wait."""
        progress = self.progress(layout_id)
        return progress is not None and not progress.caught_up

    # --- what may go ---------------------------------------------------------------------------

    def collect(self, known: set[str]) -> list[str]:
        """Remove the `writes/` and `carry/` folders no layout needs any more (`unneeded`); returns
        the layouts whose folders went."""
        roots = [self._state.root / "writes", self._state.root / "carry"]
        present = [folder.name for root in roots if root.is_dir() for folder in root.iterdir()]
        artifacts = {layout for layout in present if self._state.layout_dir(layout).exists()}
        sources: set[str] = set()
        for layout in known:
            progress = self.progress(layout)
            if progress is not None and not progress.done:
                try:
                    sources.add(read_carry(self.folder(layout))[0].from_layout)
                except WriteLogError:
                    continue
        gone = unneeded(present, known, artifacts, sources)
        for layout in gone:
            for root in roots:
                shutil.rmtree(root / layout, ignore_errors=True)
            self._old_logs.pop(layout, None)
            self.mark_fenced(layout, False)
        if gone:
            log.info("removed the write logs of deleted layouts %s", ", ".join(gone))
        return gone

    # --- the forwarding --------------------------------------------------------------------------

    def forward(self, new: LayoutSpec, urls: dict[tuple[int, int], str], live: set[str]) -> int:
        """One pass for `new` (`urls`: (shard, replica) -> base URL of its replicas, every one
        ready). Returns how many records it forwarded. `live`: the layouts that still exist; once
        the old one is gone nothing more reaches its logs, and a pass that finds nothing is the last."""
        return self._pass(new, urls, live) or 0

    def hand_over(
        self, new: LayoutSpec, old_leaders: dict[int, str], urls: dict[tuple[int, int], str], live: set[str]
    ) -> bool:
        """Right before the router switches to `new`: fence the leaders of the layout it carries
        from (`old_leaders`: shard -> URL of replica 0; they refuse new writes, with a 503 the
        client retries, and name their last sequence), then forward everything their logs hold.
        True: the switch may go ahead, no write acknowledged by the old layout is left behind (one
        whose leader was down could not take writes; if it comes back, the forwarding after the
        switch carries what it takes). False: the fence or the forwarding failed; the fenced
        leaders are opened again and the switch waits for the next pass."""
        progress = self.progress(new.id)
        if progress is None or progress.done:
            return True
        fenced = [url for url in old_leaders.values() if self.fence(url, True)]
        if self._pass(new, urls, live, force=True) is not None:
            log.info("layout %s takes over: %d leaders fenced, every write forwarded", new.id, len(fenced))
            return True
        for url in fenced:
            self.fence(url, False)
        return False

    @property
    def _fenced_file(self) -> Path:
        return self._state.root / "fenced-layouts.json"

    def fenced_layouts(self) -> set[str]:
        """Layouts whose leaders a hand-over fenced (kept on disk: a supervisor that dies between
        the fence and the switch leaves them fenced, and the next one must know)."""
        path = self._fenced_file
        return {str(x) for x in read_json(path)} if path.exists() else set()

    def mark_fenced(self, layout_id: str, fenced: bool) -> None:
        layouts = self.fenced_layouts()
        changed = (layouts | {layout_id}) if fenced else (layouts - {layout_id})
        if changed != layouts:
            atomic_write_json(self._fenced_file, sorted(changed))

    def fence(self, leader_url: str, fenced: bool) -> bool:
        """Fence (or open) one leader; False when it did not answer."""
        return self._calls.fence(leader_url, fenced) is not None

    def _pass(
        self, new: LayoutSpec, urls: dict[tuple[int, int], str], live: set[str], *, force: bool = False
    ) -> int | None:
        """One forwarding pass: the records forwarded, or None when it failed (nothing recorded)."""
        progress = self.progress(new.id)
        if progress is None or progress.done:
            return 0
        try:
            cut, _ = read_carry(self.folder(new.id))
        except WriteLogError as exc:
            log.warning("carry folder of %s unusable: %s", new.id, exc)
            return None
        old_alive = cut.from_layout in live
        old = self._old_logs.get(new.id)
        if old is None:
            paths = [self.leader_log(cut.from_layout, cut.from_shards, s) for s in range(cut.from_shards)]
            old = self._old_logs[new.id] = FileOldLogs(paths)
        sizes = old.current_sizes()
        if not force and progress.caught_up and old_alive and old.sizes == sizes:
            return 0  # nothing appended since the last pass
        replicas = [self._replicas(urls, shard) for shard in range(new.shards)]
        leaders = FileLeaderLog([self.leader_log(new.id, new.shards, s) for s in range(new.shards)])
        try:
            result = forward_pass(
                progress, old, NewLayout(self._calls, replicas, leaders), final=not old_alive
            )
        except OldLogError as exc:
            log.warning("cannot read %s's logs to forward to %s: %s", cut.from_layout, new.id, exc)
            return None
        except ForwardError as exc:
            log.warning("forwarding writes to %s: %s (retried next pass)", new.id, exc)
            return None
        if not progress.caught_up:
            log.info(
                "layout %s caught up with %s's writes (%d forwarded)",
                new.id,
                cut.from_layout,
                result.progress.forwarded,
            )
        atomic_write_json(self.folder(new.id) / PROGRESS_FILE, result.progress.as_dict())
        old.commit(sizes)
        return result.sent

    @staticmethod
    def _replicas(urls: dict[tuple[int, int], str], shard: int) -> list[str]:
        """The URLs of `shard`'s replicas, replica 0 first; none when replica 0 is not ready."""
        replicas = sorted(r for s, r in urls if s == shard)
        if not replicas or replicas[0] != 0:
            return []
        return [urls[(shard, r)] for r in replicas]
