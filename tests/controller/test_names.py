"""Kubernetes name limits of the operator's child objects (desired/names.py)."""

from __future__ import annotations

import pytest

from shardrec.planning import layout_id
from shardrec_operator.desired.names import MAX_WORKLOAD_NAME_LENGTH, shard_workload_name
from tests.planning.world import make_spec


def test_shard_workload_name_fits_and_long_cluster_names_are_refused() -> None:
    layout = layout_id(make_spec())
    assert shard_workload_name("demo", layout, 3) == f"demo-{layout}-3"
    longest = "c" * (MAX_WORKLOAD_NAME_LENGTH - len(f"-{layout}-1023"))
    assert len(shard_workload_name(longest, layout, 1023)) == MAX_WORKLOAD_NAME_LENGTH
    with pytest.raises(ValueError, match=r"metadata.name .* too long.*at most 36"):
        shard_workload_name(longest + "c", layout, 1023)
    with pytest.raises(ValueError, match="shard must be >= 0"):
        shard_workload_name("demo", layout, -1)
