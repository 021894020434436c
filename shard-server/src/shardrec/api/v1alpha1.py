"""The `RecommenderCluster` API, version v1alpha1: the single source of truth for its schema.

The CRD in `crds/` is generated from these models (`make crds`), the operator validates every
object it reconciles into them, and the local runtime and the data plane load the same classes.
Cross-field and transition rules are written once, as CEL (`x-kubernetes-validations`): the API
server enforces them on Kubernetes, and `ApiModel` evaluates the same rule text with cel-python
when a model is validated locally, so the two cannot drift apart.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict

from shardrec.api import cel as cel_rules
from shardrec.api.commands import DEFAULT_EF_SEARCH

GROUP = "shardrec.io"
VERSION = "v1alpha1"
API_VERSION: Final = "shardrec.io/v1alpha1"
KIND: Final = "RecommenderCluster"
PLURAL = "recommenderclusters"
SINGULAR = "recommendercluster"
SHORT_NAMES = ["recc"]

DEFAULT_IMAGE = "ghcr.io/shardrec/shardrec:0.1.0"

CANARY_COMMAND_ANNOTATION: Final = "shardrec.io/canary-command"
"""Annotation a human sets to `promote` or `abort` the running canary (see `planning.canary`)."""

CEL_RULES_KEY = cel_rules.CEL_RULES_KEY

DnsLabel = Annotated[
    str,
    Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"),
]
Quantity = Annotated[
    str,
    Field(
        pattern=r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$",
        max_length=32,
    ),
]


class ApiModel(BaseModel):
    """Base: camelCase on the wire, snake_case in Python, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
    )

    @model_validator(mode="after")
    def _cel_rules_hold(self) -> ApiModel:
        rules = cel_rules.rules_of(self.model_config.get("json_schema_extra"))
        if rules:
            failed = cel_rules.failed_messages(rules, _as_stored(self))
            if failed:
                raise ValueError("; ".join(failed))
        return self


def _as_stored(model: BaseModel) -> dict[str, Any]:
    """The wire form CEL sees on the API server: an unset optional field is absent, not null."""
    document: dict[str, Any] = model.model_dump(by_alias=True, mode="json", exclude_none=True)
    return document


def transition_errors(old: ApiModel, new: ApiModel) -> list[str]:
    """Messages of the transition rules (those using `oldSelf`) that `old -> new` breaks,
    walking nested models the way the API server walks the schema."""
    rules = cel_rules.rules_of(new.model_config.get("json_schema_extra"))
    errors = cel_rules.failed_messages(rules, _as_stored(new), _as_stored(old))
    for name in type(new).model_fields:
        old_child, new_child = getattr(old, name), getattr(new, name)
        if isinstance(old_child, ApiModel) and isinstance(new_child, ApiModel):
            errors.extend(transition_errors(old_child, new_child))
    return errors


def cel(*rules: tuple[str, str, str]) -> dict[str, Any]:
    """json_schema_extra for a model: (rule, message, fieldPath) triples as CEL validations."""
    return {
        CEL_RULES_KEY: [
            {"rule": rule, "message": message, **({"fieldPath": path} if path else {})}
            for rule, message, path in rules
        ]
    }


class HnswSpec(ApiModel):
    """HNSW graph parameters (hnswlib). Larger values trade memory and build time for recall."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            (
                "self.efConstruction >= self.m",
                "hnsw.efConstruction must be at least hnsw.m",
                ".efConstruction",
            )
        )
    )

    m: int = Field(16, ge=4, le=128, description="Graph degree (hnswlib M): links per node.")
    ef_construction: int = Field(
        200, ge=16, le=2048, description="Candidate list size while building (hnswlib ef_construction)."
    )
    ef_search: int = Field(
        DEFAULT_EF_SEARCH,
        ge=10,
        le=4096,
        description=(
            "Candidate list size while searching; raised to k when k is larger. Applied live: the "
            "routers send it with every shard query, so a change restarts nothing."
        ),
    )


class PersistentVolumeClaimStore(ApiModel):
    """A PersistentVolumeClaim that holds index artifacts (ReadWriteMany for more than one node)."""

    claim_name: str = Field(
        min_length=1, max_length=253, description="Name of the PVC in the cluster's namespace."
    )
    sub_path: str = Field(
        "",
        max_length=253,
        pattern=r"^([^/.][^/]*)?(/[^/.][^/]*)*$",
        description="Folder inside the claim; empty for its root. No '..' or leading '/'.",
    )


S3_URL_PATTERN: Final = r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[^\s]*)?$"
"""`s3://bucket/prefix`: a DNS-style bucket name, then an optional key prefix."""


class ObjectStoreLocation(ApiModel):
    """A location in an S3-compatible object store (connection: `spec.index.objectStore`)."""

    url: str = Field(
        min_length=6,
        max_length=1024,
        pattern=S3_URL_PATTERN,
        description=(
            "s3://bucket/prefix. Each layout goes to <prefix>/<namespace>/<cluster>/layouts/<layout id>/, "
            "its manifest (layout.json, with checksums) written last."
        ),
    )


class RetentionSpec(ApiModel):
    """Which built layouts stay in the store. A layout that serves, is the target, or is kept
    running for rollback is never deleted, whatever these say."""

    keep_layouts: int = Field(
        3,
        ge=1,
        le=100,
        description=(
            "The newest this many built layouts are always kept (serving and rollback targets "
            "included), so a rollback to any of them reuses its artifacts."
        ),
    )
    max_age_hours: int = Field(
        0,
        ge=0,
        le=87600,
        description=(
            "Layouts beyond the newest keepLayouts are deleted once built longer ago than this; "
            "0 deletes them at once."
        ),
    )


class IndexStoreSpec(ApiModel):
    """Where built index layouts are written and where shard pods read them."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            (
                "!has(self.persistentVolumeClaim) || !has(self.objectStore)",
                "index.store: set persistentVolumeClaim or objectStore, not both",
                ".objectStore",
            ),
            (
                "has(self.objectStore) == has(oldSelf.objectStore) && "
                "(!has(self.objectStore) || self.objectStore.url == oldSelf.objectStore.url)",
                "index.store.objectStore cannot be added, removed or moved in place (built layouts "
                "would not be found): create a new RecommenderCluster",
                ".objectStore",
            ),
        )
    )

    persistent_volume_claim: PersistentVolumeClaimStore | None = Field(
        None,
        description=(
            "Store artifacts on this PVC (mounted by build, shard and router pods). On Kubernetes "
            "exactly one of persistentVolumeClaim and objectStore is required; ignored locally."
        ),
    )
    object_store: ObjectStoreLocation | None = Field(
        None,
        description=(
            "Store artifacts in an object store: builds upload, shard pods copy only their own "
            "partition into a local volume. Needs spec.index.objectStore. No PVC is mounted."
        ),
    )
    retention: RetentionSpec = Field(
        default_factory=RetentionSpec,
        description="How many built layouts stay in the store, and for how long (garbage collection).",
    )


