"""A cluster object living in the API double, reconciled pass by pass with a controllable clock."""

from __future__ import annotations

import copy
from datetime import datetime, timedelta
from typing import Any

from shardrec.api.topology import TOPOLOGY_CONFIGMAP_KEY, Topology
from shardrec_operator.desired import names
from shardrec_operator.reconcile import resources as kinds
from shardrec_operator.reconcile.driver import ReconcileResult, reconcile_cluster
from shardrec_operator.reconcile.expectations import Expectations
from shardrec_operator.reconcile.loading import load_cluster
from tests.controller.fake_api import FakeClusterApi
from tests.controller.samples import NAME, NAMESPACE, T0, body


class World:
    def __init__(self, document: dict[str, Any] | None = None, *, now: datetime = T0) -> None:
        self.api = FakeClusterApi()
        self.api.add_node("node-a", "zone-a")
        self.api.add_node("node-b", "zone-b")
        self.body = document or body()
        self.expectations = Expectations()
        self.now = now
        self.events: list[tuple[str, str, str]] = []

    def reconcile(self, *, advance: float = 5.0, controllers: bool = True) -> ReconcileResult:
        """One operator pass; then time moves on and (by default) the controllers react."""
        cluster = load_cluster(self.body)
        result = reconcile_cluster(self.api, cluster, self.body.get("status"), self.now, self.expectations)
        if result.status is not None:
            self.body["status"] = copy.deepcopy(result.status)
        self.events += [(e.type, e.reason, e.message) for e in result.events]
        self.now += timedelta(seconds=advance)
        if controllers:
            self.api.run_controllers()
        return result

    def settle(self, *, max_passes: int = 12, advance: float = 5.0) -> ReconcileResult:
        """Reconcile until a pass neither writes nor changes the status."""
        for _ in range(max_passes):
            result = self.reconcile(advance=advance)
            if result.writes == 0 and result.status is None:
                return result
        raise AssertionError(f"did not settle in {max_passes} passes; status: {self.status}")

    def change(self, **spec_overrides: Any) -> None:
        """A user edit: spec keys replaced (nested dicts merged one level), generation bumped."""
        for key, value in spec_overrides.items():
            if isinstance(value, dict) and isinstance(self.body["spec"].get(key), dict):
                self.body["spec"][key] = {**self.body["spec"][key], **value}
            else:
                self.body["spec"][key] = value
        self.body["metadata"]["generation"] += 1

    @property
    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = self.body.get("status") or {}
        return status

    def condition(self, type_: str) -> dict[str, Any]:
        return next(c for c in self.status["conditions"] if c["type"] == type_)

    def topology(self) -> Topology | None:
        configmap = self.api.get(kinds.CONFIG_MAP, NAMESPACE, names.topology(NAME))
        if configmap is None:
            return None
        return Topology.model_validate_json(configmap["data"][TOPOLOGY_CONFIGMAP_KEY])

    def active_layout(self) -> str | None:
        topology = self.topology()
        return topology.active.layout if topology is not None and topology.active is not None else None

    def layouts_with_statefulsets(self) -> set[str]:
        return {s["metadata"]["labels"]["shardrec.io/layout"] for s in self.api.of_kind(kinds.STATEFUL_SET)}

    def event_reasons(self) -> list[str]:
        return [reason for _, reason, _ in self.events]
