"""Snapshot tests: every builder's output against a reviewed manifest in `golden/`.

A deliberate change to a builder shows up here as a diff to review. Regenerate with
`SHARDREC_UPDATE_GOLDEN=1 pytest tests/controller/test_golden_manifests.py`, read the diff of
`tests/controller/golden/`, and commit it with the change.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from shardrec.api import v1alpha1 as api
from shardrec.api.topology import Topology
from shardrec_operator.desired.carry import (
    CarrierRequests,
    build_carrier_configmap,
    build_carrier_deployment,
    build_carrier_identity,
    carrier_config,
)
from shardrec_operator.desired.index_build import build_cleanup_job, build_index_job
from shardrec_operator.desired.monitoring import build_service_monitor
from shardrec_operator.desired.network import build_shard_network_policy
from shardrec_operator.desired.rbac import (
    build_router_role,
    build_router_role_binding,
    build_router_service_account,
    build_shard_service_account,
)
from shardrec_operator.desired.router import (
    build_router_config,
    build_router_deployment,
    build_router_hpa,
    build_router_pdb,
    build_router_service,
)
from shardrec_operator.desired.shard import build_shard_pdb, build_shard_service, build_shard_statefulset
from shardrec_operator.desired.topology_configmap import build_layout_topology, build_topology_configmap
from tests.controller.samples import cluster, layout_of, spec_document

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("SHARDREC_UPDATE_GOLDEN") == "1"

BASE = cluster()
LAYOUT = layout_of(BASE)
AUTOSCALED = cluster(
    router={"autoscaling": {"minReplicas": 2, "maxReplicas": 8, "targetCpuUtilizationPercent": 60}},
    auth={"apiKeysSecretRef": {"name": "router-keys"}, "rateLimitPerSecond": 50},
)
WRITES = cluster(
    writes={"enabled": True, "ack": "majority", "logVolume": {"size": "2Gi", "storageClassName": "fast-ssd"}}
)
MONITORED = cluster(monitoring={"serviceMonitor": True, "scrapeAnnotations": False})
WRITES_V2 = cluster(
    writes={"enabled": True, "ack": "majority", "logVolume": {"size": "2Gi", "storageClassName": "fast-ssd"}},
    shards=3,
    index={**spec_document()["index"], "version": "v2"},
)
OBJECT_STORE_INDEX: dict[str, Any] = {
    "version": "v1",
    "source": "s3://embeddings/movielens/v1",
    "dimension": 32,
    "objectStore": {
        "endpoint": "http://seaweedfs.storage:8333",
        "pathStyle": True,
        "credentialsSecretRef": {"name": "s3-creds"},
    },
    "store": {"objectStore": {"url": "s3://artifacts/shardrec"}},
}
OBJECT_STORE_WRITES = cluster(writes={"enabled": True}, index=OBJECT_STORE_INDEX)
OBJECT_STORE_WRITES_V2 = cluster(
    writes={"enabled": True},
    index={**OBJECT_STORE_INDEX, "version": "v2"},
)


def _carrier(
    sample: api.RecommenderCluster,
    source_sample: api.RecommenderCluster,
    requests: CarrierRequests,
    *,
    prior: bool,
    back: bool = False,
) -> list[Any]:
    """The carrier of `sample`'s layout carrying the writes `source_sample`'s layout logged."""
    layout, source = layout_of(sample), layout_of(source_sample)
    config = carrier_config(
        sample, layout, source, replicas=2, source_tls=True, layout_tls=True, prior=prior, back=back
    )
    return [
        build_carrier_configmap(sample, layout, config),
        build_carrier_deployment(sample, layout, source, config, requests),
    ]


PLACEMENT: dict[str, Any] = {
    "metadata": {"labels": {"team": "recs"}, "annotations": {"example.com/cost-center": "ml"}},
    "nodeSelector": {"node.example.com/pool": "search"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "search", "effect": "NoSchedule"}],
    "priorityClassName": "serving-high",
    "imagePullSecrets": [{"name": "registry-credentials"}],
}
TEMPLATED = cluster(
    podTemplates={
        "shard": {
            **PLACEMENT,
            "zoneSpread": "Hard",
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {"matchExpressions": [{"key": "node.example.com/avx512", "operator": "Exists"}]}
                        ]
                    }
                }
            },
            "topologySpreadConstraints": [
                {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway"}
            ],
            "env": [{"name": "MALLOC_ARENA_MAX", "value": "2"}],
            "volumes": [{"name": "ca-bundle", "configMap": {"name": "corporate-ca"}}],
            "volumeMounts": [{"name": "ca-bundle", "mountPath": "/etc/ssl/corporate", "readOnly": True}],
        },
        "router": {**PLACEMENT, "zoneSpread": "Hard"},
        "build": {"priorityClassName": "batch-low", "tolerations": PLACEMENT["tolerations"]},
    },
    resources={
        "shard": {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"cpu": "2500m", "memory": "4Gi"}},
        "router": {"requests": {"cpu": "250m"}},
        "build": {"requests": {"cpu": "4", "memory": "8Gi"}, "limits": {"memory": "8Gi"}},
    },
)


PROXY_ENV = [{"name": "HTTPS_PROXY", "value": "http://proxy.example.com:3128"}]


def _writes_v2_document() -> dict[str, Any]:
    """WRITES_V2's changes to the sample, to build variants of it."""
    return {
        "writes": {
            "enabled": True,
            "ack": "majority",
            "logVolume": {"size": "2Gi", "storageClassName": "fast-ssd"},
        },
        "shards": 3,
        "index": {**spec_document()["index"], "version": "v2"},
    }