class ObjectStoreCredentialsRef(ApiModel):
    """A Secret with S3 credentials; the pods get its keys as AWS_* environment variables."""

    name: str = Field(min_length=1, max_length=253, description="Secret name in the cluster's namespace.")
    access_key_id_key: str = Field(
        "access-key-id",
        min_length=1,
        max_length=253,
        description="Key of the access key id (becomes AWS_ACCESS_KEY_ID).",
    )
    secret_access_key_key: str = Field(
        "secret-access-key",
        min_length=1,
        max_length=253,
        description="Key of the secret access key (becomes AWS_SECRET_ACCESS_KEY).",
    )
    session_token_key: str | None = Field(
        None,
        min_length=1,
        max_length=253,
        description="Key of a session token (becomes AWS_SESSION_TOKEN); absent for static keys.",
    )


class ObjectStoreSpec(ApiModel):
    """How to reach the S3-compatible object store of s3:// sources and stores. Nothing secret
    here: credentials come from a Secret (Kubernetes) or the environment (local runtime)."""

    endpoint: str | None = Field(
        None,
        max_length=1024,
        pattern=r"^https?://[^\s/]+(/[^\s]*)?$",
        description="S3 API endpoint URL (e.g. http://seaweedfs.storage:8333); absent: AWS S3.",
    )
    region: str = Field(
        "us-east-1",
        min_length=1,
        max_length=64,
        pattern=r"^[a-z0-9-]+$",
        description="Region of the bucket (signing region).",
    )
    path_style: bool = Field(
        False,
        description="Path-style addressing (endpoint/bucket/key), which most self-hosted stores need.",
    )
    credentials_secret_ref: ObjectStoreCredentialsRef | None = Field(
        None,
        description=(
            "Secret holding the access keys, passed to build, fetch and cleanup containers as "
            "environment variables. Absent: no credentials are passed (the local runtime uses "
            "its own environment)."
        ),
    )


class QualityGateSpec(ApiModel):
    """Offline-quality minimums a new index version must meet before any of its shards starts.

    The build copies the model's offline metrics (the `quality` block of the embeddings'
    metadata.json, written by `recctl train --holdout N` or `--tune`) into the layout manifest;
    a layout below a minimum, or with no metrics, is refused (status.blockedBy names
    `meets_quality_gate`, with a Warning Event) and the active layout keeps serving. On
    Kubernetes the build pod reports the metrics in its termination message and the operator
    keeps them in `status.layouts[].quality`, so the serving layout's metrics outlive its build
    Job (the relative minimum needs them).
    """

    min_ndcg_at10: float | None = Field(
        None, ge=0, le=1, description="Refuse a layout whose recorded NDCG@10 is below this."
    )
    min_relative_to_active: float | None = Field(
        None,
        ge=0,
        le=10,
        description=(
            "Refuse a layout whose NDCG@10 is below this multiple of the serving layout's (e.g. 0.98 "
            "allows a 2% drop); not applied while the serving layout records no metrics."
        ),
    )


class IndexSpec(ApiModel):
    """The item index to serve: which embeddings, which version, how it is searched."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            (
                "self.metric == oldSelf.metric",
                "index.metric cannot change in place: create a new RecommenderCluster",
                ".metric",
            ),
            (
                "self.dimension == oldSelf.dimension",
                "index.dimension cannot change in place: create a new RecommenderCluster",
                ".dimension",
            ),
            (
                "has(self.objectStore) || !(self.source.startsWith('s3://') || "
                "(has(self.store) && has(self.store.objectStore)))",
                "index.objectStore is required when index.source or index.store.objectStore is an s3:// URL",
                ".objectStore",
            ),
        )
    )

    version: DnsLabel = Field(
        description=(
            "Version label of the index (e.g. v2, 2026-11-23). Changing it builds a new layout and "
            "switches the router to it once every shard is ready."
        )
    )
    source: str = Field(
        min_length=1,
        max_length=1024,
        pattern=r"^(file://|pvc://|s3://|/)\S+$",
        description=(
            "Embeddings directory to build from: file:///abs/path or /abs/path (local runtime, or a "
            "path inside the index store volume), pvc://<claim>/<path> on Kubernetes, or "
            "s3://bucket/prefix (needs index.objectStore). Format: docs/embeddings-format.md."
        ),
    )
    dimension: int = Field(ge=1, le=4096, description="Embedding dimension; checked against the data.")
    metric: Literal["ip", "cosine", "l2"] = Field(
        "cosine",
        description="Similarity: ip (inner product), cosine, or l2 (Euclidean; smaller is closer).",
    )
    hnsw: HnswSpec = Field(default_factory=HnswSpec, description="HNSW parameters.")
    store: IndexStoreSpec = Field(
        default_factory=IndexStoreSpec, description="Where index artifacts are kept."
    )
    object_store: ObjectStoreSpec | None = Field(
        None,
        description="Connection to the S3-compatible object store; required when an s3:// URL is used.",
    )
    quality_gate: QualityGateSpec | None = Field(
        None,
        description=(
            "Offline-quality minimums a new version must meet before its shards start (local "
            "runtime only for now; the operator refuses it)."
        ),
    )


class PartitioningSpec(ApiModel):
    """How items are split into shards."""

    scheme: Literal["jump-hash-item-id"] = Field(
        "jump-hash-item-id",
        description=(
            "jump-hash-item-id: shard = JumpConsistentHash(first 8 bytes of BLAKE2b(item id, "
            "UTF-8), shards). Stable across processes and releases; see docs/partitioning.md."
        ),
    )


class HedgingSpec(ApiModel):
    """Send a second copy of a slow shard request to another replica; the first answer wins."""

    enabled: bool = Field(True, description="Hedge slow shard requests.")
    after_ms: int = Field(
        20, ge=1, le=10000, description="Hedge a shard request still unanswered after this long."
    )
    budget_percent: int = Field(
        10,
        ge=0,
        le=100,
        description=(
            "At most this share of shard requests may be hedges, so a slow shard cannot double the load."
        ),
    )


class RouterCacheSpec(ApiModel):
    """The router's result cache of /v1/recommend answers, per router replica. Answers are
    deterministic per (layout, query), so a hit returns the answer the shards would give (flagged
    `cached: true`); the layout is part of the key, so a layout switch never serves an old answer."""

    enabled: bool = Field(False, description="Cache /v1/recommend answers in the router.")
    max_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1024,
        le=64 * 1024 * 1024 * 1024,
        description="Memory bound of the cache per router replica, in bytes (least recently used go first).",
    )
    ttl_seconds: int = Field(
        300, ge=1, le=86400, description="A cached answer is served as a hit for at most this long."
    )


class RouterFallbackSpec(ApiModel):
    """Answers instead of a 503 when the router sheds load or (strict) a shard is down. Off by
    default: then those requests fail with 503 as before."""

    cached: bool = Field(
        False,
        description=(
            "Answer from the result cache (router.cache must be enabled), flagged fallback: cached, even "
            "past the TTL by at most maxStaleSeconds."
        ),
    )
    max_stale_seconds: int = Field(
        3600,
        ge=0,
        le=86400,
        description="How far past router.cache.ttlSeconds a fallback answer from the cache may be.",
    )
    popular: bool = Field(
        False,
        description=(
            "When the cache holds nothing for the request (or fallback.cached is off), answer with the "
            "layout's most-seen items (computed at index build from the interactions), flagged "
            "fallback: popular; layouts built without interactions have none, and then the 503 stands."
        ),
    )


class AutoscalingSpec(ApiModel):
    """HorizontalPodAutoscaler for the router."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            (
                "self.minReplicas <= self.maxReplicas",
                "router.autoscaling.minReplicas must not exceed maxReplicas",
                ".minReplicas",
            )
        )
    )

    min_replicas: int = Field(2, ge=1, le=100, description="Fewest router replicas.")
    max_replicas: int = Field(10, ge=1, le=100, description="Most router replicas.")
    target_cpu_utilization_percent: int = Field(
        70, ge=10, le=100, description="Average CPU utilisation the autoscaler aims for."
    )


