"""The committed CRD is exactly what the models generate, and it is a valid structural schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from shardrec.api import v1alpha1 as api
from shardrec.api.crd import CRD_FILENAME, build_crd, render_crd_yaml

REPO = Path(__file__).resolve().parents[2]


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        found.append((path, node))
        for name, child in node.get("properties", {}).items():
            found.extend(_walk(child, f"{path}.{name}"))
        if isinstance(node.get("items"), dict):
            found.extend(_walk(node["items"], f"{path}[]"))
        if isinstance(node.get("additionalProperties"), dict):
            found.extend(_walk(node["additionalProperties"], f"{path}{{}}"))
    return found


def _schema() -> dict[str, Any]:
    schema: dict[str, Any] = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def test_committed_crd_matches_the_models_byte_for_byte() -> None:
    committed = (REPO / "crds" / CRD_FILENAME).read_text(encoding="utf-8")
    assert committed == render_crd_yaml(), "crds/ is stale: run `make crds` and commit the result"


def test_crd_is_apiextensions_v1_with_status_and_printer_columns() -> None:
    crd = yaml.safe_load(render_crd_yaml())
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["metadata"]["name"] == f"{api.PLURAL}.{api.GROUP}"
    version = crd["spec"]["versions"][0]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"]["status"] == {}
    scale = version["subresources"]["scale"]
    assert scale["specReplicasPath"] == ".spec.replicasPerShard"
    status_fields = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    for path in (scale["statusReplicasPath"], scale["labelSelectorPath"]):
        assert path.startswith(".status.") and path.removeprefix(".status.") in status_fields, path
    columns = {column["name"] for column in version["additionalPrinterColumns"]}
    assert {"Shards", "Replicas", "Active", "Phase", "Ready", "Age"} <= columns
    assert "rc" not in crd["spec"]["names"]["shortNames"]


def test_schema_is_structural_every_node_typed_no_refs_or_any_of() -> None:
    for path, node in _walk(_schema()):
        assert "type" in node, f"{path} has no type"
        assert "$ref" not in node and "anyOf" not in node and "title" not in node, path


def test_exclusive_bounds_are_openapi_v3_booleans_beside_their_bound() -> None:
    """OpenAPI v3.0 (what apiextensions.k8s.io/v1 reads) has `exclusiveMinimum: true` beside
    `minimum`; pydantic writes JSON Schema 2020's `exclusiveMinimum: 0`, which the API server
    refuses when it installs the CRD ("cannot unmarshal number ... of type bool")."""
    for path, node in _walk(_schema()):
        for exclusive, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
            if exclusive in node:
                assert node[exclusive] is True and bound in node, (path, node)
    rate = _schema()["properties"]["spec"]["properties"]["rollout"]["properties"]["canary"]
    shadow = rate["properties"]["steps"]["items"]["properties"]["shadow"]["properties"]["sampleRate"]
    assert (shadow["minimum"], shadow["exclusiveMinimum"], shadow["maximum"]) == (0, True, 1)


def test_every_spec_and_status_field_has_a_description() -> None:
    schema = _schema()
    for root in ("spec", "status"):
        for path, node in _walk(schema["properties"][root], root):
            if "[]" in path.rsplit(".", 1)[-1] or path.endswith("{}"):
                continue
            assert node.get("description"), f"{path} has no description"


def test_cel_rules_are_carried_into_the_crd() -> None:
    rules = [
        rule["rule"] for _, node in _walk(_schema()) for rule in node.get("x-kubernetes-validations", [])
    ]
    assert "self.metric == oldSelf.metric" in rules
    assert "self.dimension == oldSelf.dimension" in rules
    assert "self.efConstruction >= self.m" in rules
    assert "self.minReplicas <= self.maxReplicas" in rules
    assert any("hedging.afterMs < self.timeoutMs" in rule for rule in rules)


def test_defaults_in_the_crd_equal_the_model_defaults() -> None:
    spec = _schema()["properties"]["spec"]["properties"]
    model = api.RecommenderClusterSpec.model_validate(
        {"index": {"version": "v1", "source": "/d", "dimension": 8}}
    ).model_dump(by_alias=True)
    assert spec["replicasPerShard"]["default"] == model["replicasPerShard"]
    assert spec["router"]["properties"]["timeoutMs"]["default"] == model["router"]["timeoutMs"]
    assert spec["router"]["default"]["timeoutMs"] == model["router"]["timeoutMs"], "nested defaults filled in"
    assert "default" not in spec["router"]["properties"]["autoscaling"], "absent autoscaling means off"


def _objects_with_rules(node: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(path, n) for path, n in _walk(node) if n.get("x-kubernetes-validations")]


def test_defaults_of_objects_with_cel_rules_satisfy_those_rules() -> None:
    """The API server checks a default against the object's CEL rules at CRD creation, without
    filling nested defaults first: `default: {}` on hnsw failed with `no such key: efConstruction`."""
    from shardrec.api import cel

    checked = 0
    for path, node in _objects_with_rules(_schema()["properties"]["spec"]):
        if "default" not in node:
            continue
        for rule in node["x-kubernetes-validations"]:
            if cel.is_transition_rule(rule["rule"]):
                continue
            assert cel.evaluate(rule["rule"], node["default"]), f"{path}: default breaks {rule['rule']}"
            checked += 1
    assert checked >= 2


def test_object_defaults_are_fully_filled_like_the_model() -> None:
    spec = _schema()["properties"]["spec"]["properties"]
    assert spec["index"]["properties"]["hnsw"]["default"] == {"m": 16, "efConstruction": 200, "efSearch": 64}
    assert spec["router"]["default"]["hedging"] == {"enabled": True, "afterMs": 20, "budgetPercent": 10}
