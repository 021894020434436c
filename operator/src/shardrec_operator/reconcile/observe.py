"""Observe: read a cluster's children from the API and translate them into the planner's `Observed`.

Children are found by label (`shardrec.io/cluster` + `managed-by`), one LIST per kind, straight
from the API server. A layout is whatever carries a `shardrec.io/layout-spec` annotation (build
Jobs and shard StatefulSets); its readiness comes from the shard pods themselves (Ready
condition, by ordinal), which is fresher than a StatefulSet's status and lets the planner prove
that a scale-down keeps a ready replica.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime

from pydantic import ValidationError

from shardrec.api import v1alpha1 as api
from shardrec.api.canary import CanaryStats
from shardrec.api.carry import (
    CARRY_PROGRESS_ANNOTATION,
    FINISH_REQUESTED_ANNOTATION,
    HAND_OVER_REQUESTED_ANNOTATION,
    OPEN_REQUESTED_ANNOTATION,
    CarryProgress,
)
from shardrec.api.commands import reported_quality
from shardrec.api.topology import ROUTER_SERVING_ANNOTATION, TOPOLOGY_CONFIGMAP_KEY, RouterServing, Topology
from shardrec.planning import (
    BuildState,
    LayoutSpec,
    Observed,
    ObservedBuild,
    ObservedCarrier,
    ObservedLayout,
    ObservedPod,
    ObservedRouter,
    ObservedShard,
    OfflineQuality,
    RouterObservation,
)
from shardrec.planning.fleet import confirmed_layout
from shardrec.planning.timestamps import parse_time
from shardrec_operator.desired import labels, names
from shardrec_operator.desired.router import router_endpoint
from shardrec_operator.reconcile import resources as kinds
from shardrec_operator.reconcile.apply import controller_uid
from shardrec_operator.reconcile.cluster_api import ClusterApi, NotFoundError, Obj
from shardrec_operator.reconcile.expectations import Expectations
from shardrec_operator.reconcile.failover import pod_is_ready

log = logging.getLogger(__name__)

LISTED_KINDS = (
    kinds.SERVICE_ACCOUNT,
    kinds.ROLE,
    kinds.ROLE_BINDING,
    kinds.NETWORK_POLICY,
    kinds.CONFIG_MAP,
    kinds.SERVICE,
    kinds.DEPLOYMENT,
    kinds.HPA,
    kinds.JOB,
    kinds.STATEFUL_SET,
    kinds.PDB,
    kinds.POD,
)
OPTIONAL_KINDS = (kinds.SERVICE_MONITOR,)
"""Kinds whose CRD may be absent: a 404 on the collection means none exist."""


@dataclass
class Children:
    """Every child of one cluster as listed at the start of a pass, by kind and name."""

    objects: dict[tuple[str, str], Obj] = field(default_factory=dict)

    def get(self, kind: kinds.Resource, name: str) -> Obj | None:
        return self.objects.get((kind.kind, name))

    def of_kind(self, kind: kinds.Resource) -> list[Obj]:
        return [obj for (k, _), obj in sorted(self.objects.items()) if k == kind.kind]

    def of_layout(self, layout_id: str) -> list[Obj]:
        """The objects of a layout (Jobs, StatefulSets, Services, PDBs), pods excluded."""
        return [
            obj
            for (kind, _), obj in sorted(self.objects.items())
            if kind != kinds.POD.kind and _labels(obj).get(labels.LAYOUT) == layout_id
        ]

    def shard_pods(self) -> list[Obj]:
        return [pod for pod in self.of_kind(kinds.POD) if _labels(pod).get(labels.COMPONENT) == "shard"]

    def build_pods(self) -> list[Obj]:
        return [pod for pod in self.of_kind(kinds.POD) if _labels(pod).get(labels.COMPONENT) == "index-build"]

    def router_pods(self) -> list[Obj]:
        return [pod for pod in self.of_kind(kinds.POD) if _labels(pod).get(labels.COMPONENT) == "router"]

    def carrier_deployments(self) -> list[Obj]:
        return [
            obj for obj in self.of_kind(kinds.DEPLOYMENT) if _labels(obj).get(labels.COMPONENT) == "carrier"
        ]

    def carrier_pods(self) -> list[Obj]:
        return [pod for pod in self.of_kind(kinds.POD) if _labels(pod).get(labels.COMPONENT) == "carrier"]


def _labels(obj: Obj) -> dict[str, str]:
    return obj.get("metadata", {}).get("labels") or {}


def _annotations(obj: Obj) -> dict[str, str]:
    return obj.get("metadata", {}).get("annotations") or {}


def list_children(api_client: ClusterApi, cluster: api.RecommenderCluster) -> Children:
    """Every child this cluster controls. Objects that merely carry its labels (a leftover of a
    deleted cluster of the same name, a copy) are not children: never planned on or deleted.
    Pods are controlled by their StatefulSet or Job, so for them the labels suffice."""
    namespace = cluster.metadata.namespace
    selector = labels.owned_selector(cluster.metadata.name)
    children = Children()
    for kind in LISTED_KINDS + OPTIONAL_KINDS:
        try:
            items = api_client.list(kind, namespace, selector)
        except NotFoundError:
            if kind not in OPTIONAL_KINDS:
                raise
            items = []
        for obj in items:
            if kind is kinds.POD or controller_uid(obj) == cluster.metadata.uid:
                children.objects[(kind.kind, obj["metadata"]["name"])] = obj
    return children


def stored_topology(children: Children, cluster_name: str) -> Topology | None:
    """The topology in the ConfigMap the router watches; None when absent or unreadable."""
    configmap = children.get(kinds.CONFIG_MAP, names.topology(cluster_name))
    if configmap is None:
        return None
    text = (configmap.get("data") or {}).get(TOPOLOGY_CONFIGMAP_KEY)
    if text is None:
        return None
    try:
        return Topology.model_validate_json(text)
    except ValidationError as error:
        log.warning("Ignored unreadable topology in ConfigMap %s: %s", names.topology(cluster_name), error)
        return None


def layout_spec_of(obj: Obj) -> LayoutSpec | None:
    text = _annotations(obj).get(labels.LAYOUT_SPEC_ANNOTATION)
    if text is None:
        return None
    try:
        return LayoutSpec.from_json(text)
    except ValueError as error:
        log.warning("Ignored %s %s: bad layout annotation: %s", obj["kind"], obj["metadata"]["name"], error)
        return None


def true_condition(obj: Obj, type_: str) -> Obj | None:
    """The condition `type_` of an object's status when it is True, else None."""
    for condition in obj.get("status", {}).get("conditions") or []:
        if condition.get("type") == type_ and condition.get("status") == "True":
            return dict(condition)
    return None


