"""The carry of item writes on Kubernetes: what the operator tells a carrier and what it reports.

One carrier process (`python -m shardrec.serving.carry`, a Deployment of one pod per carrying
layout) carries the writes logged by the serving layout into the layout that replaces it: the
cut (a carry folder on the index store, which the new layout's build folds in), the forwarding
of every later write, and the hand-over right before the router switch (fence the old leaders,
forward the rest). The operator writes a `CarrierConfig` into the carrier's ConfigMap, asks for
the hand-over, the opening of fenced leaders and the finish through annotations on the carrier
Deployment, and reads the carrier's `CarryProgress` from its pod's annotation, the way it reads
`shardrec.io/router-serving` from router pods (docs/operator.md, "Item writes"). Both sides
import this module, so they cannot drift apart.

JSON keys are snake_case (as the models' field names). Both models forbid unknown keys, as the
topology does: a reader never silently drops something a newer writer meant.
"""

from __future__ import annotations

from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

CARRY_PROGRESS_ANNOTATION: Final = "shardrec.io/carry-progress"
"""On the carrier's own pod: its `CarryProgress` as JSON (the carrier patches it)."""
HAND_OVER_REQUESTED_ANNOTATION: Final = "shardrec.io/carry-hand-over-requested"
"""On the carrier Deployment: a request id; the carrier fences the old leaders, forwards the rest
and reports `handed_over` (or `hand_over_failed`) with that id."""
OPEN_REQUESTED_ANNOTATION: Final = "shardrec.io/carry-open-requested"
"""On the carrier Deployment: a request id; the carrier opens the old leaders again (an abandoned
switch) and reports `opened` with that id."""
FINISH_REQUESTED_ANNOTATION: Final = "shardrec.io/carry-finish-requested"
"""On the carrier Deployment: a request id, set once every router serves the new layout; the
carrier runs one more pass and, when it found nothing new, reports `done`."""

CARRY_CONFIG_KEY: Final = "carry.json"
"""The key of the carrier ConfigMap holding the `CarrierConfig`."""
CARRY_CONFIG_MOUNT: Final = "/etc/shardrec/carry"
CARRY_CONFIG_PATH: Final = f"{CARRY_CONFIG_MOUNT}/{CARRY_CONFIG_KEY}"
CARRIER_MODULE: Final = "shardrec.serving.carry"
"""`python -m shardrec.serving.carry --config CARRY_CONFIG_PATH` runs a carrier."""

CARRY_FOLDERS: Final = "carry"
"""Under a cluster's folder on the index store: `carry/<layout>`, the carry folder of a carrying
layout (what its build folds in, and its carrier's progress)."""
CARRY_BACK_FOLDERS: Final = "carry-back"
"""Under a cluster's folder on the index store: `carry-back/<to>/<from>`, the progress of a carry
back into the kept layout `<to>` from `<from>`."""

CarryPhase = Literal["cutting", "forwarding", "handing-over", "done", "failed"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CarrierConfig(_Model):
    """What one carrier carries: from the layout that logs the writes to the layout that will
    serve next, and how to reach both layouts' shards and the index store."""

    cluster: str = Field(min_length=1, description="The RecommenderCluster's name.")
    from_layout: str = Field(min_length=1, description="Layout whose leaders' write logs are carried.")
    from_shards: int = Field(ge=1)
    to_layout: str = Field(min_length=1, description="Layout the writes are carried into.")
    to_shards: int = Field(ge=1)
    old_leaders: list[str] = Field(
        description="Base URL of replica 0 (the leader) of each old shard, by shard number."
    )
    new_replicas: list[list[str]] = Field(
        description="Base URLs of every replica of each new shard, by shard number, replica 0 first."
    )
    carry_store: str = Field(
        min_length=1,
        description="The new layout's carry folder on the index store: a path on the store claim "
        "(mounted as the build Jobs mount it) or an s3:// location.",
    )
    prior_carry: str | None = Field(
        None,
        description="The old layout's own carry folder (it was itself built with a carry): folded in "
        "first, so a chain v1 -> v2 -> v3 keeps v1's writes; None when the old layout carried nothing.",
    )
    token_file: str = Field(min_length=1, description="The shard token the carrier sends (`send` key).")
    ca_file: str | None = Field(
        None, description="CA bundle that signs the shards' certificates; None: plain HTTP."
    )
    tls_name: str | None = Field(
        None, description="Name to verify shard certificates against (they name one DNS name per cluster)."
    )
    deployment: str = Field(
        min_length=1, description="The carrier's Deployment, whose annotations carry the operator's requests."
    )
    poll_seconds: float = Field(2.0, gt=0, description="Pause between two forwarding passes.")
    back: bool = Field(
        False,
        description="A carry back (a rollback): `to_layout` is a kept layout `from_layout` was carried "
        "from, whose replicas still run. No cut and no prior carry: the carrier opens the new leaders, "
        "forwards the old logs from their first record and keeps its progress in `carry_store` "
        "(`carry-back/<to>/<from>` on the store). Left out of the JSON when false (`config_json`), so "
        "a forward carrier's config reads as before.",
    )

    @model_serializer(mode="wrap")
    def _back_only_when_true(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Forward carriers' ConfigMaps (and the config hash that restarts their pods) stay
        # byte-identical to those written before carry backs existed.
        data: dict[str, Any] = handler(self)
        if not self.back:
            data.pop("back", None)
        return data


class CarryProgress(_Model):
    """What a carrier reports on its pod (`CARRY_PROGRESS_ANNOTATION`)."""

    to_layout: str
    from_layout: str
    phase: CarryPhase
    cut: list[int] | None = Field(
        None, description="The cut, a sequence per old shard, once the carry folder exists on the store."
    )
    after: list[int] = Field(default_factory=list, description="Last sequence forwarded, per old shard.")
    caught_up: bool = Field(False, description="A pass forwarded everything the old leaders named.")
    forwarded: int = Field(0, ge=0, description="Records forwarded so far.")
    handed_over: str | None = Field(None, description="The hand-over request id that succeeded.")
    hand_over_failed: str | None = Field(None, description="The hand-over request id that failed.")
    opened: str | None = Field(None, description="The open request id carried out.")
    done: bool = Field(False, description="The finish pass found nothing new; the carrier idles.")
    message: str = Field("", max_length=4096, description="The last error, or ''.")
    at: str = Field("", description="When this report was written (RFC 3339).")


__all__ = [
    "CARRIER_MODULE",
    "CARRY_CONFIG_KEY",
    "CARRY_CONFIG_MOUNT",
    "CARRY_CONFIG_PATH",
    "CARRY_PROGRESS_ANNOTATION",
    "FINISH_REQUESTED_ANNOTATION",
    "HAND_OVER_REQUESTED_ANNOTATION",
    "OPEN_REQUESTED_ANNOTATION",
    "CarrierConfig",
    "CarryPhase",
    "CarryProgress",
]
