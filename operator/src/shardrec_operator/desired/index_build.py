"""The index-build Job of a layout, the artifact garbage-collection Job, and the cleanup Job.

Builds run off the serving pods, in a Job that uses the data-plane image and `recctl index build`,
writing the layout onto the index store: the PVC (mounted read-write here, read-only everywhere
else) or the object store (`desired.artifacts`; nothing mounted, credentials from the Secret as
environment variables). `recctl` publishes `layout.json` last, so a retried or interrupted build
never leaves a layout that looks complete, and it reuses a complete, verifying layout that is
already there: rolling back to a retained layout whose Job was deleted re-creates the Job, which
finishes quickly. The Job's `activeDeadlineSeconds` is the rollout timeout, so a build that
cannot even start (missing source claim, no node) fails visibly instead of pending forever; there
is no TTL, because the finished Job is the record that the layout is built.

On an object store a layout of several shards is built per shard (`per_shard_build`): an Indexed
Job, one completion per shard, each pod running `recctl index build --only-shard
$(JOB_COMPLETION_INDEX) --publish-when-complete` with `resources.build` (or, when empty, the
shard's resources). Each pod uploads its shard's part (manifest.json last); the pod that sees every
part complete after its own upload verifies them all and writes the users part and layout.json
last. The last part to finish always sees every part, so the Job is Complete only once the layout
is published, and the planner observes it exactly like the one-shot Job. A one-shard layout, and a
PVC store (whose ReadWriteOnce claim pods on other nodes could not mount at once), keep one Job
that builds every shard.

Embeddings source (`spec.index.source`) on Kubernetes:
- `pvc://<claim>/<path>`: that claim is mounted read-only at /source;
- `s3://bucket/prefix`: read by `recctl` itself (needs `spec.index.objectStore`);
- `/abs/path` or `file:///abs/path`: a path inside the index store volume (PVC store only).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

from shardrec.api import v1alpha1 as api
from shardrec.api.commands import BUILD_REPORT_PATH, index_build_arguments, index_delete_arguments
from shardrec.planning import LayoutSpec
from shardrec_operator.desired import artifacts, labels, names, pods
from shardrec_operator.desired.meta import Manifest, manifest
from shardrec_operator.desired.pod_template import merge_pod_template

BUILD_BACKOFF_LIMIT: Final = 2
BUILD_CONTAINER: Final = "build"
CLEANUP_CONTAINER: Final = "cleanup"
GC_CONTAINER: Final = "delete"
CLEANUP_DEADLINE_SECONDS: Final = 600
WORK_VOLUME: Final = "build-work"
WORK_MOUNT: Final = "/work"
GC_TTL_SECONDS: Final = 3600
JOB_GRACE_SECONDS: Final = 5
"""terminationGracePeriodSeconds of every Job pod here. Their commands (`recctl`, `python -c`) run
as PID 1 with no SIGTERM handler, and the kernel drops a signal PID 1 does not handle: a deleted
pod would go on until the default 30 s grace ends. Their work may be cut anywhere (a build
publishes layout.json last; deletes may repeat), so the kubelet's SIGKILL comes after 5 s."""
"""A finished garbage-collection Job is kept this long (far beyond any resync) so the operator sees
how it ended; if it is gone first the deletion is ordered again, and deleting what is gone is a
no-op."""
_PVC_SOURCE = re.compile(r"^pvc://(?P<claim>[a-z0-9]([-a-z0-9.]*[a-z0-9])?)/(?P<path>\S+)$")


@dataclass(frozen=True)
class Source:
    """Where the build container finds the embeddings directory."""

    path: str
    claim: str | None = None