def build_quality(pods: list[Obj], layout_id: str) -> OfflineQuality | None:
    """The offline metrics a build pod of `layout_id` reported in its termination message
    (`recctl index build --report-file`): the first successful build container that reported
    any. Of an Indexed Job only the pod that published (or found the layout built) reports."""
    for pod in pods:
        if _labels(pod).get(labels.LAYOUT) != layout_id:
            continue
        for container in (pod.get("status") or {}).get("containerStatuses") or []:
            terminated = (container.get("state") or {}).get("terminated") or {}
            if terminated.get("exitCode") != 0 or not terminated.get("message"):
                continue
            quality = OfflineQuality.from_record(reported_quality(str(terminated["message"]), layout_id))
            if quality is not None:
                return quality
    return None


def build_of(job: Obj | None, pods: list[Obj] | None = None) -> ObservedBuild:
    """A build Job as the planner sees it; Complete means `recctl` published a verified layout
    (whose offline metrics, if any, its pods reported: `build_quality`)."""
    if job is None:
        return ObservedBuild()
    attempt = _annotations(job).get(labels.BUILD_ATTEMPT_ANNOTATION)
    state: BuildState = "Running"
    message = ""
    quality = None
    if true_condition(job, "Complete") is not None:
        state = "Succeeded"
        layout_id = _labels(job).get(labels.LAYOUT, "")
        quality = build_quality(pods or [], layout_id) if layout_id else None
    else:
        failed = true_condition(job, "Failed")
        if failed is not None:
            state = "Failed"
            message = f"index build Job {job['metadata']['name']} failed: {failed.get('reason', '')}: "
            message += str(failed.get("message", ""))
    return ObservedBuild(state=state, message=message, attempt=attempt, quality=quality)


def pod_ordinal(pod: Obj) -> int | None:
    suffix = pod["metadata"]["name"].rsplit("-", 1)[-1]
    return int(suffix) if suffix.isdigit() else None


def _ready_ordinals(children: Children) -> dict[tuple[str, int], set[int]]:
    ready: dict[tuple[str, int], set[int]] = defaultdict(set)
    for pod in children.shard_pods():
        pod_labels = _labels(pod)
        ordinal = pod_ordinal(pod)
        shard = pod_labels.get(labels.SHARD, "")
        if ordinal is None or not shard.isdigit() or not pod_is_ready(pod):
            continue
        ready[(pod_labels.get(labels.LAYOUT, ""), int(shard))].add(ordinal)
    return ready


REVISION_LABEL = "controller-revision-hash"
"""The label the StatefulSet controller puts on each pod: the revision of the template it runs."""


