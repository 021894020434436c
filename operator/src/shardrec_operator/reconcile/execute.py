"""Execute: turn the planner's actions into applies and deletes, in the order given.

Each action maps onto builders plus the one generic applier:
- EnsureBuild  -> the layout's build Job (created once; a Job failed under an older attempt is
                  deleted so the new attempt can start);
- EnsureShards -> per shard: headless Service, StatefulSet (the action's replica count for that
                  shard, OnDelete), PDB;
- ReplaceShardPod -> delete that pod (by the uid observed), so its StatefulSet recreates it
                  from the current template: one step of a template roll;
- StageRouter, SwitchRouter, RouteCanary -> the topology ConfigMap (`reconcile.publish_topology`,
                  after the other actions);
- RetireLayout -> drop the retired layout's PDBs: it no longer serves, so it must not hold up
                  a node drain; its pods keep running for instant rollback;
- DeleteLayout -> delete the layout's Job, StatefulSets, Services and PDBs;
- DeleteArtifacts -> the layout's garbage-collection Job (`recctl index delete`), created once;
- EnsureCarrier -> the carrier's ConfigMap and Deployment (`desired.carry`), its requests as
                  annotations on the Deployment, applied as everything else;
- DeleteCarrier -> delete the carrier's Deployment and ConfigMap.
A layout no action names is left exactly as it is.
"""

from __future__ import annotations

import secrets

from shardrec.planning import (
    Action,
    DeleteArtifacts,
    DeleteCarrier,
    DeleteLayout,
    EnsureBuild,
    EnsureCarrier,
    EnsureShards,
    RecordEvent,
    ReplaceShardPod,
    RetireLayout,
    RouteCanary,
    StageRouter,
    SwitchRouter,
)
from shardrec_operator.desired import names, shard_tls, shard_token
from shardrec_operator.desired.carry import (
    CarrierRequests,
    build_carrier_configmap,
    build_carrier_deployment,
    carrier_config,
)
from shardrec_operator.desired.cluster import build_cluster_objects
from shardrec_operator.desired.index_build import build_artifact_gc_job, build_index_job
from shardrec_operator.desired.shard import build_shard_pdb, build_shard_service, build_shard_statefulset
from shardrec_operator.reconcile import resources as kinds
from shardrec_operator.reconcile.cluster_api import NotFoundError
from shardrec_operator.reconcile.observe import build_of
from shardrec_operator.reconcile.resources import resource_of
from shardrec_operator.reconcile.session import Session

_OPTIONAL_KINDS = {(kinds.SERVICE_MONITOR.api_version, kinds.SERVICE_MONITOR.kind)}


def ensure_shard_token(session: Session) -> float | None:
    """The cluster's shard-token Secret, one rotation step at a time; returns when the next step
    is due. Read by name with GET (the operator may not list Secrets), written by the one apply."""
    cluster = session.cluster
    name = names.shard_token_secret(cluster.metadata.name)
    observed = session.api.get(kinds.SECRET, cluster.metadata.namespace, name)
    decision = shard_token.next_token_state(
        shard_token.token_state_of(observed),
        shard_token.rotation_request(cluster),
        session.now,
        new_token,
    )
    session.apply(shard_token.build_shard_token_secret(cluster, decision.state), observed=observed)
    return decision.recheck_after_seconds


def ensure_shard_tls(session: Session) -> float:
    """The cluster's CA and shard certificate, issued or renewed as `renewal_needed` says; returns
    the seconds until the next renewal is due."""
    cluster = session.cluster
    observed = session.api.get(
        kinds.SECRET, cluster.metadata.namespace, names.shard_tls_secret(cluster.metadata.name)
    )
    material = shard_tls.tls_material_of(observed)
    name = shard_tls.server_name(cluster)
    renewal = shard_tls.renewal_needed(material, name, session.now)
    material = shard_tls.renewed(material, renewal, name, session.now)
    if renewal != "none":
        session.event("Normal", "CertificateIssued", f"shard certificate for {name} ({renewal})")
    session.apply(shard_tls.build_shard_tls_secret(cluster, material), observed=observed)
    return shard_tls.recheck_after_seconds(material, session.now)


def new_token() -> str:
    return secrets.token_hex(32)


def apply_cluster_objects(session: Session) -> None:
    """Identities, RBAC, NetworkPolicy and the router; remove optional ones the spec turned off."""
    wanted: set[tuple[str, str]] = set()
    # Carriers' identity and their way to the shards while writes are on, and as long as one runs
    # (writes turned off mid-carry: it still finishes).
    carriers = session.cluster.spec.writes.enabled or bool(session.children.carrier_deployments())
    for manifest in build_cluster_objects(session.cluster, carriers=carriers):
        kind = resource_of(manifest)
        wanted.add((kind.kind, manifest["metadata"]["name"]))
        try:
            session.apply(manifest, observed=session.children.get(kind, manifest["metadata"]["name"]))
        except NotFoundError:
            if (kind.api_version, kind.kind) not in _OPTIONAL_KINDS:
                raise
            session.warn_once(
                "ServiceMonitorUnavailable",
                "spec.monitoring.serviceMonitor is true but the monitoring.coreos.com/v1 ServiceMonitor "
                "kind does not exist in this cluster (install the Prometheus Operator CRDs)",
            )
    for kind in (kinds.HPA, kinds.SERVICE_MONITOR):
        for obj in session.children.of_kind(kind):
            if (kind.kind, obj["metadata"]["name"]) not in wanted:
                session.delete(kind, obj)