def resolve_source(source: str, *, object_store: bool = False) -> Source:
    """`spec.index.source` -> a path or URL inside the build container (+ the claim to mount, if
    any). `object_store`: the artifacts go to an object store, so no store volume is mounted."""
    if source.startswith("s3://"):
        return Source(path=source)
    if source.startswith("pvc://"):
        match = _PVC_SOURCE.match(source)
        if match is None:
            raise ValueError(
                f"spec.index.source: {source!r} is not pvc://<claim>/<path> with a valid claim name"
            )
        return Source(path=f"{pods.SOURCE_MOUNT}/{match['path'].strip('/')}", claim=match["claim"])
    path = source.removeprefix("file://")
    if not path.startswith("/"):
        raise ValueError(f"spec.index.source: {source!r} must be an absolute path, file://, pvc:// or s3://")
    if object_store:
        raise ValueError(
            f"spec.index.source: {source!r} is a path inside the index store volume, but "
            "spec.index.store.objectStore mounts no volume: use s3:// or pvc://<claim>/<path>"
        )
    return Source(path=f"{pods.STORE_MOUNT}/{path.strip('/')}")


def _on_object_store(spec: api.RecommenderClusterSpec) -> bool:
    return artifacts.object_store(spec) is not None


def _needs_work_dir(spec: api.RecommenderClusterSpec, layout: LayoutSpec) -> bool:
    """A remote source is downloaded, and a layout for an object store is built locally before
    its upload: both need scratch space beyond the 1 GiB /tmp (the root filesystem is read-only)."""
    return _on_object_store(spec) or layout.source.startswith("s3://")


COMPLETION_INDEX_ENV: Final = "JOB_COMPLETION_INDEX"
_COMPLETION_INDEX_ANNOTATION: Final = "batch.kubernetes.io/job-completion-index"


def per_shard_build(spec: api.RecommenderClusterSpec, layout: LayoutSpec) -> bool:
    """One pod per shard (an Indexed Job): object store and more than one shard."""
    return _on_object_store(spec) and layout.shards > 1


def build_command(
    cluster: api.RecommenderCluster, layout: LayoutSpec, workers: int | None = None, *, carried: bool = False
) -> list[str]:
    """`recctl index build` for a layout, the same arguments the local runtime uses; `workers`
    (build threads) from the build container's CPU, when it has one. Per shard, the pod's
    completion index (expanded by the kubelet) picks the shard. The pod that leaves a verified
    layout behind reports its offline metrics in its termination message (`BUILD_REPORT_PATH`):
    the operator cannot read layout.json on the store, but it reads pods. `carried`: fold in the
    layout's carry folder (`--carry-dir`, the writes its carrier cut from the old layout's logs);
    every part of an Indexed Job folds in the same folder, so all parts agree on the items."""
    spec = cluster.spec
    embeddings = resolve_source(layout.source, object_store=_on_object_store(spec)).path
    out = artifacts.layout_location(cluster, layout.id)
    only_shard = f"$({COMPLETION_INDEX_ENV})" if per_shard_build(spec, layout) else None
    arguments = index_build_arguments(
        layout,
        embeddings,
        out,
        artifacts.connection(spec),
        workers=workers,
        only_shard=only_shard,
        report_file=BUILD_REPORT_PATH,
        carry_dir=artifacts.carry_location(cluster, layout.id) if carried else None,
    )
    command = ["recctl", *arguments]
    if _needs_work_dir(spec, layout):
        command += ["--work-dir", WORK_MOUNT]
    return command


def build_resources(spec: api.RecommenderClusterSpec) -> api.ResourceRequirements:
    """`resources.build`, or the shard's resources when it is absent."""
    return spec.resources.build if spec.resources.build is not None else spec.resources.shard