def _documents(*manifests: Any) -> list[Any]:
    return list(manifests)


CASES: dict[str, Callable[[], list[Any]]] = {
    "build-job": lambda: _documents(build_index_job(BASE, LAYOUT, "2026-11-23T12:00:00Z")),
    "cleanup-job": lambda: _documents(build_cleanup_job(BASE)),
    "shard-statefulset": lambda: _documents(build_shard_statefulset(BASE, LAYOUT, 1, 2, tls=True)),
    # A StatefulSet created before TLS existed keeps serving plain HTTP (desired/shard_tls.py).
    "shard-statefulset-plain": lambda: _documents(build_shard_statefulset(BASE, LAYOUT, 1, 2)),
    "shard-statefulset-with-pod-template": lambda: _documents(
        build_shard_statefulset(TEMPLATED, layout_of(TEMPLATED), 1, 2)
    ),
    # Item writes: a ReadWriteOnce write-log claim per replica, --write-log-dir, the ack policy.
    "shard-statefulset-with-writes": lambda: _documents(
        build_shard_statefulset(WRITES, layout_of(WRITES), 1, 2, tls=True)
    ),
    "router-config-with-writes": lambda: _documents(build_router_config(WRITES)),
    "router-deployment-with-pod-template": lambda: _documents(build_router_deployment(TEMPLATED)),
    "build-job-with-pod-template-and-build-resources": lambda: _documents(
        build_index_job(TEMPLATED, layout_of(TEMPLATED), "2026-11-23T12:00:00Z")
    ),
    "router-pdb": lambda: _documents(build_router_pdb(BASE)),
    "shard-service": lambda: _documents(build_shard_service(BASE, LAYOUT, 1, tls=True)),
    "shard-pdb": lambda: _documents(build_shard_pdb(BASE, LAYOUT, 1)),
    "shard-service-account": lambda: _documents(build_shard_service_account(BASE)),
    "router-deployment": lambda: _documents(build_router_deployment(BASE)),
    "router-deployment-autoscaled-with-auth": lambda: _documents(build_router_deployment(AUTOSCALED)),
    "router-service": lambda: _documents(build_router_service(BASE)),
    "router-config": lambda: _documents(build_router_config(AUTOSCALED)),
    "router-hpa": lambda: _documents(build_router_hpa(AUTOSCALED)),
    "router-rbac": lambda: _documents(
        build_router_service_account(BASE), build_router_role(BASE), build_router_role_binding(BASE)
    ),
    "network-policy": lambda: _documents(build_shard_network_policy(BASE)),
    # The carry of item writes into a new layout (desired/carry.py): the carrier and what admits it.
    "network-policy-with-carriers": lambda: _documents(build_shard_network_policy(WRITES, carriers=True)),
    "carrier-rbac": lambda: _documents(*build_carrier_identity(WRITES)),
    "carrier": lambda: _carrier(WRITES_V2, WRITES, CarrierRequests(), prior=False),
    "carrier-handing-over-object-store": lambda: _carrier(
        OBJECT_STORE_WRITES_V2,
        OBJECT_STORE_WRITES,
        CarrierRequests(hand_over="hand-over-7-1764000000"),
        prior=True,
    ),
    # spec.podTemplates.carrier merged over the carrier pod (placement, pull secrets, an env
    # variable); the operator's labels, env and volumes stay.
    "carrier-with-pod-template": lambda: _carrier(
        cluster(**{**_writes_v2_document(), "podTemplates": {"carrier": {**PLACEMENT, "env": PROXY_ENV}}}),
        WRITES,
        CarrierRequests(),
        prior=False,
    ),
    # A rollback with writes on: v2's writes carried back into the kept v1 (no cut, no prior carry).
    "carrier-back": lambda: _carrier(WRITES, WRITES_V2, CarrierRequests(), prior=False, back=True),
    "carrier-back-finishing-object-store": lambda: _carrier(
        OBJECT_STORE_WRITES,
        OBJECT_STORE_WRITES_V2,
        CarrierRequests(hand_over="hand-over-9-1764000000", finish="finish-9-1764000100"),
        prior=True,  # asked for, but a carry back folds in nothing
        back=True,
    ),
    "build-job-carried": lambda: _documents(
        build_index_job(WRITES_V2, layout_of(WRITES_V2), "2026-11-23T12:00:00Z", carried=True)
    ),
    # An Indexed Job (object store, two shards): every part folds in the same carry folder.
    "build-job-carried-per-shard": lambda: _documents(
        build_index_job(
            OBJECT_STORE_WRITES_V2, layout_of(OBJECT_STORE_WRITES_V2), "2026-11-23T12:00:00Z", carried=True
        )
    ),
    "network-policy-with-monitoring": lambda: _documents(build_shard_network_policy(MONITORED)),
    "service-monitor": lambda: _documents(build_service_monitor(MONITORED)),
    "topology-configmap": lambda: _documents(
        build_topology_configmap(
            BASE, Topology(revision=3, active=build_layout_topology(BASE, LAYOUT, {0: 2, 1: 2}))
        )
    ),
}