class RouterSpec(ApiModel):
    """The router: the one endpoint clients call. It scatter-gathers over the shards."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            (
                "!self.hedging.enabled || self.hedging.afterMs < self.timeoutMs",
                "router.hedging.afterMs must be below router.timeoutMs",
                ".hedging.afterMs",
            ),
            (
                "!self.fallback.cached || self.cache.enabled",
                "router.fallback.cached needs router.cache.enabled",
                ".fallback.cached",
            ),
        )
    )

    replicas: int = Field(2, ge=1, le=100, description="Router replicas (ignored when autoscaling is set).")
    consistency: Literal["strict", "available"] = Field(
        "strict",
        description=(
            "strict: a shard with no live replica fails the request with 503 and Retry-After. "
            "available: answer from the shards that did, flagged partial with the coverage."
        ),
    )
    timeout_ms: int = Field(
        1000, ge=10, le=60000, description="Deadline for a whole request, propagated to shards."
    )
    max_retries: int = Field(
        2,
        ge=0,
        le=5,
        description="Retries of a failed shard request on another replica, within the deadline.",
    )
    hedging: HedgingSpec = Field(default_factory=HedgingSpec, description="Hedged shard requests.")
    max_in_flight: int = Field(
        512,
        ge=1,
        le=100000,
        description=(
            "Requests a router replica admits at once; past it, 503 with Retry-After (load shedding)."
        ),
    )
    max_batch_size: int = Field(
        256, ge=1, le=4096, description="Most queries in one /v1/recommend/batch request."
    )
    autoscaling: AutoscalingSpec | None = Field(
        None, description="Scale router replicas with load; absent means a fixed replica count."
    )
    cache: RouterCacheSpec = Field(
        default_factory=RouterCacheSpec, description="Result cache of /v1/recommend answers."
    )
    fallback: RouterFallbackSpec = Field(
        default_factory=RouterFallbackSpec,
        description="Fallback answers instead of 503 when shedding or (strict) a shard is down.",
    )


class CanaryShadow(ApiModel):
    """A shadow step: the routers mirror a sample of live queries to the candidate layout, off the
    request's path, and compare its answers with the active layout's; clients see only the active."""

    sample_rate: float = Field(
        0.1, gt=0, le=1, description="Share of live queries mirrored to the candidate (0 < rate <= 1)."
    )


class CanaryStep(ApiModel):
    """One step of a canary: a shadow (mirroring) or a traffic weight, held until its analysis
    passes after both its minimum duration and its minimum request count."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            (
                "has(self.shadow) != has(self.weight)",
                "a canary step sets exactly one of shadow and weight",
                "",
            )
        )
    )

    shadow: CanaryShadow | None = Field(None, description="Mirror a sample of queries to the candidate.")
    weight: int | None = Field(
        None,
        ge=1,
        le=99,
        description=(
            "Percent of users (sticky: hashed user id) answered by the candidate; promotion after "
            "the last step gives it 100%."
        ),
    )
    min_duration_seconds: int = Field(
        60, ge=0, le=86400, description="The step lasts at least this long before it may pass."
    )
    min_requests: int = Field(
        200,
        ge=1,
        le=100_000_000,
        description=(
            "Candidate answers (shadow: compared answers) the step needs before its analysis decides; "
            "a failing analysis rolls back as soon as this many are measured."
        ),
    )


def _default_canary_steps() -> list[CanaryStep]:
    return [
        CanaryStep(shadow=CanaryShadow(sample_rate=0.1)),
        CanaryStep(weight=5),
        CanaryStep(weight=25),
        CanaryStep(weight=50),
    ]


class CanaryAnalysisSpec(ApiModel):
    """Thresholds every canary step is judged by; any one failed rolls the candidate back."""

    min_overlap_at10: float = Field(
        0.3,
        ge=0,
        le=1,
        description=(
            "Least mean top-10 overlap between the candidate's and the active layout's answers to the "
            "same query (1: the same items). A wrong item-id mapping scores near 0."
        ),
    )
    max_p99_ratio: float = Field(
        1.5,
        ge=1,
        le=100,
        description="Candidate p99 latency may be at most this multiple of the active's (plus the slack).",
    )
    p99_slack_milliseconds: float = Field(
        5.0,
        ge=0,
        le=10000,
        description=(
            "Added to the allowed candidate p99, so a sub-millisecond p99's jitter does not fail a step."
        ),
    )
    max_error_rate_increase: float = Field(
        0.001,
        ge=0,
        le=1,
        description="Candidate error rate may exceed the active's by at most this (0.001 = 0.1 points).",
    )
    max_unknown_user_share: float = Field(
        0.05,
        ge=0,
        le=1,
        description=(
            "Largest share of user queries the candidate answers 'unknown user' to while the active "
            "knows the user."
        ),
    )
    compare_sample_rate: float = Field(
        0.1,
        ge=0,
        le=1,
        description=(
            "In weight steps, the share of candidate answers also asked of the active layout (off the "
            "request's path) to measure overlap."
        ),
    )


class CanarySpec(ApiModel):
    """Steps and analysis of `rollout.strategy: Canary`."""

    steps: list[CanaryStep] = Field(
        default_factory=_default_canary_steps,
        min_length=1,
        max_length=16,
        description="Steps in order (default: shadow 10%, then 5%, 25%, 50% of users).",
    )
    analysis: CanaryAnalysisSpec = Field(
        default_factory=CanaryAnalysisSpec, description="Thresholds each step is judged by."
    )
    max_inflight_shadow_requests: int = Field(
        8,
        ge=1,
        le=1024,
        description="Per router: mirrored requests in flight at most; a sample over it is dropped (counted).",
    )


