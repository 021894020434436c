"""A lightweight in-memory `ClusterApi` double, plus a crude stand-in for the controllers.

It keeps objects as dicts, assigns uids and resourceVersions, bumps `generation` when a spec
changes, treats an apply that changes nothing as a no-op (as server-side apply does), honours
uid preconditions on delete, and logs every write so tests can count them. `run_controllers`
plays the StatefulSet and Job controllers and kwok: pods appear Ready, Jobs complete (or fail,
when told to). The behaviour against a real API server is proven by the e2e suite; this double is
for fast feedback on the operator's own logic.
"""

from __future__ import annotations

import copy
import itertools

from shardrec_operator.reconcile import resources as kinds
from shardrec_operator.reconcile.cluster_api import ApiError, ConflictError, NotFoundError, Obj
from shardrec_operator.reconcile.resources import Resource, resource_of

Key = tuple[str, str | None, str]


def _matches(obj: Obj, selector: str) -> bool:
    labels = obj.get("metadata", {}).get("labels") or {}
    for term in filter(None, selector.split(",")):
        key, _, value = term.partition("=")
        if labels.get(key) != value:
            return False
    return True


class FakeClusterApi:
    def __init__(self) -> None:
        self.objects: dict[Key, Obj] = {}
        self.writes: list[tuple[str, str, str]] = []
        self.missing_kinds: set[str] = {kinds.SERVICE_MONITOR.kind}
        self.forbidden_kinds: set[str] = set()  # 403 on every read (RBAC without that access)
        self.failing_jobs: set[str] = set()
        self.job_reports: dict[str, str] = {}  # Job name -> its pod's termination message
        self.stuck_jobs: set[str] = set()
        self.unschedulable = False
        self.conflict_on_apply: set[str] = set()
        self.reads = 0
        self.read_kinds: list[str] = []
        self._counter = itertools.count(1)

    # -- ClusterApi -----------------------------------------------------------------------------

    def _key(self, resource: Resource, namespace: str | None, name: str) -> Key:
        return (resource.kind, namespace if resource.namespaced else None, name)

    def get(self, resource: Resource, namespace: str | None, name: str) -> Obj | None:
        self.reads += 1
        self.read_kinds.append(resource.kind)
        if resource.kind in self.forbidden_kinds:
            raise ApiError(403, f"{resource.plural} is forbidden: cannot get resource {resource.plural!r}")
        obj = self.objects.get(self._key(resource, namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def list(self, resource: Resource, namespace: str | None, label_selector: str = "") -> list[Obj]:
        self.reads += 1
        self.read_kinds.append(resource.kind)
        if resource.kind in self.forbidden_kinds:
            raise ApiError(403, f"{resource.plural} is forbidden: cannot list resource {resource.plural!r}")
        if resource.kind in self.missing_kinds:
            raise NotFoundError(404, f"the server could not find the requested resource ({resource.plural})")
        return [
            {**copy.deepcopy(obj), "apiVersion": resource.api_version, "kind": resource.kind}
            for (kind, ns, _), obj in sorted(self.objects.items(), key=lambda item: str(item[0]))
            if kind == resource.kind
            and (not resource.namespaced or ns == namespace)
            and _matches(obj, label_selector)
        ]

    def apply(self, manifest: Obj, *, field_manager: str, force: bool) -> Obj:
        resource = resource_of(manifest)
        if resource.kind in self.missing_kinds:
            raise NotFoundError(404, f"no kind {resource.kind} is registered")
        if resource.kind in self.conflict_on_apply:
            raise ConflictError(409, f"Operation cannot be fulfilled on {resource.plural}: conflict")
        assert field_manager == "shardrec-operator" and force
        meta = manifest["metadata"]
        key = self._key(resource, meta.get("namespace"), meta["name"])
        existing = self.objects.get(key)
        merged = self._merge(existing, manifest)
        if existing is not None and merged == existing:
            return copy.deepcopy(existing)
        if existing is None or merged.get("spec") != existing.get("spec"):
            merged["metadata"]["generation"] = merged["metadata"].get("generation", 0) + 1
        merged["metadata"]["resourceVersion"] = str(next(self._counter))
        self.objects[key] = merged
        self.writes.append(("apply", resource.kind, meta["name"]))
        return copy.deepcopy(merged)

    def _merge(self, existing: Obj | None, manifest: Obj) -> Obj:
        if existing is None:
            merged = copy.deepcopy(manifest)
            merged["metadata"]["uid"] = f"uid-{next(self._counter)}"
            merged["metadata"]["creationTimestamp"] = "2026-11-23T12:00:00Z"
            return merged
        merged = copy.deepcopy(existing)
        for key, value in manifest.items():
            if key not in ("metadata", "status"):
                merged[key] = copy.deepcopy(value)
        meta = merged["metadata"]
        for field in ("labels", "annotations"):
            meta[field] = {**(meta.get(field) or {}), **(manifest["metadata"].get(field) or {})}
        meta["ownerReferences"] = copy.deepcopy(manifest["metadata"].get("ownerReferences", []))
        return merged

    def delete(
        self,
        resource: Resource,
        namespace: str | None,
        name: str,
        *,
        uid: str | None = None,
        grace_period_seconds: int | None = None,
    ) -> bool:
        key = self._key(resource, namespace, name)
        existing = self.objects.get(key)
        if existing is None:
            return False
        if uid is not None and existing["metadata"].get("uid") != uid:
            raise ConflictError(409, f"Precondition failed: UID in precondition: {uid}")
        del self.objects[key]
        self.writes.append(("delete", resource.kind, name))
        return True

    # -- test helpers ---------------------------------------------------------------------------

    def put(self, obj: Obj) -> Obj:
        """Store an object as another actor would (not counted as an operator write)."""
        stored = copy.deepcopy(obj)
        stored["metadata"].setdefault("uid", f"uid-{next(self._counter)}")
        stored["metadata"]["resourceVersion"] = str(next(self._counter))
        resource = resource_of(stored)
        self.objects[self._key(resource, stored["metadata"].get("namespace"), stored["metadata"]["name"])] = (
            stored
        )
        return stored

    def of_kind(self, resource: Resource) -> list[Obj]:
        return [
            obj
            for (kind, _, _), obj in sorted(self.objects.items(), key=lambda i: str(i[0]))
            if kind == resource.kind
        ]

    def names(self, resource: Resource) -> list[str]:
        return [obj["metadata"]["name"] for obj in self.of_kind(resource)]

    def resource_versions(self) -> dict[Key, str]:
        return {key: str(obj["metadata"].get("resourceVersion")) for key, obj in self.objects.items()}

    def add_node(
        self, name: str, zone: str, *, ready: bool = True, since: str = "2026-11-23T11:00:00Z"
    ) -> None:
        status = "True" if ready else "Unknown"
        self.put(
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": name, "labels": {"topology.kubernetes.io/zone": zone}},
                "status": {"conditions": [{"type": "Ready", "status": status, "lastTransitionTime": since}]},
            }
        )

    def run_controllers(self) -> None:
        """One round of the StatefulSet + Job controllers, the garbage collector and kwok."""
        for job in self.of_kind(kinds.JOB):
            conditions = job.setdefault("status", {}).setdefault("conditions", [])
            name = job["metadata"]["name"]
            if conditions or name in self.stuck_jobs or self.unschedulable:
                continue
            verdict = "Failed" if name in self.failing_jobs else "Complete"
            conditions.append(
                {"type": verdict, "status": "True", "reason": "Simulated", "message": "by the test"}
            )
            if verdict == "Complete" and name in self.job_reports:
                self._finished_job_pod(job, self.job_reports[name])
        sets = {s["metadata"]["name"]: s for s in self.of_kind(kinds.STATEFUL_SET)}
        for pod in self.of_kind(kinds.POD):
            reference = pod["metadata"].get("ownerReferences", [{}])[0]
            if reference.get("kind") != "StatefulSet":
                continue  # router pods (a ReplicaSet's) are the test's to manage
            statefulset = sets.get(reference.get("name"))
            ordinal = int(pod["metadata"]["name"].rsplit("-", 1)[1])
            if statefulset is None or ordinal >= statefulset["spec"]["replicas"]:
                del self.objects[(kinds.POD.kind, pod["metadata"]["namespace"], pod["metadata"]["name"])]
        nodes = self.names(kinds.NODE) or ["node-a"]
        for statefulset in sets.values():
            for ordinal in range(statefulset["spec"]["replicas"]):
                self._ensure_pod(statefulset, ordinal, nodes[ordinal % len(nodes)])

    def _finished_job_pod(self, job: Obj, message: str) -> None:
        """The pod a Job ran, as the kubelet leaves it: Succeeded, its container terminated with
        exit code 0 and the termination message the container wrote."""
        template = job["spec"]["template"]
        container = template["spec"]["containers"][0]["name"]
        self.put(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": f"{job['metadata']['name']}-0-abcde",
                    "namespace": job["metadata"]["namespace"],
                    "labels": dict(template["metadata"]["labels"]),
                    "ownerReferences": [{"kind": "Job", "name": job["metadata"]["name"], "controller": True}],
                },
                "spec": {"nodeName": "node-a"},
                "status": {
                    "phase": "Succeeded",
                    "containerStatuses": [
                        {
                            "name": container,
                            "state": {
                                "terminated": {"exitCode": 0, "reason": "Completed", "message": message}
                            },
                        }
                    ],
                },
            }
        )

    def _ensure_pod(self, statefulset: Obj, ordinal: int, node: str) -> None:
        meta = statefulset["metadata"]
        name = f"{meta['name']}-{ordinal}"
        if (kinds.POD.kind, meta["namespace"], name) in self.objects or self.unschedulable:
            return
        self.put(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": name,
                    "namespace": meta["namespace"],
                    "labels": dict(statefulset["spec"]["template"]["metadata"]["labels"]),
                    "ownerReferences": [{"kind": "StatefulSet", "name": meta["name"], "controller": True}],
                },
                "spec": {"nodeName": node},
                "status": {"conditions": [{"type": "Ready", "status": "True"}]},
            }
        )

    def set_pod_ready(self, name: str, namespace: str, ready: bool) -> None:
        pod = self.objects[(kinds.POD.kind, namespace, name)]
        pod["status"]["conditions"] = [{"type": "Ready", "status": "True" if ready else "False"}]

    def delete_pod(self, name: str, namespace: str) -> None:
        del self.objects[(kinds.POD.kind, namespace, name)]
