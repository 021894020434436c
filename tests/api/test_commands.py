"""The command-line builders of shardrec.api.commands agree with the parsers of the processes."""

from __future__ import annotations

import pytest

from shardrec.api import commands
from shardrec.api import v1alpha1 as api
from shardrec.api.commands import (
    DEFAULT_EF_SEARCH,
    MAX_K,
    ObjectStoreFlags,
    ShardFlags,
    env_name,
    index_build_arguments,
    index_delete_arguments,
    index_fetch_arguments,
    router_arguments,
    shard_arguments,
)
from shardrec.planning.layouts import LayoutSpec
from shardrec.serving.router import main as router_main
from shardrec.serving.router.config import Limits
from shardrec.serving.shard import main as shard_main
from shardrec.tools.cli.main import build_parser


def test_index_build_arguments_are_accepted_by_recctl_and_pin_the_whole_layout() -> None:
    """The operator's build Job and the local runtime run this one command line."""
    layout = LayoutSpec(
        version="v7", source="/data/emb", shards=3, partitioning="jump-hash-item-id",
        dimension=32, metric="l2", hnsw_m=12, hnsw_ef_construction=100,
    )  # fmt: skip
    args = build_parser().parse_args(index_build_arguments(layout, "/data/emb", "/store/l"))
    assert (args.version, args.shards, args.metric, args.m, args.ef_construction) == ("v7", 3, "l2", 12, 100)
    assert args.dimension == 32, "a build must refuse embeddings of another dimension"
    assert args.layout == layout.id
    assert str(args.embeddings) == "/data/emb" and str(args.out) == "/store/l"
    assert args.workers is None, "without a CPU the builder counts its own (affinity and quota)"
    threads = build_parser().parse_args(index_build_arguments(layout, "/data/emb", "/store/l", workers=3))
    assert threads.workers == 3
    assert (threads.only_shard, threads.publish_when_complete) == (None, False)
    # The Indexed Job's pod: the kubelet expands $(JOB_COMPLETION_INDEX) to the shard number.
    part = index_build_arguments(layout, "/data/emb", "/store/l", only_shard="$(JOB_COMPLETION_INDEX)")
    expanded = [a.replace("$(JOB_COMPLETION_INDEX)", "2") for a in part]
    one = build_parser().parse_args(expanded)
    assert (one.only_shard, one.publish_when_complete) == (2, True)


def test_shard_arguments_are_what_the_shard_server_parses() -> None:
    argv = shard_arguments(
        layout_dir="/store/l",
        shard=2,
        host="0.0.0.0",
        port=9100,
        ef_search=80,
        search_threads=3,
        drain_seconds=7,
    )
    args = shard_main.build_parser().parse_args(argv)
    assert (str(args.layout_dir), args.shard, args.host, args.port) == ("/store/l", 2, "0.0.0.0", 9100)
    assert (args.ef_search, args.search_threads, args.drain_seconds) == (80, 3, 7.0)
    bare = shard_main.build_parser().parse_args(
        shard_arguments(layout_dir=None, shard=None, host="127.0.0.1", port=0)
    )
    assert bare.layout_dir is None and bare.shard is None and bare.ef_search == DEFAULT_EF_SEARCH


def test_router_arguments_are_what_the_router_parses() -> None:
    argv = router_arguments(
        topology_configmap="ns/demo-topology", router_config="/c.json", host="0.0.0.0", port=8080,
        api_keys_file="/k/keys",
    )  # fmt: skip
    args = router_main.build_parser().parse_args(argv)
    assert (args.topology_configmap, args.topology_file, args.router_config) == (
        "ns/demo-topology",
        None,
        "/c.json",
    )
    assert (args.host, args.port, args.api_keys_file) == ("0.0.0.0", "8080", "/k/keys")
    with pytest.raises(ValueError, match="exactly one"):
        router_arguments(topology_file="/t", topology_configmap="ns/t", host="h", port=1)


