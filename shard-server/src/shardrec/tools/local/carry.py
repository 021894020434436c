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
5. The carry back. When the spec names a kept layout again (a rollback within its window, a roll
   forward to a layout still kept, or a kept artifact) while another one serves
   (`wants_carry_back`), the kept layout has its artifact and its own logs but none of the writes
   the serving layout took. Those are exactly the serving layout's history: its leader logs from
   their first record (what was forwarded into it and what it took itself), preceded by its own
   build's carry folder when that was cut from a third layout (`back_logs`). Every record there is
   later than the kept layout's last record of the same item (its leaders were fenced before the
   serving layout took writes), so replaying them all, re-partitioned to the kept layout's shard
   count, leaves each item at its latest state; records it already has come again harmlessly,
   followed by the newer ones in the same replay. Progress is kept in
   `carry-back/<to>/<from>/forwarded.json` (`back.json` names the logs, and is written once the
   forwarding may start). The steps, one per supervisor pass (supervisor.py `_carry_back`):
   `start_back` holds the kept layout back at the gate; every forwarding still running INTO the
   serving layout is ended first (`finish`: its source's leaders fenced again, the router seen
   serving the layout, a last pass), since it would otherwise forward the carried-back records,
   logged by the kept layout, into the serving one again, after its newer writes, and undo them;
   then the kept layout's leaders are opened (a fenced leader refuses led writes) and
   `begin_back` lets the forwarding run: the gate, the hand-over (the serving layout's leaders
   fenced, the rest forwarded, then the switch) and the forwarding after the switch are steps 2-4,
   with the serving layout as the old one. A carry back ends like a forward carry (its source
   deleted and a last pass found nothing), or when the spec goes back to its source: then it is
   `finish`ed, and a roll forward to that layout (v1 -> v2 -> v1 -> v2 while v2 is kept) is a
   carry back in the other direction, replaying v1's logs, which hold v2's whole history by then.
   One whose switch did not happen and whose destination is no longer the target
   (`abandoned_back`) is dropped (a new one replays from the start) and its destination's leaders
   are fenced again; the serving layout's leaders, if the hand-over fenced them, are opened at the
   end of the pass as for a forward carry.

What a newer layout needs of an old layout's logs is either in its carry folder (a copy, up to
the cut) or forwarded into its own logs (after the cut). Deleting a layout removes its processes
and, with retention, its artifact folder; its `writes/<layout>/`, `carry/<layout>/` and
`carry-back/<layout>/` go only later (`unneeded`): once the layout is neither known nor kept as an
artifact (a rollback to a kept layout replays its own logs and gets the rest carried back) and no
forwarding from it (forward or back) is still running.

On Kubernetes the same steps run in a carrier process per carrying layout
(`python -m shardrec.serving.carry`, serving/carry/carrier.py): the logs are read over HTTP (each
is on its leader's own volume), the carry folder and its progress are on the index store, and the
hand-over, the opening and the end are the operator's requests (docs/operator.md, "The carrier").

Not covered: a write taken by an old leader that restarted after its fence (or whose fence
failed while it was down) while a router still used the old topology, racing a write of the same
item on the new layout, may apply after it (forward or back). A carry back replays the serving
layout's whole history, so it takes as long as forwarding that many records (no cut, no build:
its logs are never compacted); the rollback waits for it at the gate. A read-your-writes token
names sequences of the layout that answered it, and the kept layout numbers the carried-back
records in its own log.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
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
    PRIOR_FILE,
    PROGRESS_FILE,
    Cut,
    carried_state,
    in_range,
    log_file_name,
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


BACK_DIR = "carry-back"
"""`<state>/carry-back/<to>/<from>/`: the progress of a carry back (never a build's carry folder)."""
BACK_FILE = "back.json"
"""A carry back's source and the logs it replays, in order; written (last) once it may forward."""


def wants_carry_back(
    target: str, serving: str | None, target_built: bool, target_carries_from: str | None
) -> bool:
    """Whether the spec's `target` layout must get the serving layout's writes carried back before
    it serves: it is a kept layout (built, its processes run: a rollback, or a roll forward to a
    layout still kept) while another one serves. Not when the target is a new layout whose own
    forward carry from the serving one still runs (`target_carries_from`): that carry already
    brings everything. Pure."""
    return serving is not None and target != serving and target_built and target_carries_from != serving