class RolloutSpec(ApiModel):
    """How a new layout (index version or shard count) replaces the serving one."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            (
                "self.strategy == 'Canary' || !has(self.canary)",
                "rollout.canary is only allowed with rollout.strategy Canary",
                ".canary",
            )
        )
    )

    strategy: Literal["BlueGreen", "Canary"] = Field(
        "BlueGreen",
        description=(
            "BlueGreen: build and start the new layout beside the old one, switch the router in one "
            "step once every shard is ready, so no answer mixes versions. Canary: once ready, the "
            "new layout goes through rollout.canary's steps (shadow, then sticky traffic shares), each "
            "judged by its analysis; it is switched to only after the last step passes (or "
            "on `shardrec.io/canary-command: promote`), and rolled back when a step fails (or on "
            "`abort`). The first layout of a cluster has nothing to compare with and switches at once."
        ),
    )
    canary: CanarySpec | None = Field(
        None,
        description="Canary steps and analysis (defaults apply when strategy is Canary and this is unset).",
    )
    timeout_seconds: int = Field(
        1800,
        ge=10,
        le=86400,
        description="A layout not built and ready within this is abandoned, as is one whose carry of "
        "item writes still waits (not caught up, hand-over not reported) this long after it turned "
        "Ready; the old one keeps serving.",
    )
    keep_previous_layouts: int = Field(
        1, ge=0, le=3, description="Old layouts kept running after a switch, for instant rollback."
    )
    rollback_window_seconds: int = Field(
        300,
        ge=0,
        le=604800,
        description="How long a kept layout keeps running after it stopped serving.",
    )
    drain_seconds: int = Field(
        5, ge=0, le=600, description="Grace for in-flight requests before an old layout is stopped."
    )

    def canary_spec(self) -> CanarySpec | None:
        """The canary settings in force: None for BlueGreen, the defaults when Canary sets none."""
        if self.strategy != "Canary":
            return None
        return self.canary if self.canary is not None else CanarySpec()


class ApiKeysSecretRef(ApiModel):
    """A Secret holding API keys, one per line (`name:key` or bare key)."""

    name: str = Field(min_length=1, max_length=253, description="Secret name in the cluster's namespace.")
    key: str = Field("api-keys", min_length=1, max_length=253, description="Key inside the Secret.")


class AuthSpec(ApiModel):
    """Client authentication and per-key limits at the router."""

    api_keys_secret_ref: ApiKeysSecretRef | None = Field(
        None, description="Require an API key (X-API-Key or Bearer) from this Secret; absent means open."
    )
    api_keys_file: str | None = Field(
        None,
        min_length=1,
        max_length=4096,
        description=(
            "Local runtime only (recctl up): a file of API keys in the Secret's format, read by the "
            "local router in place of apiKeysSecretRef (a relative path is taken from the YAML's "
            "folder). The operator ignores it and reads apiKeysSecretRef."
        ),
    )
    rate_limit_per_second: int = Field(
        0, ge=0, le=1000000, description="Requests per second per API key; 0 turns the limit off."
    )
    rate_limit_burst: int = Field(
        0, ge=0, le=1000000, description="Burst allowance above the rate; 0 means one second's worth."
    )


class ResourceRequirements(ApiModel):
    """CPU and memory for a container, as Kubernetes quantities."""

    requests: dict[Literal["cpu", "memory"], Quantity] = Field(
        default_factory=dict, description="Guaranteed resources (e.g. cpu: 500m, memory: 1Gi)."
    )
    limits: dict[Literal["cpu", "memory"], Quantity] = Field(
        default_factory=dict, description="Upper bounds (e.g. memory: 2Gi)."
    )


class ResourcesSpec(ApiModel):
    """Resources of shard-server, router and index-build containers. The CPU limit (or, without
    one, the request) also sets the threads: shard search threads and index build workers."""

    shard: ResourceRequirements = Field(
        default_factory=ResourceRequirements, description="Each shard-server container."
    )
    router: ResourceRequirements = Field(
        default_factory=ResourceRequirements, description="Each router container."
    )
    build: ResourceRequirements | None = Field(
        None,
        description=(
            "The index-build Job's container (building is CPU-bound and memory-hungry: size it for "
            "the build, not for serving); absent means the shard container's resources."
        ),
    )


STORAGE_SIZE_PATTERN: Final = r"^[1-9][0-9]{0,15}(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"
"""A positive whole quantity of bytes with an optional binary or decimal suffix (1Gi, 500M):
stricter than Kubernetes' quantity (no 0, no fractions, no exponents), so a typo is caught by
the schema instead of by the StatefulSet controller after the layout was built."""


class WriteLogVolumeSpec(ApiModel):
    """The per-replica ReadWriteOnce volume that holds a shard replica's write log."""

    size: str = Field(
        "1Gi",
        min_length=1,
        max_length=20,
        pattern=STORAGE_SIZE_PATTERN,
        description=(
            "Storage request of each replica's claim: a positive whole number of bytes with an "
            "optional suffix (Ki, Mi, Gi, Ti, Pi, Ei, k, M, G, T, P, E), e.g. 1Gi. A log grows until "
            "its layout is deleted (no compaction): about 60 bytes plus 4 per dimension per write."
        ),
    )
    storage_class_name: str | None = Field(
        None,
        min_length=1,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="StorageClass of the claims; absent: the cluster's default StorageClass.",
    )


class WritesSpec(ApiModel):
    """Item writes (`PUT`/`DELETE /v1/items/{id}` at the router) between index versions.

    On: every shard replica keeps a durable write log on its own ReadWriteOnce claim
    (StatefulSet volumeClaimTemplates), replica 0 of each shard numbers the writes, the routers
    acknowledge by `ack`. Turning writes on or off, or changing the log volume, makes a new
    layout (a claim template cannot change on a StatefulSet). While writes are on, a new version
    or shard count gets the logged writes carried into it by a carrier Deployment (cut before the
    build, forwarding, hand-over before the switch); a rollback to a kept layout is refused, since
    its artifact would be reused without them (docs/operator.md, "Item writes")."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            (
                "!self.enabled || !oldSelf.enabled || self.logVolume == oldSelf.logVolume",
                "writes.logVolume cannot change while writes stay enabled (the claims of a running "
                "layout cannot be resized or moved in place): turn writes off, then on again with the "
                "new volume",
                ".logVolume",
            ),
        )
    )

    enabled: bool = Field(
        False,
        description=(
            "Accept item writes: shard pods get a write-log claim and --write-log-dir. Off: no "
            "claim, and the router answers PUT/DELETE /v1/items with 403 writes_disabled."
        ),
    )
    ack: Literal["all", "majority"] = Field(
        "all",
        description=(
            "When the router acknowledges a write: all (every ready replica of the shard logged it) "
            "or majority (more than half of them, the leader included)."
        ),
    )
    log_volume: WriteLogVolumeSpec = Field(
        default_factory=WriteLogVolumeSpec, description="The per-replica write-log claim."
    )


class MonitoringSpec(ApiModel):
    """Prometheus integration."""

    service_monitor: bool = Field(
        False, description="Create a ServiceMonitor (needs the Prometheus Operator CRDs)."
    )
    scrape_annotations: bool = Field(
        True, description="Annotate pods with prometheus.io/scrape, port and path."
    )


class FailoverSpec(ApiModel):
    """What the operator does about pods on lost nodes."""

    force_delete_after_seconds: int = Field(
        300,
        ge=30,
        le=86400,
        description=(
            "A shard pod on a NotReady or unreachable node this long is force-deleted so its "
            "StatefulSet recreates it elsewhere (unless the operator's brakes hold: most nodes of "
            "the zone NotReady, or the force-delete rate limit)."
        ),
    )
    while_paused: bool = Field(
        True,
        description=(
            "Keep failing over pods on lost nodes while spec.paused is true (pausing freezes "
            "topology changes, not recovery); false stops force deletes too."
        ),
    )


# --- pod templates ---------------------------------------------------------------------------

FREE_FORM: Final[JsonDict] = {"x-kubernetes-preserve-unknown-fields": True}
"""A Kubernetes object passed through as written (affinity terms, env valueFrom, volume sources):
the API server checks it when the operator applies the pod, and the pod's own schema applies."""


