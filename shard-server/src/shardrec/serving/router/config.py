"""Router configuration: the `RouterSpec` and `AuthSpec` of the spec model (no copies), plus the
process-level settings that are not part of the cluster spec.

The router config file (`--router-config`) is JSON `{"router": {...}, "auth": {...}}` in the wire
(camelCase) form of `RecommenderClusterSpec.router` and `.auth`; both parts are optional.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shardrec.api.commands import MAX_K
from shardrec.api.errors import describe_errors
from shardrec.api.v1alpha1 import AuthSpec, RouterSpec
from shardrec.serving.credentials import TokenFile
from shardrec.serving.router.auth import OPEN, ApiKeys


class RouterConfigError(ValueError):
    """The router config file is unreadable or invalid; the message names the file and field."""


class WritesConfig(BaseModel):
    """Item writes (`PUT`/`DELETE /v1/items/{id}`): when a write is acknowledged."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    ack: Literal["all", "majority"] = Field(
        "all",
        description="all: every ready replica of the shard holds the write; majority: more than half "
        "of them (the leader included).",
    )
    timeout_ms: int = Field(5000, ge=100, le=60000, alias="timeoutMs")
    enabled: bool = Field(
        True,
        description="false: PUT/DELETE /v1/items are refused with 403 writes_disabled before any shard "
        "is asked (the local runtime writes spec.writes.enabled here; the operator leaves the key out "
        "while writes are off, and those layouts' shards keep no log, which the router reports alike).",
    )


class RouterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    router: RouterSpec = Field(default_factory=RouterSpec)
    auth: AuthSpec = Field(default_factory=AuthSpec)
    writes: WritesConfig = Field(default_factory=WritesConfig)


def load_router_config(path: Path) -> RouterConfig:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RouterConfigError(f"{path}: cannot read router config: {exc}") from exc
    try:
        return RouterConfig.model_validate_json(text)
    except ValidationError as exc:
        problems = describe_errors(exc.errors())
        raise RouterConfigError(f"{path}: invalid router config: {problems}") from exc


@dataclass(frozen=True)
class Limits:
    """Bounds on what one client request may ask for."""

    max_body_bytes: int = 4 * 1024 * 1024
    max_k: int = MAX_K
    max_dimension: int = 4096
    max_exclude: int = 10_000
    max_id_length: int = 512
    # recent_items of one /v1/recommend query (user fold-in): the router fetches their vectors
    # from the owning shards on every such request, so this stays small.
    max_recent_items: int = 100
    # Sum of k over a batch's queries (what the shards search and the router merges for it):
    # 256 queries at k=128, or 32 at the largest k. Past it: 413 batch_too_large.
    max_batch_results: int = 32_768


@dataclass(frozen=True)
class Tuning:
    """Data-path knobs that are not part of the cluster spec."""

    # A shard batch leaves as soon as the event loop is idle; while this many batches per replica
    # of the same shard are already on the wire, new queries wait to join the next one (natural
    # batching). 1 measured best on 2 cores (bigger batches: less CPU per query in router and
    # shards, lower p50 and p99 at saturation); raise it for shards with many cores.
    max_batches_in_flight_per_replica: int = 1
    max_queries_per_batch: int = 256
    probe_interval_s: float = 0.5
    probe_timeout_s: float = 0.5
    retire_grace_s: float = 5.0


@dataclass(frozen=True)
class RouterSettings:
    config: RouterConfig = field(default_factory=RouterConfig)
    api_keys: ApiKeys = OPEN
    limits: Limits = field(default_factory=Limits)
    tuning: Tuning = field(default_factory=Tuning)
    shard_token: str | TokenFile | None = None  # the shards' admin token (for /v1/items/vectors)
    shard_tls: ssl.SSLContext | None = None  # verifies shards' certificates (https:// shard URLs)
    shard_tls_name: str | None = None  # the name shard certificates hold (None: the URL's host)
    zone: str | None = None  # the router's zone (--zone): replicas in it are preferred