def abandoned_back(to: str, source: str, target: str, serving: str | None) -> bool:
    """Whether an unfinished carry back from `source` into `to` lost its reason: `to` does not
    serve (the switch did not happen) and is no longer the spec's target, or `source` no longer
    serves. Its progress is dropped (a new carry back replays from the start, which is always
    right) and `to`'s leaders are fenced again: they do not serve. Once `to` serves, the carry
    back is never abandoned: it goes on until it is done. Pure."""
    return to != serving and (to != target or source != serving)


def back_logs(
    source_carry: Cut | None, to: str, source_leader_logs: Sequence[Path], carry_folder: Path
) -> list[Path]:
    """The logs a carry back from a layout into the kept layout `to` replays, oldest first:
    what the source's own build carried (its carry folder: `prior.log`, then the cut of each
    shard it carried from), then the source's leader logs, each from its first record. The carry
    folder is skipped when it was cut from `to` itself: it holds `to`'s own records, which `to`
    has. It is needed when the source was carried from a third layout (a chain v1 -> v2 -> v3
    rolled back to v1): v1 then lacks v2's writes up to v3's cut, which are only in v3's carry
    folder. The order keeps every item's records in order (the forwarding re-partitions old log
    by old log, in this order), so the replay leaves each item at its latest state. Pure."""
    if source_carry is None or source_carry.from_layout == to:
        return list(source_leader_logs)
    carried = [carry_folder / PRIOR_FILE] + [
        carry_folder / log_file_name(s) for s in range(source_carry.from_shards)
    ]
    return carried + list(source_leader_logs)