def test_every_flag_of_a_server_reads_shardrec_process_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    assert env_name("shard", ShardFlags.EF_SEARCH) == "SHARDREC_SHARD_EF_SEARCH"
    assert env_name("router", "--api-keys-file") == "SHARDREC_ROUTER_API_KEYS_FILE"
    monkeypatch.setenv("SHARDREC_SHARD_EF_SEARCH", "99")
    monkeypatch.setenv("SHARDREC_SHARD_LAYOUT_DIR", "/from/env")
    monkeypatch.setenv("SHARDREC_ROUTER_PORT", "8181")
    shard = shard_main.build_parser().parse_args([])
    assert (shard.ef_search, str(shard.layout_dir)) == (99, "/from/env")
    assert shard_main.build_parser().parse_args([ShardFlags.EF_SEARCH, "70"]).ef_search == 70, "a flag wins"
    assert router_main.build_parser().parse_args([]).port == "8181"


def test_shared_defaults_have_one_home() -> None:
    assert api.HnswSpec().ef_search == DEFAULT_EF_SEARCH
    assert Limits().max_k == MAX_K


def test_object_store_commands_are_accepted_by_recctl(monkeypatch: pytest.MonkeyPatch) -> None:
    """The operator's init containers, build Jobs and GC run these; no credential is ever a flag."""
    for name in ("SHARDREC_S3_ENDPOINT", "SHARDREC_S3_REGION", "SHARDREC_S3_PATH_STYLE"):
        monkeypatch.delenv(name, raising=False)
    flags = ObjectStoreFlags(endpoint="http://seaweed:8333", region="eu-west-1", path_style=True)
    assert ObjectStoreFlags().arguments() == []
    layout = LayoutSpec(
        version="v7", source="s3://b/emb", shards=3, partitioning="jump-hash-item-id",
        dimension=32, metric="l2", hnsw_m=12, hnsw_ef_construction=100,
    )  # fmt: skip
    parser = build_parser()
    build = parser.parse_args(index_build_arguments(layout, "s3://b/emb", "s3://b/store/l1", flags))
    assert (build.embeddings, build.out) == ("s3://b/emb", "s3://b/store/l1")
    fetch = parser.parse_args(index_fetch_arguments(store="s3://b/store", layout="l1", dest="/d", shard=2,
                                                    object_store=flags))  # fmt: skip
    assert (fetch.store, fetch.layout, fetch.shard, fetch.router) == ("s3://b/store", "l1", 2, False)
    router = parser.parse_args(index_fetch_arguments(store="/store", layout="l1", dest="/d", shard=None))
    assert router.router and router.shard is None and router.s3_endpoint is None
    delete = parser.parse_args(index_delete_arguments(store="s3://b/store", layout="l1", object_store=flags))
    for parsed in (build, fetch, delete):
        assert (parsed.s3_endpoint, parsed.s3_region, parsed.s3_path_style) == (
            "http://seaweed:8333",
            "eu-west-1",
            True,
        )
    rendered = " ".join(index_fetch_arguments(store="s", layout="l", dest="d", shard=0, object_store=flags))
    assert "AWS_" not in rendered and "secret" not in rendered.lower()


def test_a_build_report_carries_only_what_the_quality_gate_reads_and_stays_under_the_kubelet_limit() -> None:
    quality = {"split": "test", "ndcg_at_10": 0.03, "hit_rate_at_10": 0.07, "per_user": list(range(5000))}
    report = commands.build_report("lay-1", "v1", quality)
    assert len(report.encode()) < commands.BUILD_REPORT_LIMIT
    kept = {"split": "test", "ndcg_at_10": 0.03, "hit_rate_at_10": 0.07}
    assert commands.reported_quality(report, "lay-1") == kept
    assert commands.reported_quality(report, "lay-2") is None
    assert commands.reported_quality(commands.build_report("lay-1", "v1", None), "lay-1") is None
    assert commands.reported_quality("Error: out of memory", "lay-1") is None