def _list_map(key: str = "name") -> JsonDict:
    """A list whose items are unique by `key` (the API server rejects duplicates)."""
    return {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": [key]}


RESERVED_LABELS: Final = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/managed-by",
)
RESERVED_PREFIX: Final = "shardrec.io/"
APPARMOR_ANNOTATION_PREFIX: Final = "container.apparmor.security.beta.kubernetes.io/"
RESTRICTED_VOLUME_SOURCES: Final = (
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
)
"""The volume types the restricted Pod Security Standard allows (no hostPath, no nfs, ...)."""

LabelValue = Annotated[str, Field(max_length=63, pattern=r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")]


class PodMetadata(ApiModel):
    """Labels and annotations added to the pods (not to their StatefulSet, Deployment or Job)."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            (
                "!has(self.labels) || self.labels.all(k, !k.startsWith('"
                + RESERVED_PREFIX
                + "') && !(k in "
                + repr(list(RESERVED_LABELS)).replace('"', "'")
                + "))",
                "podTemplates: labels under shardrec.io/ and the app.kubernetes.io/ labels the operator "
                "sets (name, instance, component, part-of, managed-by) are the operator's",
                ".labels",
            ),
            (
                "!has(self.annotations) || self.annotations.all(k, !k.startsWith('" + RESERVED_PREFIX + "'))",
                "podTemplates: annotations under shardrec.io/ are the operator's",
                ".annotations",
            ),
            (
                "!has(self.annotations) || "
                "self.annotations.all(k, !k.startsWith('" + APPARMOR_ANNOTATION_PREFIX + "'))",
                "podTemplates: AppArmor annotations are not accepted (deprecated since Kubernetes 1.30, "
                "and they name containers); the pods run under the runtime's default profile",
                ".annotations",
            ),
        )
    )

    labels: dict[str, LabelValue] = Field(
        default_factory=dict,
        max_length=64,
        description="Extra pod labels (the operator's own labels cannot be set).",
    )
    annotations: dict[str, Annotated[str, Field(max_length=4096)]] = Field(
        default_factory=dict,
        max_length=64,
        description="Extra pod annotations (the operator's own cannot be set).",
    )


class Toleration(ApiModel):
    """A Kubernetes toleration: lets the pods schedule onto nodes with a matching taint."""

    key: str | None = Field(None, max_length=317, description="Taint key; empty with Exists matches all.")
    operator: Literal["Exists", "Equal"] | None = Field(None, description="Exists or Equal (default).")
    value: str | None = Field(None, max_length=63, description="Taint value to match with Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="Taint effect to match; empty matches all."
    )
    toleration_seconds: int | None = Field(
        None, description="With NoExecute: how long the pod stays bound after the taint appears."
    )


class TopologySpreadConstraint(ApiModel):
    """A Kubernetes topologySpreadConstraint over the pods of one group."""

    max_skew: int = Field(ge=1, description="Most the pod counts of two domains may differ by.")
    topology_key: str = Field(min_length=1, max_length=317, description="Node label that names a domain.")
    when_unsatisfiable: Literal["DoNotSchedule", "ScheduleAnyway"] = Field(
        description="DoNotSchedule (hard: pods stay Pending) or ScheduleAnyway (soft)."
    )
    label_selector: dict[str, Any] | None = Field(
        None,
        description=(
            "Pods counted (a LabelSelector); absent means this group's pods (one shard's replicas, "
            "or the routers)."
        ),
        json_schema_extra=FREE_FORM,
    )
    min_domains: int | None = Field(None, ge=1, description="Fewest eligible domains (DoNotSchedule).")
    match_label_keys: list[str] | None = Field(
        None, description="Pod label keys whose values further select the pods counted."
    )
    node_affinity_policy: Literal["Honor", "Ignore"] | None = Field(
        None, description="Whether nodeAffinity/nodeSelector limit the domains counted."
    )
    node_taints_policy: Literal["Honor", "Ignore"] | None = Field(
        None, description="Whether node taints limit the domains counted."
    )


class Affinity(ApiModel):
    """Kubernetes affinity, by kind; a kind given here replaces the operator's default of that kind
    (the default podAntiAffinity prefers one replica of a shard per node)."""

    node_affinity: dict[str, Any] | None = Field(
        None, description="A Kubernetes NodeAffinity.", json_schema_extra=FREE_FORM
    )
    pod_affinity: dict[str, Any] | None = Field(
        None, description="A Kubernetes PodAffinity.", json_schema_extra=FREE_FORM
    )
    pod_anti_affinity: dict[str, Any] | None = Field(
        None,
        description="A Kubernetes PodAntiAffinity; replaces the operator's preferred one-per-node rule.",
        json_schema_extra=FREE_FORM,
    )


class LocalObjectReference(ApiModel):
    """A reference to an object in the cluster's namespace, by name."""

    name: str = Field(min_length=1, max_length=253, description="Object name.")


class EnvVar(ApiModel):
    """An environment variable of the main container (value, or valueFrom a Secret, ConfigMap or
    field)."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            (
                "!(has(self.value) && has(self.valueFrom))",
                "podTemplates: an env entry sets value or valueFrom, not both",
                ".valueFrom",
            )
        )
    )

    name: str = Field(
        min_length=1, max_length=256, pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$", description="Variable name."
    )
    value: str | None = Field(None, description="Literal value.")
    value_from: dict[str, Any] | None = Field(
        None,
        description="A Kubernetes EnvVarSource (secretKeyRef, configMapKeyRef, fieldRef, resourceFieldRef).",
        json_schema_extra=FREE_FORM,
    )


def _exactly_one_of(fields: tuple[str, ...]) -> str:
    return " + ".join(f"(has(self.{name}) ? 1 : 0)" for name in fields) + " == 1"


class Volume(ApiModel):
    """An extra pod volume, of a type the restricted Pod Security Standard allows."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            (
                _exactly_one_of(RESTRICTED_VOLUME_SOURCES),
                "podTemplates: a volume sets exactly one source, of those the restricted Pod Security "
                "Standard allows: " + ", ".join(RESTRICTED_VOLUME_SOURCES),
                "",
            )
        )
    )

    name: DnsLabel = Field(description="Volume name (not one of the operator's volumes).")
    config_map: dict[str, Any] | None = Field(
        None, description="A ConfigMapVolumeSource.", json_schema_extra=FREE_FORM
    )
    csi: dict[str, Any] | None = Field(None, description="A CSIVolumeSource.", json_schema_extra=FREE_FORM)
    downward_api: dict[str, Any] | None = Field(
        None, alias="downwardAPI", description="A DownwardAPIVolumeSource.", json_schema_extra=FREE_FORM
    )
    empty_dir: dict[str, Any] | None = Field(
        None, description="An EmptyDirVolumeSource.", json_schema_extra=FREE_FORM
    )
    ephemeral: dict[str, Any] | None = Field(
        None, description="An EphemeralVolumeSource.", json_schema_extra=FREE_FORM
    )
    persistent_volume_claim: dict[str, Any] | None = Field(
        None, description="A PersistentVolumeClaimVolumeSource.", json_schema_extra=FREE_FORM
    )
    projected: dict[str, Any] | None = Field(
        None, description="A ProjectedVolumeSource.", json_schema_extra=FREE_FORM
    )
    secret: dict[str, Any] | None = Field(
        None, description="A SecretVolumeSource.", json_schema_extra=FREE_FORM
    )