@dataclass(frozen=True)
class Forwarding:
    """One forwarding into layout `to` from layout `source`. A forward carry (`carry/<to>/`,
    `back` false) sends what its source's leaders logged after the cut; a carry back
    (`carry-back/<to>/<source>/`) replays `logs` from their first record into a kept layout."""

    to: str
    source: str
    folder: Path
    logs: tuple[Path, ...]
    back: bool


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

    def __init__(self, state: StateDir, new_client: Callable[[], httpx.Client], token: str) -> None:
        """`new_client`: makes the HTTP client to the shards (TLS set up), again after each
        `drop_connections`."""
        self._state = state
        self._new_client, self._token = new_client, token
        self._calls = ShardCalls(new_client(), token)
        self._old_logs: dict[Path, FileOldLogs] = {}
        """Per forwarding (its folder), its old logs as far as they were read."""

    def close(self) -> None:
        self._calls.client.close()

    def drop_connections(self) -> None:
        """Close the kept-alive connections to the shards (the next call opens new ones). Before a
        shard is stopped: its graceful stop waits for the TLS close of each connection, which a
        pooled one answers only when it is used or closed, so the shard sat out its whole grace
        and was killed (5 s per replica removed after a rollout)."""
        self._calls.client.close()
        self._calls = ShardCalls(self._new_client(), self._token)

    def folder(self, layout_id: str) -> Path:
        return self._state.root / "carry" / layout_id

    def back_folder(self, to: str, source: str) -> Path:
        return self._state.root / BACK_DIR / to / source

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

    # --- the carry back --------------------------------------------------------------------------

    def start_back(self, to: str, source: str) -> None:
        """Hold the kept layout `to` back from traffic until `source`'s writes are carried back:
        a progress that has not caught up, and no `back.json` yet (nothing is forwarded before
        `begin_back`). Kept as it is while that carry back runs (a restarted supervisor resumes
        it); one that is done belongs to an earlier round and starts afresh."""
        folder = self.back_folder(to, source)
        path = folder / PROGRESS_FILE
        if path.exists() and not Progress.from_dict(read_json(path)).done:
            return
        self.drop_back(to, source)
        folder.mkdir(parents=True)
        atomic_write_json(path, Progress([]).as_dict())
        log.info("layout %s is rolled back to: %s's writes are carried back first", to, source)

    def back_begun(self, to: str, source: str) -> bool:
        return (self.back_folder(to, source) / BACK_FILE).exists()

    def begin_back(self, to: str, source: LayoutSpec) -> None:
        """Let the carry back forward (its preconditions hold: nothing forwards into `source` any
        more and `to`'s leaders are open): the logs it replays (`back_logs`), and a progress at
        the first record of each; `back.json` last, so a folder without it never forwards."""
        folder = self.back_folder(to, source.id)
        carry = None
        if (self.folder(source.id) / CARRY_FILE).exists():
            carry = read_carry(self.folder(source.id))[0]
        leaders = [self.leader_log(source.id, source.shards, s) for s in range(source.shards)]
        logs = back_logs(carry, to, leaders, self.folder(source.id))
        atomic_write_json(folder / PROGRESS_FILE, Progress([0] * len(logs)).as_dict())
        relative = [str(path.relative_to(self._state.root)) for path in logs]
        atomic_write_json(folder / BACK_FILE, {"from_layout": source.id, "logs": relative})
        self._old_logs.pop(folder, None)
        log.info(
            "carrying %s's writes back into %s: replaying %d logs from the start", source.id, to, len(logs)
        )

    def drop_back(self, to: str, source: str) -> None:
        """Forget a carry back (abandoned, or an earlier round's)."""
        folder = self.back_folder(to, source)
        shutil.rmtree(folder, ignore_errors=True)
        self._old_logs.pop(folder, None)

    def backs(self) -> list[tuple[str, str, Progress]]:
        """Every carry back folder with a readable progress: (to, source, progress)."""
        root = self._state.root / BACK_DIR
        found = []
        for path in sorted(root.glob(f"*/*/{PROGRESS_FILE}")) if root.is_dir() else []:
            try:
                found.append((path.parent.parent.name, path.parent.name, Progress.from_dict(read_json(path))))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("carry back progress %s unusable: %s", path, exc)
        return found

    # --- the forwardings -------------------------------------------------------------------------

    def forwardings_into(self, layout_id: str) -> list[Forwarding]:
        """The forwardings into `layout_id` that may forward: its forward carry, and the carry backs
        that began; done ones included."""
        found = []
        try:
            if (self.folder(layout_id) / CARRY_FILE).exists():
                cut = read_carry(self.folder(layout_id))[0]
                paths = tuple(
                    self.leader_log(cut.from_layout, cut.from_shards, s) for s in range(cut.from_shards)
                )
                found.append(
                    Forwarding(layout_id, cut.from_layout, self.folder(layout_id), paths, back=False)
                )
        except WriteLogError as exc:
            log.warning("carry folder of %s unusable: %s", layout_id, exc)
        root = self._state.root / BACK_DIR / layout_id
        for folder in sorted(root.iterdir()) if root.is_dir() else []:
            if not (folder / BACK_FILE).exists():
                continue
            try:
                body = read_json(folder / BACK_FILE)
                paths = tuple(self._state.root / str(path) for path in body["logs"])
                found.append(Forwarding(layout_id, str(body["from_layout"]), folder, paths, back=True))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("carry back %s unusable: %s", folder, exc)
        return found

    def running_into(self, layout_id: str) -> list[Forwarding]:
        """The forwardings into `layout_id` that have not ended."""
        return [f for f in self.forwardings_into(layout_id) if not self._progress(f.folder).done]

    # --- the gate --------------------------------------------------------------------------------

    @staticmethod
    def _progress(folder: Path) -> Progress:
        return Progress.from_dict(read_json(folder / PROGRESS_FILE))

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
        """True while `layout_id` must not take traffic: writes of its old layout still wait, or
        (rolled back to) those of the layout serving now."""
        progress = self.progress(layout_id)
        if progress is not None and not progress.caught_up:
            return True
        return any(to == layout_id and not back.caught_up for to, _, back in self.backs())

    # --- what may go ---------------------------------------------------------------------------

    def collect(self, known: set[str]) -> list[str]:
        """Remove the `writes/`, `carry/` and `carry-back/` folders no layout needs any more
        (`unneeded`); returns the layouts whose folders went."""
        roots = [self._state.root / "writes", self._state.root / "carry", self._state.root / BACK_DIR]
        present = [folder.name for root in roots if root.is_dir() for folder in root.iterdir()]
        artifacts = {layout for layout in present if self._state.layout_dir(layout).exists()}
        sources = {f.source for layout in known for f in self.running_into(layout)}
        gone = unneeded(present, known, artifacts, sources)
        for layout in gone:
            for root in roots:
                shutil.rmtree(root / layout, ignore_errors=True)
            for to, source, _ in self.backs():
                if source == layout:  # ended (it is no source): its destination needs it no more
                    self.drop_back(to, source)
            for folder in [f for f in self._old_logs if layout in (f.name, f.parent.name)]:
                del self._old_logs[folder]  # its forward carry, or a carry back into or out of it
            self.mark_fenced(layout, False)
        if gone:
            log.info("removed the write logs of deleted layouts %s", ", ".join(gone))
        return gone

    # --- the forwarding --------------------------------------------------------------------------

    def forward(self, new: LayoutSpec, urls: dict[tuple[int, int], str], live: set[str]) -> int:
        """One pass of every forwarding into `new` that runs (`urls`: (shard, replica) -> base URL
        of its replicas, every one ready). Returns how many records it forwarded. `live`: the
        layouts that still exist; once a source is gone nothing more reaches its logs, and a pass
        that finds nothing is the last."""
        return sum(self._pass(f, new, urls, live) or 0 for f in self.running_into(new.id))

    def finish(
        self,
        forwarding: Forwarding,
        new: LayoutSpec,
        source_leaders: Sequence[str],
        urls: dict[tuple[int, int], str],
        live: set[str],
    ) -> bool:
        """End a forwarding into the serving layout `new` before a carry back out of it starts
        (the caller knows the router serves `new`). Otherwise the carry back's records, logged by
        the kept layout's opened leaders, would be forwarded into `new` again, after its newer
        writes, and undo them. The source's leaders are fenced again (one that restarted is open),
        so nothing more reaches their logs; then a last pass. True once the forwarding is done."""
        if not all(self.fence(url, True) for url in source_leaders):
            return False
        self.mark_fenced(forwarding.source, True)
        self._pass(forwarding, new, urls, live, force=True, final=True)
        done = self._progress(forwarding.folder).done
        if done:
            log.info(
                "forwarding %s -> %s ended: a carry back out of %s starts", forwarding.source, new.id, new.id
            )
        return done

    def hand_over(
        self,
        new: LayoutSpec,
        old_leaders: dict[int, str],
        urls: dict[tuple[int, int], str],
        live: set[str],
        *,
        back_from: str | None = None,
    ) -> bool:
        """Right before the router switches to `new`: fence the leaders of the layout it carries
        from (`old_leaders`: shard -> URL of replica 0; they refuse new writes, with a 503 the
        client retries, and name their last sequence), then forward everything their logs hold.
        `back_from`: the carry back from that (serving) layout, else the forward carry.
        True: the switch may go ahead, no write acknowledged by the old layout is left behind (one
        whose leader was down could not take writes; if it comes back, the forwarding after the
        switch carries what it takes). False: the fence or the forwarding failed; the fenced
        leaders are opened again and the switch waits for the next pass."""
        forwarding = next(
            (f for f in self.running_into(new.id) if (f.source == back_from if back_from else not f.back)),
            None,
        )
        if forwarding is None:
            return back_from is None  # a carry back that has not begun is not caught up either
        fenced = [url for url in old_leaders.values() if self.fence(url, True)]
        if self._pass(forwarding, new, urls, live, force=True) is not None:
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
        self,
        forwarding: Forwarding,
        new: LayoutSpec,
        urls: dict[tuple[int, int], str],
        live: set[str],
        *,
        force: bool = False,
        final: bool = False,
    ) -> int | None:
        """One forwarding pass: the records forwarded, or None when it failed (nothing recorded).
        `final`: nothing more reaches the source's logs although it lives (`finish`)."""
        progress = self._progress(forwarding.folder)
        if progress.done:
            return 0
        if len(progress.after) != len(forwarding.logs):
            log.warning(
                "progress of %s names %d logs, not %d",
                forwarding.folder,
                len(progress.after),
                len(forwarding.logs),
            )
            return None
        old_alive = forwarding.source in live
        old = self._old_logs.get(forwarding.folder)
        if old is None:
            old = self._old_logs[forwarding.folder] = FileOldLogs(forwarding.logs)
        sizes = old.current_sizes()
        if not force and progress.caught_up and old_alive and old.sizes == sizes:
            return 0  # nothing appended since the last pass
        replicas = [self._replicas(urls, shard) for shard in range(new.shards)]
        leaders = FileLeaderLog([self.leader_log(new.id, new.shards, s) for s in range(new.shards)])
        try:
            result = forward_pass(
                progress, old, NewLayout(self._calls, replicas, leaders), final=final or not old_alive
            )
        except OldLogError as exc:
            log.warning("cannot read %s's logs to forward to %s: %s", forwarding.source, new.id, exc)
            return None
        except ForwardError as exc:
            log.warning("forwarding writes to %s: %s (retried next pass)", new.id, exc)
            return None
        if not progress.caught_up:
            log.info(
                "layout %s caught up with %s's writes (%d forwarded%s)",
                new.id,
                forwarding.source,
                result.progress.forwarded,
                ", carried back" if forwarding.back else "",
            )
        atomic_write_json(forwarding.folder / PROGRESS_FILE, result.progress.as_dict())
        old.commit(sizes)
        return result.sent

    @staticmethod
    def _replicas(urls: dict[tuple[int, int], str], shard: int) -> list[str]:
        """The URLs of `shard`'s replicas, replica 0 first; none when replica 0 is not ready."""
        replicas = sorted(r for s, r in urls if s == shard)
        if not replicas or replicas[0] != 0:
            return []
        return [urls[(shard, r)] for r in replicas]