def _job_pod_spec(
    spec: api.RecommenderClusterSpec, container: dict[str, Any], cluster: str, source: Source | None
) -> dict[str, Any]:
    on_object_store = _on_object_store(spec)
    volumes = [pods.tmp_volume()]
    mounts = [pods.tmp_mount()]
    if not on_object_store:
        volumes.insert(0, pods.store_volume(spec, read_only=False))
        mounts.insert(0, pods.store_mount(spec, read_only=False))
    if source is not None and source.claim is not None:
        if not on_object_store and source.claim == pods.store_claim(spec).claim_name:
            # The same claim as the store (what the examples do): mount the store volume a second time,
            # read-only, at /source. A second volume naming the same claim with `readOnly: true` is one
            # volume to the kubelet, and it came up read-only on /store too (the build then failed with
            # EROFS on a real node).
            mounts.append({"name": pods.STORE_VOLUME, "mountPath": pods.SOURCE_MOUNT, "readOnly": True})
        else:
            claim = {"claimName": source.claim, "readOnly": True}
            volumes.append({"name": pods.SOURCE_VOLUME, "persistentVolumeClaim": claim})
            mounts.append({"name": pods.SOURCE_VOLUME, "mountPath": pods.SOURCE_MOUNT, "readOnly": True})
    return {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": JOB_GRACE_SECONDS,
        "serviceAccountName": names.shard_service_account(cluster),
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pods.pod_security_context(),
        "containers": [
            {
                **container,
                **pods.image_fields(spec),
                **({"env": env} if (env := artifacts.credential_env(spec)) else {}),
                "resources": pods.resources(build_resources(spec)),
                "securityContext": pods.container_security_context(),
                "volumeMounts": mounts,
            }
        ],
        "volumes": volumes,
    }


def _with_template(
    cluster: api.RecommenderCluster, template: dict[str, Any], container: str, job_labels: dict[str, str]
) -> dict[str, Any]:
    return merge_pod_template(
        template, cluster.spec.pod_templates.build, container=container, selector=job_labels
    )


def build_pod_template(
    cluster: api.RecommenderCluster, layout: LayoutSpec, *, carried: bool = False
) -> dict[str, Any]:
    """The operator's build pod template, before `spec.podTemplates.build` is merged over it."""
    spec = cluster.spec
    name = cluster.metadata.name
    job_labels = labels.layout_labels(name, "index-build", layout)
    workers = pods.cpu_threads(build_resources(spec))
    container = {"name": BUILD_CONTAINER, "command": build_command(cluster, layout, workers, carried=carried)}
    pod_spec = _job_pod_spec(
        spec, container, name, resolve_source(layout.source, object_store=_on_object_store(spec))
    )
    if _needs_work_dir(spec, layout):
        # Node-local scratch for the download and the local build; gone with the pod.
        pod_spec["volumes"].append({"name": WORK_VOLUME, "emptyDir": {}})
        pod_spec["containers"][0]["volumeMounts"].append({"name": WORK_VOLUME, "mountPath": WORK_MOUNT})
    if per_shard_build(spec, layout):
        # The Job controller injects this too; declared here so `$(JOB_COMPLETION_INDEX)` in the
        # command expands on any kubelet and the template says what the pod reads.
        index = {"fieldRef": {"fieldPath": f"metadata.annotations['{_COMPLETION_INDEX_ANNOTATION}']"}}
        container = pod_spec["containers"][0]
        container["env"] = [{"name": COMPLETION_INDEX_ENV, "valueFrom": index}, *container.get("env", [])]
    return {"metadata": {"labels": job_labels}, "spec": pod_spec}


def _per_shard_fields(spec: api.RecommenderClusterSpec, layout: LayoutSpec) -> dict[str, Any]:
    """The Indexed Job's fields: every shard at once, each with the one-shot Job's retries."""
    if not per_shard_build(spec, layout):
        return {"backoffLimit": BUILD_BACKOFF_LIMIT}
    return {
        "completionMode": "Indexed",
        "completions": layout.shards,
        "parallelism": layout.shards,
        "backoffLimit": BUILD_BACKOFF_LIMIT * layout.shards,
    }


def build_index_job(
    cluster: api.RecommenderCluster, layout: LayoutSpec, attempt: str, *, carried: bool = False
) -> Manifest:
    """The Job that builds `layout`, created for build attempt `attempt`; `carried`: it folds in
    the layout's carry folder (`build_command`)."""
    spec = cluster.spec
    name = cluster.metadata.name
    job_labels = labels.layout_labels(name, "index-build", layout)
    template = _with_template(
        cluster, build_pod_template(cluster, layout, carried=carried), BUILD_CONTAINER, job_labels
    )
    return manifest(
        "batch/v1",
        "Job",
        cluster,
        names.build_job(name, layout.id),
        job_labels,
        spec={
            **_per_shard_fields(spec, layout),
            "activeDeadlineSeconds": spec.rollout.timeout_seconds,
            "template": template,
        },
        annotations={**labels.layout_annotations(layout), labels.BUILD_ATTEMPT_ANNOTATION: attempt},
    )