class VolumeMount(ApiModel):
    """Where the main container mounts one of the template's volumes."""

    name: DnsLabel = Field(description="A volume of this template's `volumes`.")
    mount_path: str = Field(
        min_length=2, max_length=1024, pattern=r"^/[^:]*$", description="Absolute path in the container."
    )
    sub_path: str | None = Field(None, max_length=1024, description="Path inside the volume.")
    read_only: bool | None = Field(None, description="Mount read-only.")


class PodTemplate(ApiModel):
    """Overrides merged over the operator's pod (ECK's `podTemplate`, Strimzi's `template`), for
    what a real cluster needs: placement, priority, pull secrets, extra env, labels, annotations
    and volumes. The operator's essentials (containers, command, ports, probes, security context,
    resources, service account, selector labels, its volumes and env) cannot be overridden: a
    conflicting entry is rejected, never silently dropped. docs/operator.md has the merge rules."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            (
                "!has(self.volumeMounts) || "
                "self.volumeMounts.all(m, has(self.volumes) && self.volumes.exists(v, v.name == m.name))",
                "podTemplates: every volumeMount names a volume of the same template",
                ".volumeMounts",
            )
        )
    )

    metadata: PodMetadata = Field(default_factory=PodMetadata, description="Pod labels and annotations.")
    node_selector: dict[str, Annotated[str, Field(max_length=63)]] = Field(
        default_factory=dict, max_length=32, description="Schedule only onto nodes with these labels."
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, max_length=32, description="Tolerations, added to the pods'."
    )
    affinity: Affinity | None = Field(None, description="Affinity; each kind given replaces the default's.")
    topology_spread_constraints: list[TopologySpreadConstraint] = Field(
        default_factory=list,
        max_length=8,
        description="Spread constraints; one with the topologyKey of a default one replaces it.",
    )
    priority_class_name: str | None = Field(
        None, max_length=253, description="PriorityClass of the pods (preemption and eviction order)."
    )
    image_pull_secrets: list[LocalObjectReference] = Field(
        default_factory=list,
        max_length=8,
        description="Secrets to pull the data-plane image with.",
        json_schema_extra=_list_map(),
    )
    env: list[EnvVar] = Field(
        default_factory=list,
        max_length=128,
        description="Extra environment of the main container (the operator's own names are rejected).",
        json_schema_extra=_list_map(),
    )
    volumes: list[Volume] = Field(
        default_factory=list,
        max_length=32,
        description="Extra volumes (restricted Pod Security Standard types only).",
        json_schema_extra=_list_map(),
    )
    volume_mounts: list[VolumeMount] = Field(
        default_factory=list, max_length=32, description="Where the main container mounts the extra volumes."
    )


class ServingPodTemplate(PodTemplate):
    """A pod template for serving pods (shards, routers), with the zone spread choice."""

    zone_spread: Literal["Soft", "Hard"] = Field(
        "Soft",
        description=(
            "Spread of one shard's replicas (or of the routers) over topology.kubernetes.io/zone, "
            "maxSkew 1. Soft (ScheduleAnyway): prefer, never block. Hard (DoNotSchedule): a zone "
            "outage can never take more than its share; pods stay Pending while zones are short."
        ),
    )


class PodTemplatesSpec(ApiModel):
    """Pod template overrides per kind of pod; absent means the operator's defaults."""

    shard: ServingPodTemplate | None = Field(None, description="Shard-server pods.")
    router: ServingPodTemplate | None = Field(None, description="Router pods.")
    build: PodTemplate | None = Field(None, description="Index-build (and artifact cleanup) Job pods.")
    carrier: PodTemplate | None = Field(
        None,
        description="Carrier pods (spec.writes: item writes carried across a layout change). Unset: "
        "the build template applies (the same image and store, no traffic); {}: none.",
    )


