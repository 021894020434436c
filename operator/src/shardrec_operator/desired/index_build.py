"""The index-build Job of a layout, and the artifact cleanup Job.

Builds run off the serving pods, in a Job that uses the data-plane image and `recctl index build`,
writing the layout folder onto the index store PVC (mounted read-write here, read-only
everywhere else). `recctl` publishes `layout.json` last, so a retried or interrupted build never
leaves a folder that looks complete. The Job's `activeDeadlineSeconds` is the rollout timeout, so
a build that cannot even start (missing source claim, no node) fails visibly instead of pending
forever; there is no TTL, because the finished Job is the record that the layout is built.

Embeddings source (`spec.index.source`) on Kubernetes:
- `pvc://<claim>/<path>`: that claim is mounted read-only at /source;
- `/abs/path` or `file:///abs/path`: a path inside the index store volume.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

from shardrec.api import v1alpha1 as api
from shardrec.api.commands import index_build_arguments
from shardrec.planning import LayoutSpec
from shardrec_operator.desired import labels, names, pods
from shardrec_operator.desired.meta import Manifest, manifest
from shardrec_operator.desired.pod_template import merge_pod_template

BUILD_BACKOFF_LIMIT: Final = 2
BUILD_CONTAINER: Final = "build"
CLEANUP_CONTAINER: Final = "cleanup"
CLEANUP_DEADLINE_SECONDS: Final = 600
_PVC_SOURCE = re.compile(r"^pvc://(?P<claim>[a-z0-9]([-a-z0-9.]*[a-z0-9])?)/(?P<path>\S+)$")


@dataclass(frozen=True)
class Source:
    """Where the build container finds the embeddings directory."""

    path: str
    claim: str | None = None


def resolve_source(source: str) -> Source:
    """`spec.index.source` -> a path inside the build container (+ the claim to mount, if any)."""
    if source.startswith("pvc://"):
        match = _PVC_SOURCE.match(source)
        if match is None:
            raise ValueError(
                f"spec.index.source: {source!r} is not pvc://<claim>/<path> with a valid claim name"
            )
        return Source(path=f"{pods.SOURCE_MOUNT}/{match['path'].strip('/')}", claim=match["claim"])
    path = source.removeprefix("file://")
    if not path.startswith("/"):
        raise ValueError(f"spec.index.source: {source!r} must be an absolute path, file:// or pvc://")
    return Source(path=f"{pods.STORE_MOUNT}/{path.strip('/')}")


def build_command(cluster: str, layout: LayoutSpec, workers: int | None = None) -> list[str]:
    """`recctl index build` for a layout, the same arguments the local runtime uses; `workers`
    (build threads) from the build container's CPU, when it has one."""
    embeddings = resolve_source(layout.source).path
    out = pods.layout_dir(cluster, layout.id)
    return ["recctl", *index_build_arguments(layout, embeddings, out, workers=workers)]


def build_resources(spec: api.RecommenderClusterSpec) -> api.ResourceRequirements:
    """`resources.build`, or the shard's resources when it is absent."""
    return spec.resources.build if spec.resources.build is not None else spec.resources.shard


def _job_pod_spec(
    spec: api.RecommenderClusterSpec, container: dict[str, Any], cluster: str, source: Source | None
) -> dict[str, Any]:
    volumes = [pods.store_volume(spec, read_only=False), pods.tmp_volume()]
    mounts = [pods.store_mount(spec, read_only=False), pods.tmp_mount()]
    if source is not None and source.claim is not None:
        if source.claim == pods.store_claim(spec).claim_name:
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
        "serviceAccountName": names.shard_service_account(cluster),
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pods.pod_security_context(),
        "containers": [
            {
                **container,
                **pods.image_fields(spec),
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


def build_pod_template(cluster: api.RecommenderCluster, layout: LayoutSpec) -> dict[str, Any]:
    """The operator's build pod template, before `spec.podTemplates.build` is merged over it."""
    spec = cluster.spec
    name = cluster.metadata.name
    job_labels = labels.layout_labels(name, "index-build", layout)
    workers = pods.cpu_threads(build_resources(spec))
    container = {"name": BUILD_CONTAINER, "command": build_command(name, layout, workers)}
    return {
        "metadata": {"labels": job_labels},
        "spec": _job_pod_spec(spec, container, name, resolve_source(layout.source)),
    }


def build_index_job(cluster: api.RecommenderCluster, layout: LayoutSpec, attempt: str) -> Manifest:
    """The Job that builds `layout`, created for build attempt `attempt`."""
    spec = cluster.spec
    name = cluster.metadata.name
    job_labels = labels.layout_labels(name, "index-build", layout)
    template = _with_template(cluster, build_pod_template(cluster, layout), BUILD_CONTAINER, job_labels)
    return manifest(
        "batch/v1",
        "Job",
        cluster,
        names.build_job(name, layout.id),
        job_labels,
        spec={
            "backoffLimit": BUILD_BACKOFF_LIMIT,
            "activeDeadlineSeconds": spec.rollout.timeout_seconds,
            "template": template,
        },
        annotations={**labels.layout_annotations(layout), labels.BUILD_ATTEMPT_ANNOTATION: attempt},
    )


def build_cleanup_job(cluster: api.RecommenderCluster) -> Manifest:
    """The Job that deletes this cluster's folder (every layout) from the store (finalizer step)."""
    spec = cluster.spec
    name = cluster.metadata.name
    job_labels = labels.component_labels(name, "cleanup")
    script = (
        "import pathlib, shutil; "
        f"root = pathlib.Path({pods.cluster_dir(name)!r}); "
        "shutil.rmtree(root, ignore_errors=True); "
        "print('removed', root)"
    )
    container = {"name": CLEANUP_CONTAINER, "command": ["python", "-c", script]}
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
