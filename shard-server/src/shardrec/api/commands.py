"""The command lines of shardrec's processes: one builder each, and the flag names both sides use.

The operator (Pods, Jobs), the local runtime and the benchmarks start shard servers, routers and
index builds; `shardrec-shard`, `shardrec-router` and `recctl index build` parse these flags with
the names defined here, so a renamed flag cannot leave a caller behind. The builders are pure:
settings in, arguments out (callers put the program in front: `shardrec-shard` in a pod,
`python -m shardrec.serving.shard.main` on 127.0.0.1).

This lives in `shardrec.api` because a command line is, like the CRD and the topology document,
an interface between the operator and the data-plane image, and the operator may import only
`shardrec.api` and `shardrec.planning` (import-linter); the planner should not hold flags.

Environment: every flag of a server process can also be set as `SHARDREC_<PROCESS>_<FLAG>`
(`env_name`), e.g. `SHARDREC_SHARD_EF_SEARCH`, `SHARDREC_ROUTER_PORT`; a flag on the command line
wins. The operator's own settings follow the same rule (`SHARDREC_OPERATOR_TIMER_SECONDS`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

DEFAULT_EF_SEARCH: Final = 64
"""HNSW efSearch when nothing sets it: `spec.index.hnsw.efSearch`'s default and the shard's."""
MAX_K: Final = 1000
"""Largest k a client may ask the router for (`router.maxK`'s bound)."""

SHARD_PRESTOP_PATH: Final = "/prestop"
"""The shard server's pre-stop drain endpoint (`GET`; the pod's preStop httpGet hook calls it):
fail readiness, wait `--drain-seconds`, then return so the kubelet sends SIGTERM."""

SHARD_PROGRAM: Final = "shardrec-shard"
SHARD_MODULE: Final = "shardrec.serving.shard.main"
ROUTER_PROGRAM: Final = "shardrec-router"
ROUTER_MODULE: Final = "shardrec.serving.router.main"


def env_name(process: str, flag: str) -> str:
    """`SHARDREC_<PROCESS>_<FLAG>`: the environment variable that sets `flag` of `process`."""
    return f"SHARDREC_{process}_{flag.removeprefix('--')}".upper().replace("-", "_")


class ShardFlags:
    """`shardrec-shard`'s flags."""

    PROCESS: Final = "shard"
    LAYOUT_DIR: Final = "--layout-dir"
    SHARD: Final = "--shard"
    HOST: Final = "--host"
    PORT: Final = "--port"
    EF_SEARCH: Final = "--ef-search"
    SEARCH_THREADS: Final = "--search-threads"
    DRAIN_SECONDS: Final = "--drain-seconds"
    MAX_WAIT_MS: Final = "--max-wait-ms"
    MAX_BATCH_QUERIES: Final = "--max-batch-queries"
    ADMIN_TOKEN: Final = "--admin-token"
    WRITE_LOG_DIR: Final = "--write-log-dir"
    ADMIN_TOKEN_FILE: Final = "--admin-token-file"
    LAYOUT_ROOT: Final = "--layout-root"
    TLS_CERT: Final = "--tls-cert"
    TLS_KEY: Final = "--tls-key"
    LOG_LEVEL: Final = "--log-level"


class RouterFlags:
    """`shardrec-router`'s flags."""

    PROCESS: Final = "router"
    TOPOLOGY_FILE: Final = "--topology-file"
    TOPOLOGY_CONFIGMAP: Final = "--topology-configmap"
    ROUTER_CONFIG: Final = "--router-config"
    HOST: Final = "--host"
    PORT: Final = "--port"
    API_KEYS_FILE: Final = "--api-keys-file"
    BATCHES_IN_FLIGHT_PER_REPLICA: Final = "--batches-in-flight-per-replica"
    LOOP: Final = "--loop"
    LOG_LEVEL: Final = "--log-level"
    POD_NAME: Final = "--pod-name"
    POD_NAMESPACE: Final = "--pod-namespace"
    SHARD_TOKEN: Final = "--shard-token"
    SHARD_TOKEN_FILE: Final = "--shard-token-file"
    SHARD_CA: Final = "--shard-ca"
    SHARD_TLS_NAME: Final = "--shard-tls-name"
    WORKERS: Final = "--workers"
    WORKER_SOCKETS: Final = "--worker-sockets"
    ZONE: Final = "--zone"


def shard_arguments(
    *,
    layout_dir: str | None,
    shard: int | None,
    host: str,
    port: int,
    ef_search: int | None = None,
    search_threads: int | None = None,
    drain_seconds: int | None = None,
    write_log_dir: str | None = None,
    admin_token_file: str | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
) -> list[str]:
    """`shardrec-shard`'s arguments: serve `shard` of the layout in `layout_dir` on host:port."""
    arguments: list[str] = []
    if layout_dir is not None:
        arguments += [ShardFlags.LAYOUT_DIR, layout_dir]
    if shard is not None:
        arguments += [ShardFlags.SHARD, str(shard)]
    arguments += [ShardFlags.HOST, host, ShardFlags.PORT, str(port)]
    if ef_search is not None:
        arguments += [ShardFlags.EF_SEARCH, str(ef_search)]
    if search_threads is not None:
        arguments += [ShardFlags.SEARCH_THREADS, str(search_threads)]
    if drain_seconds is not None:
        arguments += [ShardFlags.DRAIN_SECONDS, str(drain_seconds)]
    if write_log_dir is not None:
        arguments += [ShardFlags.WRITE_LOG_DIR, write_log_dir]
    if admin_token_file is not None:
        arguments += [ShardFlags.ADMIN_TOKEN_FILE, admin_token_file]
    if tls_cert is not None and tls_key is not None:
        arguments += [ShardFlags.TLS_CERT, tls_cert, ShardFlags.TLS_KEY, tls_key]
    return arguments


def router_arguments(
    *,
    host: str,
    port: int,
    topology_file: str | None = None,
    topology_configmap: str | None = None,
    router_config: str | None = None,
    api_keys_file: str | None = None,
    shard_token_file: str | None = None,
    shard_ca: str | None = None,
    shard_tls_name: str | None = None,
    workers: int | None = None,
) -> list[str]:
    """`shardrec-router`'s arguments (exactly one of the topology sources). `workers`: processes
    serving the port (None: the router counts the CPUs its affinity and CPU quota allow)."""
    if (topology_file is None) == (topology_configmap is None):
        raise ValueError("give exactly one of topology_file and topology_configmap")
    arguments: list[str] = []
    if topology_file is not None:
        arguments += [RouterFlags.TOPOLOGY_FILE, topology_file]
    if topology_configmap is not None:
        arguments += [RouterFlags.TOPOLOGY_CONFIGMAP, topology_configmap]
    if router_config is not None:
        arguments += [RouterFlags.ROUTER_CONFIG, router_config]
    arguments += [RouterFlags.HOST, host, RouterFlags.PORT, str(port)]
    if api_keys_file is not None:
        arguments += [RouterFlags.API_KEYS_FILE, api_keys_file]
    if shard_token_file is not None:
        arguments += [RouterFlags.SHARD_TOKEN_FILE, shard_token_file]
    if shard_ca is not None:
        arguments += [RouterFlags.SHARD_CA, shard_ca]
    if shard_tls_name is not None:
        arguments += [RouterFlags.SHARD_TLS_NAME, shard_tls_name]
    if workers is not None:
        arguments += [RouterFlags.WORKERS, str(workers)]
    return arguments


class BuildableLayout(Protocol):
    """What an index build needs of a layout (`shardrec.planning.LayoutSpec` is one)."""

    @property
    def version(self) -> str: ...
    @property
    def shards(self) -> int: ...
    @property
    def metric(self) -> str: ...
    @property
    def hnsw_m(self) -> int: ...
    @property
    def hnsw_ef_construction(self) -> int: ...
    @property
    def dimension(self) -> int: ...
    @property
    def id(self) -> str: ...


class IndexBuildFlags:
    """`recctl index build`'s flags that callers other than the layout set."""

    WORKERS: Final = "--workers"
    ONLY_SHARD: Final = "--only-shard"
    PUBLISH_WHEN_COMPLETE: Final = "--publish-when-complete"
    REPORT_FILE: Final = "--report-file"
    CARRY_DIR: Final = "--carry-dir"


BUILD_REPORT_PATH: Final = "/dev/termination-log"
"""Where a build pod writes its report: the kubelet copies this file into the container's
terminated state (`terminationMessagePath`'s default), which the operator reads from the pod."""
BUILD_REPORT_LIMIT: Final = 4096
"""The kubelet keeps at most 4096 bytes of a termination message; a report is far smaller."""
_REPORTED_QUALITY_KEYS: Final = ("split", "ndcg_at_10", "hit_rate_at_10")


def build_report(layout_id: str, version: str, quality: Mapping[str, Any] | None) -> str:
    """What `recctl index build --report-file` writes once a verified layout exists: its id,
    version and the model's offline metrics (only the keys the quality gate reads, so it stays
    well inside the termination message's limit)."""
    kept = {key: quality[key] for key in _REPORTED_QUALITY_KEYS if quality and key in quality}
    return json.dumps({"layout": layout_id, "version": version, "quality": kept or None}, sort_keys=True)


def reported_quality(text: str, layout_id: str) -> Mapping[str, Any] | None:
    """The `quality` block of a build report for `layout_id`; None when the text is not a report,
    names another layout or records no metrics (a build pod's message is the pod's to write, so
    anything unreadable counts as no metrics, never as an error)."""
    try:
        report = json.loads(text[:BUILD_REPORT_LIMIT])
    except ValueError:
        return None
    if not isinstance(report, dict) or report.get("layout") != layout_id:
        return None
    quality = report.get("quality")
    return quality if isinstance(quality, dict) else None


def index_build_arguments(
    layout: BuildableLayout,
    embeddings_dir: str,
    out_dir: str,
    object_store: ObjectStoreFlags | None = None,
    *,
    workers: int | None = None,
    only_shard: str | None = None,
    report_file: str | None = None,
    carry_dir: str | None = None,
) -> list[str]:
    """The `recctl` arguments that build `layout` (from `index build` on). Everything comes from
    the layout, not the current spec, so a kept layout is rebuilt exactly as first planned; the
    build refuses embeddings of another dimension and records the layout id. `embeddings_dir` and
    `out_dir` may be s3:// URLs (then `object_store` says how to reach the API). `workers` (build
    threads) defaults, in the builder, to the CPUs it may use (affinity and CPU quota). `only_shard`
    (a number, or `$(JOB_COMPLETION_INDEX)` in an Indexed Job) builds that shard's part alone, and
    the last part to finish publishes layout.json. `report_file` receives the build report
    (`build_report`) once the layout exists (a part that does not publish writes none).
    `carry_dir`: the carry folder of an earlier layout's write logs to fold in (serving/index/carry.py)."""
    threads = [IndexBuildFlags.WORKERS, str(workers)] if workers is not None else []
    if report_file is not None:
        threads += [IndexBuildFlags.REPORT_FILE, report_file]
    if only_shard is not None:
        threads += [IndexBuildFlags.ONLY_SHARD, only_shard, IndexBuildFlags.PUBLISH_WHEN_COMPLETE]
    if carry_dir is not None:
        threads += [IndexBuildFlags.CARRY_DIR, carry_dir]
    extra = object_store.arguments() if object_store else []
    return [
        "index", "build",
        "--embeddings", embeddings_dir,
        "--out", out_dir,
        "--version", layout.version,
        "--shards", str(layout.shards),
        "--metric", layout.metric,
        "--m", str(layout.hnsw_m),
        "--ef-construction", str(layout.hnsw_ef_construction),
        "--dimension", str(layout.dimension),
        "--layout", layout.id,
        *threads,
        *extra,
    ]  # fmt: skip


class ObjectStoreCliFlags:
    """Flag names of `recctl index build|fetch|delete|list` that say how to reach an S3 API."""

    ENDPOINT: Final = "--s3-endpoint"
    REGION: Final = "--s3-region"
    PATH_STYLE: Final = "--s3-path-style"


DEFAULT_S3_REGION: Final = "us-east-1"
S3_CREDENTIAL_VARIABLES: Final = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
"""The ONLY place credentials come from: environment variables (a Secret on Kubernetes), never flags."""


@dataclass(frozen=True)
class ObjectStoreFlags:
    """How `recctl index ...` reaches an S3 API (endpoint, region, path-style addressing).

    Nothing secret: credentials come from `S3_CREDENTIAL_VARIABLES` in the environment only."""

    endpoint: str | None = None
    region: str = DEFAULT_S3_REGION
    path_style: bool = False

    def arguments(self) -> list[str]:
        """The flags that reproduce these settings (empty for the defaults)."""
        arguments: list[str] = []
        if self.endpoint is not None:
            arguments += [ObjectStoreCliFlags.ENDPOINT, self.endpoint]
        if self.region != DEFAULT_S3_REGION:
            arguments += [ObjectStoreCliFlags.REGION, self.region]
        if self.path_style:
            arguments.append(ObjectStoreCliFlags.PATH_STYLE)
        return arguments


def index_fetch_arguments(
    *,
    store: str,
    layout: str,
    dest: str,
    shard: int | None,
    object_store: ObjectStoreFlags | None = None,
) -> list[str]:
    """`recctl index fetch`: copy shard `shard`'s files (None: the router's part) of `layout` from
    `store` (a folder or s3://bucket/prefix) into `dest`, verified."""
    part = ["--router"] if shard is None else ["--shard", str(shard)]
    extra = object_store.arguments() if object_store else []
    return ["index", "fetch", "--store", store, "--layout", layout, "--dest", dest, *part, *extra]


def index_delete_arguments(
    *,
    store: str,
    layout: str,
    object_store: ObjectStoreFlags | None = None,
    carry_store: str | None = None,
) -> list[str]:
    """`recctl index delete`: layout.json first, then the layout's other objects; with
    `carry_store` (the cluster's folder holding `carry/` and `carry-back/`), then the layout's
    carry folder and every carry-back folder naming it."""
    extra = object_store.arguments() if object_store else []
    carry = ["--carry-store", carry_store] if carry_store is not None else []
    return ["index", "delete", "--store", store, "--layout", layout, *carry, *extra]