def ensure_build(session: Session, action: EnsureBuild) -> None:
    name = names.build_job(session.cluster.metadata.name, action.layout_id)
    job = session.children.get(kinds.JOB, name)
    if job is not None:
        existing = build_of(job)
        if existing.attempt == action.attempt or existing.state != "Failed":
            return  # this attempt's Job exists (Jobs are immutable: never re-applied)
        session.delete(kinds.JOB, job)  # an older attempt failed: make room for this one
    gc_job = session.children.get(
        kinds.JOB, names.artifact_gc_job(session.cluster.metadata.name, action.layout_id)
    )
    if gc_job is not None and build_of(gc_job).state in ("Succeeded", "Failed"):
        # The artifacts were deleted earlier (the predicate holds builds while a deletion runs);
        # forget that Job so it cannot be mistaken for the deletion of the layout built now.
        session.delete(kinds.JOB, gc_job)
    carried = action.carry_from is not None
    session.apply(
        build_index_job(session.cluster, action.layout, action.attempt, carried=carried), observed=None
    )


def ensure_shards(session: Session, action: EnsureShards) -> None:
    cluster = session.cluster
    for shard in range(action.layout.shards):
        name = names.shard_set(cluster.metadata.name, action.layout_id, shard)
        # TLS as the StatefulSet was created with (new ones: on), so no upgrade flips a running shard.
        tls = shard_tls.statefulset_serves_tls(session.children.get(kinds.STATEFUL_SET, name))
        builds = (
            (kinds.SERVICE, build_shard_service(cluster, action.layout, shard, tls=tls)),
            (
                kinds.STATEFUL_SET,
                build_shard_statefulset(cluster, action.layout, shard, action.replicas_of(shard), tls=tls),
            ),
            (kinds.PDB, build_shard_pdb(cluster, action.layout, shard)),
        )
        for kind, manifest in builds:
            session.apply(manifest, observed=session.children.get(kind, name))


def replace_shard_pod(session: Session, action: ReplaceShardPod) -> None:
    pod = session.children.get(kinds.POD, action.pod)
    if pod is None or pod["metadata"].get("deletionTimestamp"):
        return  # gone or going already: nothing to repeat
    session.delete(kinds.POD, pod)  # guarded by the observed uid: never a pod recreated meanwhile
    session.event("Normal", "ReplacingPod", f"shard {action.shard}: {action.reason}")


def retire_layout(session: Session, action: RetireLayout) -> None:
    for obj in session.children.of_layout(action.layout_id):
        if obj["kind"] == kinds.PDB.kind:
            session.delete(kinds.PDB, obj)


def delete_layout(session: Session, action: DeleteLayout) -> None:
    for obj in session.children.of_layout(action.layout_id):
        session.delete(resource_of(obj), obj)


def delete_artifacts(session: Session, action: DeleteArtifacts) -> None:
    cluster = session.cluster
    if (
        session.children.get(kinds.JOB, names.artifact_gc_job(cluster.metadata.name, action.layout_id))
        is None
    ):
        session.apply(build_artifact_gc_job(cluster, action.layout_id, action.version), observed=None)


def ensure_carrier(session: Session, action: EnsureCarrier) -> None:
    cluster = session.cluster
    name = cluster.metadata.name
    # The scheme each layout's shards serve, as their StatefulSets were created (new ones: TLS).
    source_tls = shard_tls.statefulset_serves_tls(
        session.children.get(kinds.STATEFUL_SET, names.shard_set(name, action.source.id, 0))
    )
    layout_tls = shard_tls.statefulset_serves_tls(
        session.children.get(kinds.STATEFUL_SET, names.shard_set(name, action.layout_id, 0))
    )
    config = carrier_config(
        cluster,
        action.layout,
        action.source,
        replicas=cluster.spec.replicas_per_shard,
        source_tls=source_tls,
        layout_tls=layout_tls,
        prior=action.prior,
        back=action.back,
    )
    requests = CarrierRequests(hand_over=action.hand_over, open=action.open, finish=action.finish)
    carrier = names.carrier(name, action.layout_id)
    session.apply(
        build_carrier_configmap(cluster, action.layout, config),
        observed=session.children.get(kinds.CONFIG_MAP, carrier),
    )
    session.apply(
        build_carrier_deployment(cluster, action.layout, action.source, config, requests),
        observed=session.children.get(kinds.DEPLOYMENT, carrier),
    )


def delete_carrier(session: Session, action: DeleteCarrier) -> None:
    carrier = names.carrier(session.cluster.metadata.name, action.layout_id)
    for kind in (kinds.DEPLOYMENT, kinds.CONFIG_MAP):
        obj = session.children.get(kind, carrier)
        if obj is not None:
            session.delete(kind, obj)


def execute_action(session: Session, action: Action) -> None:
    """One action; StageRouter, SwitchRouter, RouteCanary and RecordEvent are handled by the caller."""
    if isinstance(action, EnsureBuild):
        ensure_build(session, action)
    elif isinstance(action, EnsureShards):
        ensure_shards(session, action)
    elif isinstance(action, ReplaceShardPod):
        replace_shard_pod(session, action)
    elif isinstance(action, RetireLayout):
        retire_layout(session, action)
    elif isinstance(action, DeleteLayout):
        delete_layout(session, action)
    elif isinstance(action, DeleteArtifacts):
        delete_artifacts(session, action)
    elif isinstance(action, EnsureCarrier):
        ensure_carrier(session, action)
    elif isinstance(action, DeleteCarrier):
        delete_carrier(session, action)
    elif not isinstance(action, StageRouter | SwitchRouter | RouteCanary | RecordEvent):  # pragma: no cover
        raise TypeError(f"unknown planner action {action!r}")
