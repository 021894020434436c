"""Index builds of the local runtime: `recctl index build` subprocesses, off the serving path, with
the outcome recorded on disk so a restarted supervisor still knows it.

A layout of several shards is built per shard, as the operator's Indexed Job builds it: one
`recctl index build --only-shard N --publish-when-complete` process per shard, one after another
(each may use every CPU and holds one copy of the embeddings, as the one-shot build did: running them
at once would multiply the memory), the last one publishing layout.json. A part that already
verifies is reused, so a build interrupted by a restart resumes at the first missing shard. One
shard keeps one plain build.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from shardrec.api.commands import IndexBuildFlags, ObjectStoreFlags, index_build_arguments
from shardrec.planning.layouts import LayoutSpec
from shardrec.planning.observed import BuildState, ObservedBuild, OfflineQuality
from shardrec.serving.index.layout import LayoutError, read_layout_manifest
from shardrec.serving.index.manifest import LayoutManifest
from shardrec.tools.local.processes import STATE_DIR_ENV
from shardrec.tools.local.state import StateDir, atomic_write_json, atomic_write_text, read_json

LOG_TAIL_LINES = 5


def source_path(source: str) -> Path:
    """The local folder named by `spec.index.source` (file:///abs or /abs)."""
    if source.startswith("file://"):
        return Path(source.removeprefix("file://"))
    if source.startswith("pvc://"):
        raise ValueError(f"index.source {source!r}: pvc:// sources exist only on Kubernetes")
    return Path(source)


def build_source(source: str) -> str:
    """What `recctl index build --embeddings` gets for `spec.index.source`: an s3:// URL as is (the
    build downloads it, with `spec.index.objectStore` as --s3-* flags and the AWS_* credentials of
    the environment the runtime passes on), else the local folder."""
    return source if source.startswith("s3://") else str(source_path(source))


def build_commands(
    layout: LayoutSpec, out: str, object_store: ObjectStoreFlags | None = None, carry_dir: str | None = None
) -> list[list[str]]:
    """The processes that build `layout` into `out`, in order: one per shard (the last to finish
    publishes), or one for a layout of one shard; with `carry_dir`, each folds in the same carried
    writes (serving/index/carry.py)."""
    source = build_source(layout.source)
    parts: list[str | None] = [str(n) for n in range(layout.shards)] if layout.shards > 1 else [None]
    return [
        [
            sys.executable,
            "-m",
            "shardrec.tools.cli.main",
            *index_build_arguments(layout, source, out, object_store, only_shard=part, carry_dir=carry_dir),
            "--no-progress",
        ]
        for part in parts
    ]


@dataclass
class _RunningBuild:
    attempt: str
    popen: subprocess.Popen[bytes]
    log: IO[bytes]
    commands: list[list[str]]  # every part, in order
    part: int = 0  # the index in `commands` of the one running


class LocalBuilds:
    """Starts builds, notices when they end, and reports each layout's build state."""

    def __init__(self, state: StateDir) -> None:
        self._state = state
        self._running: dict[str, _RunningBuild] = {}
        self._deletions: dict[str, BuildState] = {}

    def _record_file(self, layout: str) -> Path:
        return self._state.layouts_dir / f"{layout}.build.json"

    def _spec_file(self, layout: str) -> Path:
        return self._state.layouts_dir / f"{layout}.layout-spec.json"

    def _log_file(self, layout: str) -> Path:
        return self._state.logs_dir / f"build-{layout}.log"

    def known_layouts(self) -> list[LayoutSpec]:
        """Every layout this state folder has a record of."""
        specs = []
        for path in sorted(self._state.layouts_dir.glob("*.layout-spec.json")):
            specs.append(LayoutSpec.from_json(path.read_text(encoding="utf-8")))
        return specs

    def forget(self, layout: str) -> None:
        """Drop a deleted layout's records; its artifact folder stays for a cheap rollback."""
        self._spec_file(layout).unlink(missing_ok=True)

    def delete_artifacts(self, layout_id: str) -> None:
        """Retention's garbage collection: remove a layout's artifact folder, `layout.json` first
        so a half-removed folder never looks built. Synchronous; repeating it is harmless."""
        folder = self._state.layout_dir(layout_id)
        try:
            (folder / "layout.json").unlink(missing_ok=True)
            if folder.exists():
                shutil.rmtree(folder)
        except OSError:
            self._deletions[layout_id] = "Failed"
            return
        self._deletions[layout_id] = "Succeeded"

    def deletions(self) -> dict[str, BuildState]:
        """Artifact deletions done by this process (a restarted one repeats any still recorded)."""
        return dict(self._deletions)

    def ensure(
        self,
        layout: LayoutSpec,
        attempt: str,
        object_store: ObjectStoreFlags | None = None,
        carry: Callable[[], Path | None] | None = None,
    ) -> None:
        """Start the build unless the artifact exists, it runs, or this attempt already ended.
        A retained layout's artifact is reused: a rollback to it starts no build. `carry`, called
        only when a build starts: the carry folder to fold in (None: the source alone)."""
        layout_id = layout.id
        self._deletions.pop(layout_id, None)
        atomic_write_text(self._spec_file(layout_id), layout.canonical_json())
        if self._artifact_ok(layout_id) or layout_id in self._running:
            return
        record = self._read_record(layout_id)
        if record.get("attempt") == attempt and record.get("state") in {"Failed", "Succeeded"}:
            return
        carry_dir = carry() if carry is not None else None
        self._start(layout, attempt, object_store, carry_dir)

    def _start(
        self,
        layout: LayoutSpec,
        attempt: str,
        object_store: ObjectStoreFlags | None,
        carry_dir: Path | None = None,
    ) -> None:
        layout_id = layout.id
        commands = build_commands(
            layout,
            str(self._state.layout_dir(layout_id)),
            object_store,
            str(carry_dir) if carry_dir is not None else None,
        )
        log = self._log_file(layout_id).open("ab")
        build = _RunningBuild(attempt, self._launch(commands, 0, log), log, commands)
        self._running[layout_id] = build
        atomic_write_json(self._record_file(layout_id), {"attempt": attempt, "state": "Running"})

    def _launch(self, commands: list[list[str]], part: int, log: IO[bytes]) -> subprocess.Popen[bytes]:
        if len(commands) > 1:
            log.write(f"== index build of {_part_name(commands, part)}\n".encode())
            log.flush()
        # Marked with the state folder, so a supervisor that replaces a killed one stops a build
        # the killed one left running before it starts its own (`processes_of_state_dir`).
        env = {**os.environ, STATE_DIR_ENV: str(self._state.root)}
        return subprocess.Popen(
            commands[part], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )

    def reap(self) -> None:
        """Start the next part of builds whose part ended well; record the outcome of builds that ended."""
        for layout_id, build in list(self._running.items()):
            code = build.popen.poll()
            if code is None:
                continue
            if code == 0 and build.part + 1 < len(build.commands):
                build.part += 1
                build.popen = self._launch(build.commands, build.part, build.log)
                continue
            build.log.close()
            del self._running[layout_id]
            if code == 0 and self._artifact_ok(layout_id):
                record = {"attempt": build.attempt, "state": "Succeeded"}
            else:
                what = f" of {_part_name(build.commands, build.part)}" if len(build.commands) > 1 else ""
                record = {
                    "attempt": build.attempt,
                    "state": "Failed",
                    "message": f"index build{what} exited {code}: {self._log_tail(layout_id)}",
                }
            atomic_write_json(self._record_file(layout_id), record)

    def observe(self, layout_id: str) -> ObservedBuild:
        manifest = self._artifact(layout_id)
        if manifest is not None:
            return ObservedBuild(
                state="Succeeded",
                attempt=self._read_record(layout_id).get("attempt"),
                quality=OfflineQuality.from_record(manifest.quality),
            )
        if layout_id in self._running:
            return ObservedBuild(state="Running", attempt=self._running[layout_id].attempt)
        record = self._read_record(layout_id)
        if record.get("state") == "Failed":
            return ObservedBuild(
                state="Failed", message=record.get("message", ""), attempt=record.get("attempt")
            )
        return ObservedBuild(state="Absent")

    def stop_all(self) -> None:
        for build in self._running.values():
            build.popen.terminate()
            try:
                build.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                build.popen.kill()
            build.log.close()
        self._running.clear()

    def _artifact_ok(self, layout_id: str) -> bool:
        return self._artifact(layout_id) is not None

    def _artifact(self, layout_id: str) -> LayoutManifest | None:
        """The verified manifest of the layout's artifact, or None when there is none."""
        folder = self._state.layout_dir(layout_id)
        if not (folder / "layout.json").exists():
            return None
        try:
            return read_layout_manifest(folder)
        except LayoutError:
            return None

    def _read_record(self, layout_id: str) -> dict[str, str]:
        path = self._record_file(layout_id)
        if not path.exists():
            return {}
        data = read_json(path)
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def _log_tail(self, layout_id: str) -> str:
        try:
            lines = self._log_file(layout_id).read_text(encoding="utf-8", errors="replace").splitlines()
        except FileNotFoundError:
            return "(no log)"
        meaningful = [line for line in lines if line.strip() and "it/s" not in line]
        return " | ".join(meaningful[-LOG_TAIL_LINES:]) or "(empty log)"


def _part_name(commands: list[list[str]], part: int) -> str:
    """`shard N (part i of n)`, N read from the part's own --only-shard argument."""
    argv = commands[part]
    shard = argv[argv.index(IndexBuildFlags.ONLY_SHARD) + 1]
    return f"shard {shard} (part {part + 1} of {len(commands)})"