def _shard_pods(children: Children) -> dict[tuple[str, int], list[Obj]]:
    pods: dict[tuple[str, int], list[Obj]] = defaultdict(list)
    for pod in children.shard_pods():
        pod_labels = _labels(pod)
        shard = pod_labels.get(labels.SHARD, "")
        if pod_ordinal(pod) is not None and shard.isdigit():
            pods[(pod_labels.get(labels.LAYOUT, ""), int(shard))].append(pod)
    return pods


def template_settled(statefulset: Obj) -> bool:
    """Whether the StatefulSet controller has observed the latest spec (so its updateRevision is current)."""
    status = statefulset.get("status") or {}
    generation = int(statefulset.get("metadata", {}).get("generation") or 0)
    return bool(status.get("updateRevision")) and int(status.get("observedGeneration") or 0) >= generation


def observed_pods(statefulset: Obj, pods: list[Obj]) -> tuple[ObservedPod, ...]:
    """The shard's pods with their template revision against the StatefulSet's updateRevision."""
    update = (statefulset.get("status") or {}).get("updateRevision")
    found = []
    for pod in pods:
        ordinal = pod_ordinal(pod)
        assert ordinal is not None  # _shard_pods keeps only ordinal-named pods
        found.append(
            ObservedPod(
                name=pod["metadata"]["name"],
                ordinal=ordinal,
                ready=pod_is_ready(pod),
                updated=update is not None and _labels(pod).get(REVISION_LABEL) == update,
                terminating=bool(pod["metadata"].get("deletionTimestamp")),
                ready_since=ready_since(pod),
            )
        )
    return tuple(sorted(found, key=lambda pod: pod.ordinal))


def ready_since(pod: Obj) -> datetime | None:
    """When the pod's Ready condition last turned True (None when it is not Ready or the time is
    missing or malformed: then the planner does not wait on it)."""
    if not pod_is_ready(pod):
        return None
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready" and condition.get("lastTransitionTime"):
            try:
                return parse_time(str(condition["lastTransitionTime"]))
            except ValueError:
                return None
    return None


def observed_layouts(children: Children) -> tuple[ObservedLayout, ...]:
    specs: dict[str, LayoutSpec] = {}
    jobs: dict[str, Obj] = {}
    sets: dict[str, list[Obj]] = defaultdict(list)
    for job in children.of_kind(kinds.JOB):
        spec = layout_spec_of(job)
        if spec is not None and _labels(job).get(labels.COMPONENT) == "index-build":
            specs[spec.id] = spec
            jobs[spec.id] = job
    for statefulset in children.of_kind(kinds.STATEFUL_SET):
        spec = layout_spec_of(statefulset)
        if spec is not None:
            specs.setdefault(spec.id, spec)
            sets[spec.id].append(statefulset)
    ready = _ready_ordinals(children)
    pods = _shard_pods(children)
    layouts = []
    for layout_id, spec in sorted(specs.items()):
        shards = []
        for statefulset in sets[layout_id]:
            shard = _labels(statefulset).get(labels.SHARD, "")
            if not shard.isdigit():
                continue
            ordinals = ready.get((layout_id, int(shard)), set())
            shards.append(
                ObservedShard(
                    shard=int(shard),
                    desired_replicas=int(statefulset.get("spec", {}).get("replicas", 0)),
                    ready_replicas=len(ordinals),
                    ready_ordinals=frozenset(ordinals),
                    pods=observed_pods(statefulset, pods.get((layout_id, int(shard)), [])),
                    template_settled=template_settled(statefulset),
                )
            )
        shards.sort(key=lambda entry: entry.shard)
        build = build_of(jobs.get(layout_id), children.build_pods())
        layouts.append(ObservedLayout(spec=spec, build=build, shards=tuple(shards)))
    return tuple(layouts)


def artifact_deletions(children: Children) -> dict[str, BuildState]:
    """The garbage-collection Jobs (one per layout whose artifacts are being deleted), by layout:
    Running, Succeeded (the artifacts are gone) or Failed."""
    deletions: dict[str, BuildState] = {}
    for job in children.of_kind(kinds.JOB):
        job_labels = _labels(job)
        layout_id = job_labels.get(labels.LAYOUT)
        if job_labels.get(labels.COMPONENT) == "artifact-gc" and layout_id:
            deletions[layout_id] = build_of(job).state
    return deletions


def router_observations(children: Children) -> tuple[RouterObservation, ...]:
    """Every router pod: Ready (in the Service) and what it reports in its annotation. A pod being
    deleted no longer receives clients and is left out."""
    routers = []
    for pod in children.router_pods():
        if pod["metadata"].get("deletionTimestamp"):
            continue
        text = _annotations(pod).get(ROUTER_SERVING_ANNOTATION)
        serving = None
        if text is not None:
            try:
                serving = RouterServing.model_validate_json(text)
            except ValidationError as error:
                log.warning(
                    "Ignored router pod %s: bad %s: %s",
                    pod["metadata"]["name"],
                    ROUTER_SERVING_ANNOTATION,
                    error,
                )
        routers.append(RouterObservation(pod["metadata"]["name"], pod_is_ready(pod), serving))
    return tuple(routers)


