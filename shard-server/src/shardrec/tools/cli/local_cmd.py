"""`recctl up | apply | status | down`: run a RecommenderCluster as local processes.

State lives in a folder (default `.shardrec/<cluster name>` under the current directory, or
`--state-dir`), so `status` and `down` work from any shell.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import yaml
from pydantic import ValidationError

from shardrec.api.errors import describe_errors
from shardrec.api.topology import Topology
from shardrec.api.v1alpha1 import RecommenderCluster, transition_errors
from shardrec.tools.cli.main import CliError
from shardrec.tools.local.ports import port_is_free
from shardrec.tools.local.processes import is_alive
from shardrec.tools.local.readiness import Verdict, WaitFacts, judge
from shardrec.tools.local.state import (
    StateDir,
    SupervisorLock,
    atomic_write_text,
    is_supervisor_running,
    read_json,
    supervisor_pid,
)
from shardrec.tools.local.status_table import render_status
from shardrec.tools.local.supervisor import kill_recorded_children, recorded_processes

DEFAULT_STATE_ROOT = Path(".shardrec")
DEFAULT_ROUTER_PORT = 8080


def register(subparsers: Any) -> None:
    up = subparsers.add_parser("up", help="start a local cluster from a RecommenderCluster YAML")
    _add_file(up)
    _add_state(up)
    up.add_argument("--port", type=int, default=DEFAULT_ROUTER_PORT, help="router port on 127.0.0.1")
    up.add_argument("--detach", action="store_true", help="run in the background; logs under the state dir")
    up.add_argument(
        "--wait",
        type=float,
        default=0,
        metavar="SECONDS",
        help="with --detach: wait up to this long for phase Ready (0: do not wait)",
    )
    # Set by a detaching `up` for its background supervisor, so the wait knows this run's files.
    up.add_argument("--run-id", default=None, help=argparse.SUPPRESS)
    up.set_defaults(func=run_up)

    apply = subparsers.add_parser("apply", help="change the spec of a running local cluster")
    _add_file(apply)
    _add_state(apply)
    apply.add_argument("--wait", type=float, default=0, metavar="SECONDS", help="wait for Ready")
    apply.set_defaults(func=run_apply)

    status = subparsers.add_parser("status", help="show a local cluster's status")
    _add_state(status, name_flag=True)
    status.add_argument("-o", "--output", choices=["table", "json"], default="table")
    status.set_defaults(func=run_status)

    down = subparsers.add_parser("down", help="stop a local cluster")
    _add_state(down, name_flag=True)
    down.set_defaults(func=run_down)


def _add_file(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-f", "--filename", type=Path, required=True, help="RecommenderCluster YAML")


def _add_state(parser: argparse.ArgumentParser, *, name_flag: bool = False) -> None:
    parser.add_argument("--state-dir", type=Path, help="state folder (default .shardrec/<name>)")
    if name_flag:
        parser.add_argument("-f", "--filename", type=Path, help="YAML whose metadata.name picks the cluster")
        parser.add_argument("--name", help="cluster name (default: the only one under .shardrec/)")


def for_local_runtime(cluster: RecommenderCluster, folder: Path) -> RecommenderCluster:
    """The spec as the local runtime runs it: `auth.apiKeysFile` made absolute (from the YAML's
    folder), and refused with one line where it needs what only Kubernetes has."""
    auth = cluster.spec.auth
    if auth.api_keys_file is None:
        if auth.api_keys_secret_ref is not None:
            raise CliError(
                "spec.auth.apiKeysSecretRef names a Kubernetes Secret, which the local runtime cannot "
                "read: give the keys file as spec.auth.apiKeysFile (one key per line, `name:key` or a "
                "bare key)"
            )
        return cluster
    keys = Path(auth.api_keys_file).expanduser()
    if not keys.is_absolute():
        keys = (folder / keys).resolve()
    if not keys.is_file():
        raise CliError(f"spec.auth.apiKeysFile: no such file: {keys}")
    spec = cluster.spec.model_copy(update={"auth": auth.model_copy(update={"api_keys_file": str(keys)})})
    return cluster.model_copy(update={"spec": spec})


def read_cluster(path: Path) -> RecommenderCluster:
    """Load and validate a YAML file; errors name the file and the field."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CliError(f"-f {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise CliError(f"-f {path}: not valid YAML: {exc}") from exc
    try:
        return RecommenderCluster.model_validate(data)
    except ValidationError as exc:
        problems = describe_errors(exc.errors())
        raise CliError(f"-f {path}: invalid RecommenderCluster: {problems}") from exc


def _state_for(args: argparse.Namespace, cluster: RecommenderCluster | None = None) -> StateDir:
    if args.state_dir:
        return StateDir(args.state_dir.resolve())
    name = cluster.metadata.name if cluster else getattr(args, "name", None)
    if name is None and getattr(args, "filename", None):
        name = read_cluster(args.filename).metadata.name
    if name is None:
        found = sorted(p.name for p in DEFAULT_STATE_ROOT.glob("*") if (p / "cluster.yaml").exists())
        if len(found) != 1:
            raise CliError(
                "name the cluster with --name, -f or --state-dir"
                + (f" (found: {', '.join(found)})" if found else " (no local cluster found under .shardrec/)")
            )
        name = found[0]
    return StateDir((DEFAULT_STATE_ROOT / name).resolve())


def _write_spec(state: StateDir, cluster: RecommenderCluster, generation: int) -> None:
    data = cluster.model_dump(by_alias=True, mode="json", exclude={"status"}, exclude_none=True)
    data["metadata"] = {"name": cluster.metadata.name, "namespace": cluster.metadata.namespace}
    data["metadata"]["generation"] = generation
    atomic_write_text(state.spec_file, yaml.safe_dump(data, sort_keys=False))


def _router_left_running(state: StateDir, port: int) -> bool:
    """A router a dead supervisor of this state folder left on `port` (the new one adopts it)."""
    return any(
        row.name == "router" and row.port == port and is_alive(row.identity)
        for row in recorded_processes(state)
    )


def run_up(args: argparse.Namespace) -> int:
    cluster = for_local_runtime(read_cluster(args.filename), args.filename.resolve().parent)
    state = _state_for(args, cluster)
    if is_supervisor_running(state):
        raise CliError(
            f"cluster {cluster.metadata.name!r} is already running (state {state.root}); "
            "use `recctl apply` to change it or `recctl down` to stop it"
        )
    if not port_is_free(args.port) and not _router_left_running(state, args.port):
        raise CliError(f"--port {args.port}: already in use on 127.0.0.1")
    state.ensure()
    generation = 1
    if state.spec_file.exists():
        old = read_cluster(state.spec_file)
        generation = old.metadata.generation + (old.spec != cluster.spec)
    _write_spec(state, cluster, generation)
    run_id = args.run_id or uuid.uuid4().hex
    if args.detach:
        return _spawn_detached(args, state, run_id)
    return _run_foreground(state, args.port, run_id)


def _run_foreground(state: StateDir, port: int, run_id: str) -> int:
    from shardrec.tools.local.supervisor import LocalSupervisor

    lock = SupervisorLock(state)
    if not lock.try_acquire():
        raise CliError(f"a supervisor already runs for {state.root}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a probe line per child per tick otherwise
    try:
        LocalSupervisor(state=state, router_port=port, run_id=run_id).run()
    finally:
        lock.release()
    return 0


def _spawn_detached(args: argparse.Namespace, state: StateDir, run_id: str) -> int:
    argv = [
        sys.executable, "-m", "shardrec.tools.cli.main", "up",
        "-f", str(state.spec_file), "--state-dir", str(state.root), "--port", str(args.port),
        "--run-id", run_id,
    ]  # fmt: skip
    log_path = state.logs_dir / "supervisor.log"
    with log_path.open("ab") as log:
        subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    deadline = time.monotonic() + 10
    while not is_supervisor_running(state):
        if time.monotonic() > deadline:
            raise CliError(f"the supervisor did not start; see {log_path}")
        time.sleep(0.1)
    print(f"started in the background; state {state.root}, logs {state.logs_dir}")
    if args.wait > 0:
        return _wait_ready(state, args.wait, run_id)
    return 0


def _read_optional_json(path: Path) -> Any:
    """A JSON file the supervisor rewrites atomically, or None if it is not there (yet)."""
    try:
        return read_json(path)
    except FileNotFoundError:
        return None


def _router_readyz(client: httpx.Client, runtime: Any) -> Any:
    url = (runtime or {}).get("router_url")
    if not url:
        return None
    try:
        response = client.get(f"{url}/readyz")
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code == 200 else None


def _look(state: StateDir, client: httpx.Client, run_id: str, generation: int) -> WaitFacts:
    runtime = _read_optional_json(state.runtime_file)
    topology = _read_optional_json(state.topology_file)
    return WaitFacts(
        run_id=run_id,
        generation=generation,
        runtime=runtime,
        status=_read_optional_json(state.status_file),
        topology=Topology.model_validate(topology) if topology is not None else None,
        router_readyz=_router_readyz(client, runtime),
    )


def _wait_ready(state: StateDir, timeout_s: float, run_id: str) -> int:
    """Wait for this run's cluster to serve: see `shardrec.tools.local.readiness` for what that means."""
    deadline = time.monotonic() + timeout_s
    generation = read_cluster(state.spec_file).metadata.generation
    reason = "nothing observed yet"
    with httpx.Client(timeout=1.0) as client:
        while time.monotonic() < deadline:
            if not is_supervisor_running(state):
                raise CliError(f"the supervisor exited; see {state.logs_dir / 'supervisor.log'}")
            result = judge(_look(state, client, run_id, generation))
            reason = result.reason
            if result.verdict is Verdict.READY:
                print(render_status(state))
                return 0
            if result.verdict is Verdict.FAILED:
                print(render_status(state))
                raise CliError("the cluster failed; see the conditions above and the logs")
            time.sleep(0.25)
    print(render_status(state))
    raise CliError(f"not Ready within {timeout_s:g}s: {reason} (it keeps trying in the background)")


def run_apply(args: argparse.Namespace) -> int:
    cluster = for_local_runtime(read_cluster(args.filename), args.filename.resolve().parent)
    state = _state_for(args, cluster)
    if not state.spec_file.exists():
        raise CliError(
            f"no local cluster {cluster.metadata.name!r} at {state.root}; start it with `recctl up`"
        )
    old = read_cluster(state.spec_file)
    errors = transition_errors(old.spec, cluster.spec)
    if errors:
        raise CliError(f"-f {args.filename}: " + "; ".join(errors))
    if old.spec == cluster.spec:
        print(f"recommendercluster/{cluster.metadata.name} unchanged")
        return 0
    _write_spec(state, cluster, old.metadata.generation + 1)
    print(f"recommendercluster/{cluster.metadata.name} configured (generation {old.metadata.generation + 1})")
    if not is_supervisor_running(state):
        print("note: the cluster is not running; `recctl up` will act on this spec")
        return 0
    if args.wait > 0:
        runtime = _read_optional_json(state.runtime_file) or {}
        return _wait_ready(state, args.wait, str(runtime.get("run_id", "")))
    return 0


def run_status(args: argparse.Namespace) -> int:
    state = _state_for(args)
    if not state.spec_file.exists():
        raise CliError(f"no local cluster at {state.root}")
    if args.output == "json":
        print(state.status_file.read_text(encoding="utf-8") if state.status_file.exists() else "{}")
    else:
        print(render_status(state))
    return 0


def run_down(args: argparse.Namespace) -> int:
    state = _state_for(args)
    pid = supervisor_pid(state)
    if not is_supervisor_running(state) or pid is None:
        kill_recorded_children(state)
        print(f"not running ({state.root})")
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while is_supervisor_running(state):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            kill_recorded_children(state)
            break
        time.sleep(0.1)
    print(f"stopped ({state.root})")
    return 0