class RecommenderClusterSpec(ApiModel):
    """Desired state of a sharded, replicated recommendation-serving cluster."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            (
                "self.shards * self.replicasPerShard <= 4096",
                "shards x replicasPerShard must not exceed 4096 pods",
                ".replicasPerShard",
            )
        )
    )

    shards: int = Field(
        1,
        ge=1,
        le=1024,
        description="Number of index partitions. Changing it rebalances into a new layout.",
    )
    replicas_per_shard: int = Field(
        2,
        ge=1,
        le=16,
        description="Replicas of every shard; changing it adds or removes pods without rebuilding.",
    )
    index: IndexSpec = Field(description="The item index to serve.")
    partitioning: PartitioningSpec = Field(
        default_factory=PartitioningSpec, description="How items map to shards."
    )
    router: RouterSpec = Field(default_factory=RouterSpec, description="The client-facing router.")
    rollout: RolloutSpec = Field(default_factory=RolloutSpec, description="How new layouts go live.")
    auth: AuthSpec = Field(default_factory=AuthSpec, description="Client authentication and rate limits.")
    image: str = Field(
        DEFAULT_IMAGE,
        min_length=1,
        max_length=512,
        description="Data-plane image (shard server, router and index builder).",
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        "IfNotPresent", description="Pull policy for the data-plane image."
    )
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec, description="Container resources.")
    monitoring: MonitoringSpec = Field(default_factory=MonitoringSpec, description="Prometheus integration.")
    writes: WritesSpec = Field(
        default_factory=WritesSpec, description="Item writes between index versions (off by default)."
    )
    failover: FailoverSpec = Field(default_factory=FailoverSpec, description="Failover behaviour.")
    pod_templates: PodTemplatesSpec = Field(
        default_factory=PodTemplatesSpec,
        description="Scheduling, metadata, env and volume overrides of shard, router and build pods.",
    )
    paused: bool = Field(
        False,
        description=(
            "Freeze topology changes (builds, scaling, switches, deletions, drift correction); status "
            "keeps updating and failover goes on unless spec.failover.whilePaused is false."
        ),
    )
    delete_artifacts_on_delete: bool = Field(
        False, description="Remove the index artifacts from the store when this object is deleted."
    )


# --- status ----------------------------------------------------------------------------------

ConditionType = Literal["Ready", "Progressing", "Degraded", "FailoverDegraded", "CanaryRolledBack"]
Phase = Literal["Pending", "Building", "Rolling", "Ready", "Degraded", "Failed", "Paused"]
LayoutState = Literal["Building", "Starting", "Ready", "Serving", "Retiring", "Failed"]


class Condition(ApiModel):
    """A Kubernetes-style condition."""

    type: ConditionType = Field(
        description="Ready, Progressing, Degraded, FailoverDegraded or CanaryRolledBack."
    )
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(max_length=128, description="CamelCase reason for the last transition.")
    message: str = Field("", max_length=4096, description="Human-readable detail.")
    last_transition_time: str = Field(description="RFC 3339 time of the last status change.")
    observed_generation: int = Field(0, ge=0, description="Spec generation this condition describes.")


class ShardStatus(ApiModel):
    """Readiness of one shard of the serving layout."""

    shard: int = Field(ge=0, description="Shard number, 0-based.")
    ready_replicas: int = Field(ge=0, description="Replicas ready to serve.")
    replicas: int = Field(ge=0, description="Replicas asked for.")


class LayoutStatus(ApiModel):
    """One index layout (version x shards x partitioning) and where it is in its life."""

    name: str = Field(description="Layout id, used in child object names.")
    version: str = Field(description="Index version.")
    shards: int = Field(ge=1, description="Shard count.")
    state: LayoutState = Field(description="Building, Starting, Ready, Serving, Retiring or Failed.")
    ready_shards: int = Field(0, ge=0, description="Shards with at least one ready replica.")
    created_at: str = Field(description="When this layout was first planned (RFC 3339).")
    state_since: str = Field(description="When it entered its current state (RFC 3339).")
    message: str = Field("", max_length=4096, description="Why it is in this state.")
    deleting: bool = Field(
        False, description="Its deletion has been ordered; it goes once its objects are gone."
    )
    quality: LayoutQualityStatus | None = Field(
        None,
        description=(
            "Offline metrics its build recorded (kept here once seen, so they outlive the build "
            "Job); absent when the embeddings record none or the build has not finished."
        ),
    )


class LayoutQualityStatus(ApiModel):
    """A layout's offline metrics as its build recorded them (what `spec.index.qualityGate` judges)."""

    ndcg_at10: float = Field(ge=0, le=1, description="NDCG@10 of the model behind this layout.")
    hit_rate_at10: float | None = Field(None, ge=0, le=1, description="Hit rate@10, when recorded.")
    split: str = Field("", max_length=64, description="Where it was measured: test or validation.")


class StoredLayoutStatus(ApiModel):
    """A layout whose artifacts this cluster built into the index store (retention's input)."""

    name: str = Field(description="Layout id.")
    version: str = Field(description="Index version.")
    built_at: str = Field(description="When its build was first seen complete (RFC 3339).")
    deleting: bool = Field(False, description="Its artifacts are being deleted (garbage collection).")
    message: str = Field("", max_length=4096, description="Why it is kept or being deleted.")


class CarryStatus(ApiModel):
    """The carry of the item writes one layout logged into the layout that replaces it (on
    Kubernetes: a carrier Deployment per carrying layout). Kept while the carrying layout exists:
    a later carry from it folds in its carry folder (a chain v1 -> v2 -> v3), and a hand-over that
    fenced the old layout's leaders must be undone if the switch is abandoned."""

    layout: str = Field(description="Layout the writes are carried into.")
    from_layout: str = Field(description="Layout whose logged writes are carried.")
    phase: str = Field(
        "",
        max_length=64,
        description="What the carrier last reported (cutting, forwarding, handing-over, "
        "done, failed); empty before its first report.",
    )
    fenced: bool = Field(
        False,
        description="A hand-over fenced the old layout's leaders (they refuse writes), or was asked "
        "for and not answered yet (it may have), and no open request has undone it.",
    )
    done: bool = Field(
        False, description="The carrier finished: nothing more to forward from the old layout."
    )
    back: bool = Field(
        False,
        description="A carry back (a rollback): the layout is a kept layout the old one was carried "
        "from; its replicas take the old layout's whole logs, no cut, no build.",
    )
    message: str = Field("", max_length=4096, description="The carrier's last error, if any.")


class BlockedBy(ApiModel):
    """A named safety predicate that holds the rollout back."""

    predicate: str = Field(description="Name of the predicate.")
    reason: str = Field(description="Why it blocks.")


class TemplateRollStatus(ApiModel):
    """A pod-template change (image, resources, drain, annotations) rolling through the serving
    layout shard by shard, replica by replica."""

    layout: str = Field(description="Layout whose pods are being replaced.")
    shard: int = Field(ge=0, description="The one shard being rolled now.")
    updated_replicas: int = Field(0, ge=0, description="Ready replicas already on the new template.")
    replicas: int = Field(0, ge=0, description="Replicas the layout runs (shards x replicasPerShard).")
    surge: bool = Field(False, description="The shard runs one extra replica while its only one is replaced.")
    waiting_for: str = Field("", max_length=4096, description="The roll predicate holding the next step.")


class RouterReplicaStatus(ApiModel):
    """What one router reports serving."""

    name: str = Field(description="Router pod (or process) name.")
    ready: bool = Field(description="Clients reach it (Ready, in the Service).")
    layout: str = Field("", description="Layout it answers from; empty if it reports none.")
    revision: int = Field(-1, description="Topology revision it applied last.")
    prepared: str = Field("", description="Staged layout it has loaded, ready to switch to.")
    error: str = Field("", max_length=1024, description="Why it rejected the last topology, if it did.")


class RouterFleetStatus(ApiModel):
    """The routers, as they acknowledge the topology they serve."""

    ready_replicas: int = Field(0, ge=0, description="Routers clients reach.")
    serving_active: int = Field(0, ge=0, description="Ready routers serving the active layout.")
    lagging: list[str] = Field(
        default_factory=list, description="Ready routers not serving the layout last switched to."
    )
    lagging_since: str = Field("", description="Since when some router lags (RFC 3339); empty if none.")
    stalled: bool = Field(False, description="Some router has lagged longer than the switch deadline.")
    replicas: list[RouterReplicaStatus] = Field(default_factory=list, description="Each router's report.")


PlanChangeKind = Literal["create", "rebuild", "switch", "scale", "roll", "live", "none"]


