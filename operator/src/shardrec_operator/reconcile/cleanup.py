"""Deleting a cluster whose spec asks for it (`deleteArtifactsOnDelete`): remove its artifacts.

Children go by owner reference; the artifacts on the index store are not Kubernetes objects, so
a Job (`desired.index_build.build_cleanup_job`) deletes this cluster's folder (PVC store) or every
layout its status knows of (object store) while a finalizer holds the RecommenderCluster. Only
then does the finalizer go. A cleanup that fails still lets the deletion finish (with a Warning
Event): an unremovable folder must not make a namespace undeletable.
"""

from __future__ import annotations

from typing import Literal

from shardrec.api import v1alpha1 as api
from shardrec_operator.desired import names
from shardrec_operator.desired.index_build import build_cleanup_job
from shardrec_operator.reconcile import resources as kinds
from shardrec_operator.reconcile.apply import apply_child
from shardrec_operator.reconcile.cluster_api import ClusterApi
from shardrec_operator.reconcile.observe import true_condition

CleanupState = Literal["running", "done", "failed"]


def clean_artifacts(
    api_client: ClusterApi,
    cluster: api.RecommenderCluster,
    status: api.RecommenderClusterStatus | None = None,
) -> tuple[CleanupState, str]:
    """Advance the cleanup one step: start the Job, or report how it went. `status` names the
    layouts to delete from an object store (status.layouts and status.storedLayouts)."""
    name = names.cleanup_job(cluster.metadata.name)
    job = api_client.get(kinds.JOB, cluster.metadata.namespace, name)
    if job is None:
        manifest = build_cleanup_job(cluster, status)
        apply_child(api_client, manifest, None, owner_uid=cluster.metadata.uid)
        return "running", f"started Job {name} to delete the index artifacts"
    if true_condition(job, "Complete") is not None:
        return "done", f"Job {name} deleted the index artifacts of {cluster.metadata.name}"
    failed = true_condition(job, "Failed")
    if failed is not None:
        return "failed", f"Job {name} could not delete the index artifacts: {failed.get('message', '')}"
    return "running", f"waiting for Job {name} to delete the index artifacts"