class _ReviewableDumper(yaml.SafeDumper):
    """Multi-line strings (the JSON inside ConfigMaps) as literal blocks a reviewer can read."""


def _string(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_ReviewableDumper.add_representer(str, _string)


def render(documents: list[Any]) -> str:
    return yaml.dump_all(
        documents, Dumper=_ReviewableDumper, sort_keys=False, default_flow_style=False, width=100
    )


@pytest.mark.parametrize("name", sorted(CASES))
def test_builder_output_matches_reviewed_golden_manifest(name: str) -> None:
    path = GOLDEN / f"{name}.yaml"
    rendered = render(CASES[name]())
    if UPDATE:
        path.write_text(rendered, encoding="utf-8")
        pytest.skip(f"regenerated {path.name}")
    assert path.is_file(), f"no golden {path.name}: run SHARDREC_UPDATE_GOLDEN=1 pytest {__file__}"
    assert rendered == path.read_text(encoding="utf-8"), (
        f"{name} changed; if intended, regenerate with SHARDREC_UPDATE_GOLDEN=1 and review the diff"
    )


def test_every_golden_file_belongs_to_a_case() -> None:
    stale = sorted(p.stem for p in GOLDEN.glob("*.yaml") if p.stem not in CASES)
    assert not stale, f"golden files without a test case: {stale}"