class PlanPreviewStatus(ApiModel):
    """What applying the spec would do (`recctl plan`'s text), written while `spec.paused` is true
    or the `shardrec.io/plan-preview: "true"` annotation is set; nothing disruptive runs then."""

    generation: int = Field(0, ge=0, description="Spec generation this preview describes.")
    kind: PlanChangeKind = Field(
        "none",
        description=(
            "The kind of change: create, rebuild (a new layout), switch (to a layout kept running), "
            "scale, roll (pods replaced one at a time), live (efSearch) or none."
        ),
    )
    summary: str = Field("", max_length=1024, description="One line: what the change does.")
    disruptive: bool = Field(False, description="It builds a layout, or adds, removes or replaces pods.")
    breaks_availability: bool = Field(
        False, description="Some risk of the change can make requests fail (see text)."
    )
    text: str = Field("", max_length=16384, description="The whole preview, as `recctl plan` prints it.")


CanaryPhase = Literal["Running", "Promoted", "RolledBack", "Aborted"]


class CanaryAnalysisStatus(ApiModel):
    """What the routers measured for one canary step (summed over routers)."""

    requests: int = Field(0, ge=0, description="Candidate answers counted (shadow: mirrored answers).")
    compared: int = Field(0, ge=0, description="Answers compared with the active layout's.")
    overlap_at10: float | None = Field(None, description="Mean top-10 overlap with the active layout.")
    rank_correlation: float | None = Field(
        None, description="Mean Spearman correlation of the shared items' ranks."
    )
    score_shift: float | None = Field(
        None, description="Mean absolute difference of the top scores (candidate - active)."
    )
    candidate_p99_ms: float | None = Field(None, description="Candidate p99 latency (ms).")
    active_p99_ms: float | None = Field(None, description="Active layout p99 latency (ms).")
    candidate_error_rate: float | None = Field(None, description="Candidate error rate.")
    active_error_rate: float | None = Field(None, description="Active layout error rate.")
    unknown_user_share: float | None = Field(
        None, description="Share of user queries the candidate did not know the user of."
    )
    shadow_dropped: int = Field(0, ge=0, description="Mirrored requests dropped over the in-flight budget.")


class CanaryStatus(ApiModel):
    """Where the canary of the target layout stands; the state machine's memory (restart-safe)."""

    layout: str = Field(description="Candidate layout.")
    version: str = Field("", description="Candidate index version.")
    active_layout: str = Field("", description="Layout it is compared with.")
    phase: CanaryPhase = Field(description="Running, Promoted, RolledBack or Aborted.")
    step: int = Field(0, ge=0, description="Current step, 0-based (the last when finished).")
    steps: int = Field(1, ge=1, description="Number of steps.")
    step_started_at: str = Field(description="When the current step began (RFC 3339).")
    weight: int = Field(0, ge=0, le=100, description="Percent of users the candidate answers now.")
    shadow_sample_rate: float = Field(0.0, ge=0, le=1, description="Share of queries mirrored now.")
    analysis: CanaryAnalysisStatus | None = Field(None, description="The current step's measurements.")
    passed_steps: list[CanaryAnalysisStatus] = Field(
        default_factory=list,
        max_length=16,
        description=(
            "The measurements each passed step passed with, in step order (the current step's are in "
            "analysis)."
        ),
    )
    message: str = Field("", max_length=4096, description="Why it is where it is.")
    ignored_command: str = Field(
        "",
        max_length=64,
        description="A canary-command annotation already present when this canary started (not applied).",
    )
    finished_at: str = Field("", description="When it was promoted, rolled back or aborted (RFC 3339).")


class RecommenderClusterStatus(ApiModel):
    """Observed state, computed by a pure function and written once per reconcile."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    phase: Phase = Field("Pending", description="Summary of where the cluster is.")
    observed_generation: int = Field(0, ge=0, description="Last spec generation acted on.")
    active_version: str = Field("", description="Index version the router serves.")
    target_version: str = Field("", description="Index version the spec asks for.")
    active_layout: str = Field("", description="Layout the router serves.")
    target_layout: str = Field("", description="Layout the spec asks for.")
    layouts: list[LayoutStatus] = Field(default_factory=list, description="Layouts that exist.")
    shards: list[ShardStatus] = Field(
        default_factory=list, description="Readiness per shard of the serving layout."
    )
    stored_layouts: list[StoredLayoutStatus] = Field(
        default_factory=list,
        description=(
            "Layouts whose artifacts this cluster built into the store, newest first: what "
            "retention (spec.index.store.retention) chooses from."
        ),
    )
    ready_replicas: int = Field(0, ge=0, description="Ready shard replicas in the serving layout.")
    replicas: int = Field(0, ge=0, description="Shard replicas the serving layout should have.")
    replicas_per_shard: int = Field(
        0,
        ge=0,
        description=(
            "Replicas per shard the serving layout runs now (the fewest over its shards): the "
            "current count of the scale subresource (`kubectl scale`, HorizontalPodAutoscaler)."
        ),
    )
    selector: str = Field(
        "",
        max_length=1024,
        description=(
            "Label selector of the serving layout's shard pods, in query form: the pods a "
            "HorizontalPodAutoscaler averages its metrics over (scale subresource labelSelectorPath)."
        ),
    )
    router_endpoint: str = Field("", description="URL clients call.")
    topology_revision: int = Field(
        0, ge=0, description="Revision of the last topology written; the next write continues from it."
    )
    topology_epoch: int = Field(0, ge=0, description="Epoch of the last topology written.")
    routers: RouterFleetStatus = Field(
        default_factory=RouterFleetStatus, description="What each router acknowledges serving."
    )
    blocked_by: list[BlockedBy] = Field(
        default_factory=list, description="Safety predicates currently holding the rollout."
    )
    template_roll: TemplateRollStatus | None = Field(
        None, description="A pod-template roll under way; absent when every pod runs the current template."
    )
    plan_preview: PlanPreviewStatus | None = Field(
        None,
        description=(
            "What applying the spec would do, while spec.paused is true or the shardrec.io/plan-preview "
            'annotation is "true"; absent otherwise.'
        ),
    )
    canary: CanaryStatus | None = Field(
        None, description="The canary of the target layout (rollout.strategy Canary); absent otherwise."
    )
    carries: list[CarryStatus] = Field(
        default_factory=list,
        description="Carries of logged item writes into a new layout, or back into a kept one "
        "(spec.writes.enabled), while the layout carried into still exists.",
    )
    conditions: list[Condition] = Field(
        default_factory=list, description="Ready, Progressing, Degraded, FailoverDegraded."
    )


class ObjectMeta(BaseModel):
    """The parts of metadata this project reads."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    name: str
    namespace: str = "default"
    generation: int = 0
    uid: str = ""


class RecommenderCluster(BaseModel):
    """A whole object as stored by the API server or written in a local YAML file."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    api_version: Literal["shardrec.io/v1alpha1"] = Field(API_VERSION, alias="apiVersion")
    kind: Literal["RecommenderCluster"] = KIND
    metadata: ObjectMeta
    spec: RecommenderClusterSpec
    status: RecommenderClusterStatus | None = None
