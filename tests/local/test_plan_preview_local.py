"""The local runtime's plan-preview inputs: item count from a local items.npy header, the measured
rates of the repository's coefficients, and `status.planPreview` of a paused cluster."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shardrec.api.v1alpha1 import RecommenderCluster, RecommenderClusterStatus
from shardrec.planning.layouts import layout_id
from shardrec.tools.capacity.coefficients import CoefficientsError
from shardrec.tools.local.plan_preview import item_count, measured_rates, paused_preview


def cluster(source: str, version: str = "v1", paused: bool = False) -> RecommenderCluster:
    return RecommenderCluster.model_validate(
        {
            "metadata": {"name": "movies", "generation": 3},
            "spec": {
                "shards": 2,
                "replicasPerShard": 1,
                "paused": paused,
                "index": {"version": version, "source": source, "dimension": 8},
            },
        }
    )


@pytest.mark.parametrize("rows", [1, 123])
def test_item_count_reads_the_header_only(tmp_path: Path, rows: int) -> None:
    np.save(tmp_path / "items.npy", np.zeros((rows, 8), dtype=np.float32))
    assert item_count(str(tmp_path)) == rows
    assert item_count(f"file://{tmp_path}") == rows


def test_item_count_is_unknown_elsewhere(tmp_path: Path) -> None:
    assert item_count("pvc://claim/emb") is None
    assert item_count(str(tmp_path / "missing")) is None
    (tmp_path / "items.npy").write_bytes(b"not numpy")
    assert item_count(str(tmp_path)) is None


def test_measured_rates_come_from_the_coefficients(tmp_path: Path) -> None:
    rates = measured_rates(64, 16)
    assert rates.build_items_per_core_second > 0 and rates.resident_bytes_per_item > 4 * 64
    assert measured_rates(128, 16).resident_bytes_per_item == pytest.approx(
        rates.resident_bytes_per_item + 4 * 64
    )
    with pytest.raises(CoefficientsError, match=r"missing\.json"):
        measured_rates(64, 16, tmp_path / "missing.json")


def test_a_paused_local_cluster_previews_its_change(tmp_path: Path) -> None:
    np.save(tmp_path / "items.npy", np.zeros((1000, 8), dtype=np.float32))
    old = cluster(str(tmp_path))
    lid = layout_id(old.spec)
    previous = RecommenderClusterStatus.model_validate(
        {
            "activeLayout": lid,
            "activeVersion": "v1",
            "replicasPerShard": 1,
            "routers": {"readyReplicas": 2},
            "layouts": [{"name": lid, "version": "v1", "shards": 2, "state": "Serving",
                         "createdAt": "t", "stateSince": "t"}],
        }
    )  # fmt: skip
    status = paused_preview(cluster(str(tmp_path), version="v2", paused=True), previous)
    assert status.kind == "rebuild"
    assert status.generation == 3
    assert status.breaks_availability  # one replica per shard
    assert "~500 items per shard" in status.text
    assert "Expected duration: ~" in status.text
    assert "Note: spec.paused is true: nothing of this happens until it is false" in status.text.splitlines()
