"""What makes a layout, its id, and the names derived from it."""

from __future__ import annotations

import hashlib
import json
import re

import pytest

from shardrec.planning import LayoutSpec, layout_id, layout_spec_of
from tests.planning.world import make_spec


def test_layout_spec_takes_every_build_input_from_the_spec() -> None:
    spec = make_spec(
        shards=3, index={"version": "v7", "metric": "l2", "hnsw": {"m": 8, "efConstruction": 64}}
    )
    layout = layout_spec_of(spec)
    assert layout == LayoutSpec(
        version="v7",
        source="/data/emb",
        shards=3,
        partitioning="jump-hash-item-id",
        dimension=8,
        metric="l2",
        hnsw_m=8,
        hnsw_ef_construction=64,
    )


def test_id_is_ten_hex_characters_of_the_canonical_json_sha256() -> None:
    layout = layout_spec_of(make_spec())
    expected = hashlib.sha256(layout.canonical_json().encode()).hexdigest()[:10]
    assert layout_id(layout) == expected == layout.id
    assert re.fullmatch(r"[0-9a-f]{10}", layout.id)
    assert layout_id(make_spec()) == layout.id  # a cluster spec names its target layout


def test_id_is_pinned_so_child_names_survive_releases() -> None:
    # Changing the canonical form renames every child object of every running cluster.
    assert layout_id(make_spec()) == "92d51f2809"


def test_canonical_json_is_sorted_and_compact() -> None:
    text = layout_spec_of(make_spec()).canonical_json()
    data = json.loads(text)
    assert list(data) == sorted(data)
    assert " " not in text


@pytest.mark.parametrize(
    "changes",
    [
        {"replicasPerShard": 5},
        {"index": {"version": "v1", "source": "/data/emb", "dimension": 8, "hnsw": {"efSearch": 500}}},
        {"router": {"replicas": 7}},
        {"paused": True},
        {"rollout": {"timeoutSeconds": 99}},
    ],
)
def test_knobs_that_do_not_change_index_bytes_keep_the_layout(changes: dict[str, object]) -> None:
    assert layout_id(make_spec(**changes)) == layout_id(make_spec())


@pytest.mark.parametrize(
    "changes",
    [
        {"shards": 3},
        {"index": {"version": "v2"}},
        {"index": {"source": "/data/other"}},
        {"index": {"metric": "ip"}},
        {"index": {"dimension": 16}},
        {"index": {"hnsw": {"m": 32}}},
        {"index": {"hnsw": {"efConstruction": 400}}},
    ],
)
def test_every_build_input_makes_a_new_layout(changes: dict[str, object]) -> None:
    assert layout_id(make_spec(**changes)) != layout_id(make_spec())


def test_json_round_trip_and_errors_name_the_field() -> None:
    layout = layout_spec_of(make_spec())
    assert LayoutSpec.from_json(layout.canonical_json()) == layout
    with pytest.raises(ValueError, match="not JSON"):
        LayoutSpec.from_json("{")
    with pytest.raises(ValueError, match=r"missing \['version'\]"):
        data = json.loads(layout.canonical_json())
        del data["version"]
        LayoutSpec.from_json(json.dumps(data))
    with pytest.raises(ValueError, match="shards must be a positive integer"):
        LayoutSpec.from_json(layout.canonical_json().replace('"shards":2', '"shards":0'))
    with pytest.raises(ValueError, match="metric"):
        LayoutSpec.from_json(layout.canonical_json().replace('"cosine"', '"hamming"'))


def test_writes_off_leave_the_id_and_the_canonical_json_as_before() -> None:
    off = make_spec(writes={"enabled": False, "logVolume": {"size": "5Gi", "storageClassName": "fast"}})
    assert layout_id(off) == "92d51f2809"
    assert "write_log" not in layout_spec_of(off).canonical_json()
    assert not layout_spec_of(off).write_log


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ({"enabled": False}, {"enabled": True}),
        ({"enabled": True}, {"enabled": True, "logVolume": {"size": "2Gi"}}),
        ({"enabled": True}, {"enabled": True, "logVolume": {"storageClassName": "fast"}}),
    ],
)
def test_the_write_log_shape_makes_a_new_layout(before: dict[str, object], after: dict[str, object]) -> None:
    # A StatefulSet's volumeClaimTemplates cannot change: a layout's claims are fixed at its creation.
    assert layout_id(make_spec(writes=before)) != layout_id(make_spec(writes=after))


def test_the_ack_policy_is_not_part_of_the_layout() -> None:
    assert layout_id(make_spec(writes={"enabled": True, "ack": "majority"})) == layout_id(
        make_spec(writes={"enabled": True})
    )


def test_a_write_log_layout_round_trips_through_json() -> None:
    layout = layout_spec_of(make_spec(writes={"enabled": True, "logVolume": {"storageClassName": "ssd"}}))
    assert (layout.write_log, layout.write_log_size, layout.write_log_storage_class) == (True, "1Gi", "ssd")
    assert LayoutSpec.from_json(layout.canonical_json()) == layout
    data = json.loads(layout.canonical_json())
    data["write_log_size"] = ""
    with pytest.raises(ValueError, match="write_log_size must be a non-empty string"):
        LayoutSpec.from_json(json.dumps(data))
    del data["write_log_size"]
    with pytest.raises(ValueError, match="write_log_storage_class needs write_log_size"):
        LayoutSpec.from_json(json.dumps(data))