def build_artifact_gc_job(cluster: api.RecommenderCluster, layout_id: str, version: str) -> Manifest:
    """The Job that deletes one layout's artifacts from the store (`DeleteArtifacts`), for PVC and
    object stores alike: `recctl index delete` removes the manifest first, then the files, then
    the layout's carry folder and every carry-back folder naming it (`--carry-store`: garbage once
    the layout's artifacts are, `shardrec.planning.retention.carry_folders_needed`)."""
    spec = cluster.spec
    name = cluster.metadata.name
    job_labels = labels.artifact_gc_labels(name, layout_id, version)
    arguments = index_delete_arguments(
        store=artifacts.store_location(cluster),
        layout=layout_id,
        object_store=artifacts.connection(spec),
        carry_store=artifacts.cluster_folder(cluster),
    )
    container = {"name": GC_CONTAINER, "command": ["recctl", *arguments]}
    return manifest(
        "batch/v1",
        "Job",
        cluster,
        names.artifact_gc_job(name, layout_id),
        job_labels,
        spec={
            "backoffLimit": BUILD_BACKOFF_LIMIT,
            "activeDeadlineSeconds": CLEANUP_DEADLINE_SECONDS,
            "ttlSecondsAfterFinished": GC_TTL_SECONDS,
            "template": _with_template(
                cluster,
                {
                    "metadata": {"labels": job_labels},
                    "spec": _job_pod_spec(spec, container, name, source=None),
                },
                GC_CONTAINER,
                job_labels,
            ),
        },
    )


def known_layouts(status: api.RecommenderClusterStatus | None) -> list[str]:
    """Every layout the status knows of (running or only stored), sorted."""
    if status is None:
        return []
    return sorted({entry.name for entry in status.layouts} | {entry.name for entry in status.stored_layouts})


def _cleanup_script(cluster: api.RecommenderCluster, status: api.RecommenderClusterStatus | None) -> str:
    name = cluster.metadata.name
    if not _on_object_store(cluster.spec):
        return (
            "import pathlib, shutil; "
            f"root = pathlib.Path({pods.cluster_dir(name)!r}); "
            "shutil.rmtree(root, ignore_errors=True); "
            "print('removed', root)"
        )
    # An object store has no folder to remove: delete every layout the status knows, one by one,
    # with the carry folders naming it.
    store, flags = artifacts.store_location(cluster), artifacts.connection(cluster.spec)
    carry_store = artifacts.cluster_folder(cluster)
    commands = [
        [
            "recctl",
            *index_delete_arguments(store=store, layout=layout, object_store=flags, carry_store=carry_store),
        ]
        for layout in known_layouts(status)
    ]
    return (
        "import subprocess; "
        f"[subprocess.run(command, check=True) for command in {commands!r}]; "
        f"print('deleted', {len(commands)}, 'layouts')"
    )


def build_cleanup_job(
    cluster: api.RecommenderCluster, status: api.RecommenderClusterStatus | None = None
) -> Manifest:
    """The Job that deletes this cluster's artifacts from the store (finalizer step): its folder on
    a PVC, or each layout `status` knows of in an object store."""
    spec = cluster.spec
    name = cluster.metadata.name
    job_labels = labels.component_labels(name, "cleanup")
    container = {"name": CLEANUP_CONTAINER, "command": ["python", "-c", _cleanup_script(cluster, status)]}
    # The cleanup needs only the store, never the embeddings source (it may be gone already).
    pod_spec = _job_pod_spec(spec, container, name, source=None)
    template = _with_template(
        cluster, {"metadata": {"labels": job_labels}, "spec": pod_spec}, CLEANUP_CONTAINER, job_labels
    )
    return manifest(
        "batch/v1",
        "Job",
        cluster,
        names.cleanup_job(name),
        job_labels,
        spec={
            "backoffLimit": BUILD_BACKOFF_LIMIT,
            "activeDeadlineSeconds": CLEANUP_DEADLINE_SECONDS,
            "template": template,
        },
    )
