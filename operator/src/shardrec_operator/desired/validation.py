"""What a spec must satisfy to run on Kubernetes, beyond the CRD schema and its CEL rules.

The schema is shared with the local runtime, so Kubernetes-only requirements (an index store
claim, names that fit DNS labels, pod templates that neither collide with the operator's own
fields nor break the restricted Pod Security Standard) are checked here. Every message names
the field to fix. The handlers turn a non-empty list into a permanent error plus a
`Ready=False/InvalidSpec` condition.
"""

from __future__ import annotations

import re

from shardrec.api import v1alpha1 as api
from shardrec.planning import LAYOUT_ID_LENGTH, LayoutSpec
from shardrec_operator.desired.carry import (
    CARRIER_CONTAINER,
    carrier_config,
    carrier_pod_template,
    carrier_template_override,
)
from shardrec_operator.desired.index_build import BUILD_CONTAINER, build_pod_template, resolve_source
from shardrec_operator.desired.names import shard_workload_name
from shardrec_operator.desired.pod_security import restricted_violations
from shardrec_operator.desired.pod_template import merge_pod_template, template_conflicts
from shardrec_operator.desired.router import ROUTER_CONTAINER, router_pod_template
from shardrec_operator.desired.shard import SHARD_CONTAINER, WRITE_LOG_VOLUME, shard_pod_template

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
    store = spec.index.store
    if store.persistent_volume_claim is None and store.object_store is None:
        # The CRD's CEL rule forbids both; the local runtime needs neither, Kubernetes one of them.
        errors.append(
            "spec.index.store.persistentVolumeClaim or spec.index.store.objectStore is required on "
            "Kubernetes: "
            "index builds write there and shard pods read from it"
        )
    try:
        resolve_source(spec.index.source, object_store=store.object_store is not None)
    except ValueError as error:
        errors.append(str(error))
    if spec.router.autoscaling is not None and "cpu" not in spec.resources.router.requests:
        errors.append(
            "spec.resources.router.requests.cpu is required when spec.router.autoscaling is set: "
            "the autoscaler's CPU target is a share of it"
        )
    if not errors:
        errors += pod_template_errors(cluster)
    return errors


def pod_template_errors(cluster: api.RecommenderCluster) -> list[str]:
    """`spec.podTemplates` entries that collide with the operator's own, and any way the merged
    shard, router and build pods break the restricted Pod Security Standard (the namespace may
    enforce it; a rejected pod would only show as an event on its StatefulSet or Job)."""
    layout = LayoutSpec.from_spec(cluster.spec)
    templates = cluster.spec.pod_templates
    errors: list[str] = []
    for kind, default, override, container in (
        ("shard", shard_pod_template(cluster, layout, 0), templates.shard, SHARD_CONTAINER),
        ("router", router_pod_template(cluster), templates.router, ROUTER_CONTAINER),
        ("build", build_pod_template(cluster, layout), templates.build, BUILD_CONTAINER),
    ):
        field = f"spec.podTemplates.{kind}"
        errors += template_conflicts(default, override, container=container, field=field)
        merged = merge_pod_template(default, override, container=container, selector={})
        errors += [
            f"{field}: the {kind} pod breaks the restricted Pod Security Standard: {violation}"
            for violation in restricted_violations(merged)
        ]
    if cluster.spec.writes.enabled:
        # The carrier's template is the build's unless it has its own: checked against its pod.
        override = carrier_template_override(cluster.spec)
        kind = "carrier" if templates.carrier is not None else "build"
        field = f"spec.podTemplates.{kind}"
        config = carrier_config(
            cluster, layout, layout, replicas=1, source_tls=True, layout_tls=True, prior=False
        )
        default = carrier_pod_template(cluster, layout, config)
        errors += template_conflicts(default, override, container=CARRIER_CONTAINER, field=field)
        merged = merge_pod_template(default, override, container=CARRIER_CONTAINER, selector={})
        errors += [
            f"{field}: the carrier pod breaks the restricted Pod Security Standard: {violation}"
            for violation in restricted_violations(merged)
        ]
    # The claim's volume is added by the StatefulSet controller, not in the pod template, so
    # template_conflicts cannot see it; a volume of the same name would shadow the log.
    shard_volumes = {volume.name for volume in templates.shard.volumes} if templates.shard else set()
    if layout.write_log and WRITE_LOG_VOLUME in shard_volumes:
        errors.append(
            f"spec.podTemplates.shard.volumes[{WRITE_LOG_VOLUME}]: the operator's write-log claim "
            "(spec.writes.enabled); pick another name"
        )
    return errors