def carry_progress(children: Children, layout_id: str) -> CarryProgress | None:
    """What the carrier of `layout_id` last reported on its pod (the newest live pod with a
    readable report about this layout); None before a report. A pod being deleted is left out: a
    Recreate rollout's old pod may still hold a report its successor has not confirmed."""
    pods = [
        pod
        for pod in children.carrier_pods()
        if _labels(pod).get(labels.LAYOUT) == layout_id and not pod["metadata"].get("deletionTimestamp")
    ]
    pods.sort(key=lambda pod: str(pod["metadata"].get("creationTimestamp") or ""), reverse=True)
    for pod in pods:
        text = _annotations(pod).get(CARRY_PROGRESS_ANNOTATION)
        if text is None:
            continue
        try:
            progress = CarryProgress.model_validate_json(text)
        except ValidationError as error:
            log.warning(
                "Ignored carrier pod %s: bad %s: %s",
                pod["metadata"]["name"],
                CARRY_PROGRESS_ANNOTATION,
                error,
            )
            continue
        if progress.to_layout == layout_id:
            return progress
    return None


def carrier_observations(children: Children) -> tuple[ObservedCarrier, ...]:
    """Every carrier Deployment: the layouts it carries between (its label and annotation), the
    requests it holds (its annotations) and its pod's report."""
    carriers = []
    for deployment in children.carrier_deployments():
        layout_id = _labels(deployment).get(labels.LAYOUT)
        annotations = _annotations(deployment)
        source = annotations.get(labels.CARRY_FROM_ANNOTATION)
        if not layout_id or not source:
            continue
        carriers.append(
            ObservedCarrier(
                layout=layout_id,
                source=source,
                hand_over_requested=annotations.get(HAND_OVER_REQUESTED_ANNOTATION),
                open_requested=annotations.get(OPEN_REQUESTED_ANNOTATION),
                finish_requested=annotations.get(FINISH_REQUESTED_ANNOTATION),
                progress=carry_progress(children, layout_id),
                back=annotations.get(labels.CARRY_BACK_ANNOTATION) == "true",
            )
        )
    return tuple(carriers)


def previous_status(raw: Obj | None) -> api.RecommenderClusterStatus:
    """The status as stored; anything unreadable (a hand edit) counts as no status."""
    try:
        return api.RecommenderClusterStatus.model_validate(raw or {})
    except ValidationError as error:
        log.warning("Ignored unreadable status: %s", error)
        return api.RecommenderClusterStatus()


def observe(
    cluster: api.RecommenderCluster,
    children: Children,
    raw_status: Obj | None,
    now: datetime,
    expectations: Expectations,
) -> Observed:
    """The planner's input for this pass."""
    stored = stored_topology(children, cluster.metadata.name)
    stored_active = stored.active.layout if stored is not None and stored.active is not None else None
    written = expectations.written_layout(cluster.metadata.uid, default=stored_active)
    previous = previous_status(raw_status)
    routers = router_observations(children)
    confirmed = confirmed_layout(
        routers,
        written=written,
        stored=stored_active,
        previous=previous.active_layout or None,
        document_missing=stored is None,
    )
    has_router_service = children.get(kinds.SERVICE, names.router(cluster.metadata.name)) is not None
    return Observed(
        generation=cluster.metadata.generation,
        now=now,
        layouts=observed_layouts(children),
        router=ObservedRouter(written_layout=written, confirmed_layout=confirmed, routers=routers),
        previous_status=previous,
        router_endpoint=router_endpoint(cluster) if has_router_service else "",
        artifact_deletions=artifact_deletions(children),
        canary_reports=canary_reports(routers),
        canary_command=canary_command(cluster),
        runs_carriers=True,
        carriers=carrier_observations(children),
    )


def canary_command(cluster: api.RecommenderCluster) -> str | None:
    """The `shardrec.io/canary-command` annotation of the RecommenderCluster (None when unset)."""
    annotations = (cluster.metadata.model_extra or {}).get("annotations")
    value = annotations.get(api.CANARY_COMMAND_ANNOTATION) if isinstance(annotations, dict) else None
    return str(value) if value is not None else None


def canary_reports(routers: tuple[RouterObservation, ...]) -> tuple[CanaryStats, ...]:
    """The canary measurements the ready routers report in their pod annotations."""
    return tuple(
        CanaryStats.from_report(router.serving.canary)
        for router in routers
        if router.ready and router.serving is not None and router.serving.canary is not None
    )
