"""What a spec must satisfy to run on Kubernetes, beyond the CRD schema and its CEL rules.

The schema is shared with the local runtime, so Kubernetes-only requirements (an index store
claim, names that fit DNS labels) are checked here. Every message names the field to fix. The
handlers turn a non-empty list into a permanent error plus a `Ready=False/InvalidSpec` condition.
"""

from __future__ import annotations

import re

from shardrec.api import v1alpha1 as api
from shardrec.planning import LAYOUT_ID_LENGTH
from shardrec_operator.desired.index_build import resolve_source
from shardrec_operator.desired.names import shard_workload_name

_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def kubernetes_spec_errors(cluster: api.RecommenderCluster) -> list[str]:
    spec = cluster.spec
    errors: list[str] = []
    name = cluster.metadata.name
    if not _DNS_1035.match(name):
        errors.append(
            f"metadata.name {name!r} must be a DNS label (lowercase letters, digits, '-', starting "
            "with a letter): it names Services"
        )
    else:
        try:
            shard_workload_name(name, "0" * LAYOUT_ID_LENGTH, spec.shards - 1)
        except ValueError as error:
            errors.append(str(error))
    if spec.index.store.persistent_volume_claim is None:
        errors.append(
            "spec.index.store.persistentVolumeClaim is required on Kubernetes: "
            "index builds write there and shard pods read from it"
        )
    try:
        resolve_source(spec.index.source)
    except ValueError as error:
        errors.append(str(error))
    if spec.router.autoscaling is not None and "cpu" not in spec.resources.router.requests:
        errors.append(
            "spec.resources.router.requests.cpu is required when spec.router.autoscaling is set: "
            "the autoscaler's CPU target is a share of it"
        )
    return errors
