"""Topology sources: the watched file (sub-second propagation, bad documents keep the previous one)
and ConfigMap documents; plus the router's command line."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from shardrec.api.topology import TOPOLOGY_CONFIGMAP_KEY, Topology
from shardrec.serving.router.main import UsageError, build_parser, settings_from_args
from shardrec.serving.router.topology_source import (
    ConfigMapTopologySource,
    FileTopologySource,
    TopologySourceError,
    parse_topology,
)


def topology(revision: int, version: str = "v1") -> dict[str, Any]:
    return {
        "revision": revision,
        "active": {
            "layout": f"L-{version}",
            "version": version,
            "shards": 1,
            "dimension": 4,
            "metric": "ip",
            "artifact_dir": f"/layouts/L-{version}",
            "endpoints": [{"shard": 0, "replicas": [{"name": "r0", "url": "http://127.0.0.1:9100"}]}],
        },
    }


async def until(predicate: Any, limit_s: float = 10.0) -> None:
    """Bounded wait for a condition (not a timing assertion: the bound only stops a hang)."""
    deadline = asyncio.get_running_loop().time() + limit_s
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def test_file_source_applies_the_current_file_and_every_change(tmp_path: Path) -> None:
    path = tmp_path / "topology.json"
    path.write_text(json.dumps(topology(1)))
    applied: list[Topology] = []
    errors: list[str] = []

    async def apply(item: Topology) -> None:
        applied.append(item)

    async def scenario() -> None:
        source = FileTopologySource(path, poll_interval_s=0.01)
        task = asyncio.create_task(source.watch(apply, errors.append))
        await until(lambda: len(applied) == 1)
        staging = tmp_path / "next.json"
        staging.write_text(json.dumps(topology(2, "v2")))
        staging.replace(path)
        await until(lambda: len(applied) == 2)
        path.write_text("{ half written")
        await until(lambda: len(errors) == 1)
        path.write_text(json.dumps(topology(3, "v3")))
        await until(lambda: len(applied) == 3)
        task.cancel()

    asyncio.run(scenario())
    assert [t.revision for t in applied] == [1, 2, 3]
    assert applied[1].active is not None and applied[1].active.version == "v2"
    assert "invalid topology" in errors[0] and str(path) in errors[0]


def test_file_source_waits_for_a_missing_file_and_retries_a_rejected_document(tmp_path: Path) -> None:
    path = tmp_path / "topology.json"
    attempts: list[int] = []
    errors: list[str] = []

    async def apply(item: Topology) -> None:
        attempts.append(item.revision)
        if len(attempts) == 1:
            raise ValueError("artifact not there yet")

    async def scenario() -> None:
        source = FileTopologySource(path, poll_interval_s=0.01, retry_interval_s=0.05)
        task = asyncio.create_task(source.watch(apply, errors.append))
        await asyncio.sleep(0.05)
        assert attempts == []  # nothing to read yet, and no error either
        path.write_text(json.dumps(topology(1)))
        await until(lambda: len(attempts) == 2)
        task.cancel()

    asyncio.run(scenario())
    assert attempts == [1, 1]
    assert errors == [f"{path}: artifact not there yet"]


def test_parse_topology_names_the_source_and_field() -> None:
    bad = topology(1)
    bad["active"]["endpoints"] = []
    with pytest.raises(TopologySourceError, match=r"cm ns/x: invalid topology: active: .*shards 0..0"):
        parse_topology(json.dumps(bad), "cm ns/x")
    with pytest.raises(TopologySourceError, match="revision"):
        parse_topology('{"active": null}', "file")


def test_configmap_documents_are_parsed_or_reported() -> None:
    source = ConfigMapTopologySource("shop", "recs-topology")
    delivered: list[Topology | TopologySourceError] = []
    source._deliver_object(
        SimpleNamespace(data={TOPOLOGY_CONFIGMAP_KEY: json.dumps(topology(4))}), delivered.append
    )
    source._deliver_object(SimpleNamespace(data={"other": "x"}), delivered.append)
    source._deliver_object(SimpleNamespace(data=None), delivered.append)
    source._deliver_object(SimpleNamespace(data={TOPOLOGY_CONFIGMAP_KEY: "[]"}), delivered.append)
    assert isinstance(delivered[0], Topology) and delivered[0].revision == 4
    assert [type(item) for item in delivered[1:]] == [TopologySourceError] * 3  # told apart by type
    assert (
        str(delivered[1]) == str(delivered[2]) == "configmap shop/recs-topology: has no key 'topology.json'"
    )
    assert "invalid topology" in str(delivered[3])


def test_command_line_checks_name_the_flag(tmp_path: Path) -> None:
    parser = build_parser()

    def settle(*argv: str) -> Any:
        return settings_from_args(parser.parse_args(list(argv)))

    with pytest.raises(UsageError, match="exactly one of --topology-file and --topology-configmap"):
        settle("--port", "1")
    with pytest.raises(UsageError, match="--port: not a number"):
        settle("--topology-file", "t.json", "--port", "x")
    with pytest.raises(UsageError, match="--topology-configmap: expected NAMESPACE/NAME"):
        settle("--topology-configmap", "justname", "--port", "1")
    config = tmp_path / "router.json"
    config.write_text(json.dumps({"router": {"timeoutMs": 5}}))
    with pytest.raises(UsageError, match=r"router.json: invalid router config: router.timeoutMs"):
        settle("--topology-file", "t.json", "--port", "1", "--router-config", str(config))
    config.write_text(json.dumps({"auth": {"apiKeysSecretRef": {"name": "keys"}}}))
    with pytest.raises(UsageError, match="--api-keys-file: required"):
        settle("--topology-file", "t.json", "--port", "1", "--router-config", str(config))
    config.write_text(json.dumps({"router": {"consistency": "available", "hedging": {"afterMs": 5}}}))
    settings, source, port = settle(
        "--topology-file", "t.json", "--port", "8080", "--router-config", str(config)
    )
    assert port == 8080 and isinstance(source, FileTopologySource)
    assert settings.tuning.max_batches_in_flight_per_replica == 1
    with pytest.raises(UsageError, match="--batches-in-flight-per-replica: must be at least 1"):
        settle("--topology-file", "t.json", "--port", "1", "--batches-in-flight-per-replica", "0")
    assert settings.config.router.consistency == "available"
    assert settings.config.router.hedging.after_ms == 5
