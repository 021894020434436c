"""`recctl plan` end to end: where the current state comes from (nothing, --status object or
bare status, the local runtime's state folder), the item count from a local source, JSON, and
errors that name the bad flag or file."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from shardrec.api.v1alpha1 import RecommenderClusterSpec
from shardrec.planning.layouts import layout_id
from shardrec.tools.cli.main import main

REPO = Path(__file__).resolve().parents[2]
MEASURED = REPO / "benchmarks" / "coefficients.json"


def cluster_document(version: str = "v1", source: str = "/nonexistent/emb", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "shardrec.io/v1alpha1",
        "kind": "RecommenderCluster",
        "metadata": {"name": "movies"},
        "spec": {
            "shards": 2,
            "replicasPerShard": 2,
            "index": {"version": version, "source": source, "dimension": 8},
            "resources": {"shard": {"requests": {"cpu": "1", "memory": "512Mi"}}},
            **spec,
        },
    }


def status_of(document: dict[str, Any]) -> dict[str, Any]:
    spec = RecommenderClusterSpec.model_validate(document["spec"])
    lid = layout_id(spec)
    return {
        "phase": "Ready",
        "activeLayout": lid,
        "activeVersion": spec.index.version,
        "replicasPerShard": spec.replicas_per_shard,
        "routers": {"readyReplicas": 2},
        "layouts": [
            {"name": lid, "version": spec.index.version, "shards": spec.shards, "state": "Serving",
             "createdAt": "2026-12-01T00:00:00Z", "stateSince": "2026-12-01T00:00:00Z"}
        ],
    }  # fmt: skip


def write(path: Path, document: Any) -> Path:
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no .shardrec/ state folder unless a test writes one


def test_nothing_deployed_with_measured_rates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cr = write(tmp_path / "cr.yaml", cluster_document())
    assert main(["plan", "-f", str(cr), "--items", "10000", "--coefficients", str(MEASURED)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Plan for RecommenderCluster movies: create layout ")
    assert "~5,000 items per shard" in out
    assert "Expected duration: ~" in out
    assert "measured estimate of their shard memory (resident)" in out
    assert f"Rates: {MEASURED} (measured 20" in out


def test_a_whole_object_as_status_compares_specs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    current = cluster_document()
    current["status"] = status_of(current)
    status = write(tmp_path / "current.yaml", current)
    new = cluster_document()
    new["spec"]["index"]["hnsw"] = {"efSearch": 300}
    cr = write(tmp_path / "cr.yaml", new)
    assert main(["plan", "-f", str(cr), "--status", str(status), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["kind"] == "live"
    assert document["disruptive"] is False
    assert document["changes"][0].startswith("index.hnsw.efSearch 64 -> 300: live")


def test_a_bare_status_and_a_new_version(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = write(tmp_path / "status.yaml", status_of(cluster_document()))
    cr = write(tmp_path / "cr.yaml", cluster_document(version="v2"))
    assert main(["plan", "-f", str(cr), "--status", str(status)]) == 0
    out = capsys.readouterr().out
    assert ": build layout " in out.splitlines()[0]
    assert "  - index.version v1 -> v2\n  - => new layout " in out
    assert "Peak extra: 4 pod(s); requests to schedule: cpu 4 cores, memory 2.00 GiB" in out
    assert "Not computed: item count unknown" in out


def test_the_local_runtime_state_is_found_by_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    current = cluster_document()
    state = tmp_path / ".shardrec" / "movies"
    state.mkdir(parents=True)
    write(state / "cluster.yaml", current)
    (state / "status.json").write_text(json.dumps(status_of(current)))
    cr = write(tmp_path / "cr.yaml", cluster_document(replicasPerShard=3))
    assert main(["plan", "-f", str(cr)]) == 0
    out = capsys.readouterr().out
    assert "scale layout" in out.splitlines()[0]
    assert "replicasPerShard 2 -> 3" in out
    # the same through --state-dir
    assert main(["plan", "-f", str(cr), "--state-dir", str(state)]) == 0
    assert "replicasPerShard 2 -> 3" in capsys.readouterr().out


def test_items_are_read_from_a_local_source(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "emb"
    source.mkdir()
    np.save(source / "items.npy", np.zeros((123, 8), dtype=np.float32))
    cr = write(tmp_path / "cr.yaml", cluster_document(source=f"file://{source}"))
    assert main(["plan", "-f", str(cr), "--coefficients", str(MEASURED), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["items"] == 123
    assert document["builds"][0]["items_per_shard"] == 62


def test_errors_name_the_flag_or_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cr = write(tmp_path / "cr.yaml", cluster_document())
    assert main(["plan", "-f", str(tmp_path / "missing.yaml")]) == 1
    assert f"-f {tmp_path / 'missing.yaml'}:" in capsys.readouterr().err
    assert main(["plan", "-f", str(cr), "--status", str(tmp_path / "none.yaml")]) == 1
    assert "--status " in capsys.readouterr().err
    bad = write(tmp_path / "bad.yaml", {"phase": "Sideways"})
    assert main(["plan", "-f", str(cr), "--status", str(bad)]) == 1
    assert f"--status {bad}: invalid" in capsys.readouterr().err
    assert main(["plan", "-f", str(cr), "--state-dir", str(tmp_path)]) == 1
    assert "--state-dir" in capsys.readouterr().err
    (tmp_path / "cluster.yaml").write_text("spec: [")
    assert main(["plan", "-f", str(cr), "--state-dir", str(tmp_path)]) == 1
    assert f"{tmp_path / 'cluster.yaml'}: unreadable spec" in capsys.readouterr().err
    garbage = tmp_path / "coefficients.json"
    garbage.write_text("{}")
    assert main(["plan", "-f", str(cr), "--coefficients", str(garbage)]) == 1
    assert "--coefficients" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["plan", "-f", str(cr), "--items", "0"])
    assert exit_info.value.code == 2
    assert "--items" in capsys.readouterr().err


DOC = REPO / "docs" / "operations.md"
EXAMPLE_ARGS = [
    "plan",
    "-f", "examples/production.yaml",
    "--status", "examples/plan-preview/catalog-running.yaml",
    "--items", "2000000",
    "--coefficients", "benchmarks/coefficients.json",
]  # fmt: skip
EXAMPLE_BLOCK = re.compile(
    r"(<!-- plan-preview-example:begin -->\n)(.*?)(<!-- plan-preview-example:end -->)", re.S
)


def test_the_example_in_the_operations_doc_is_the_commands_output(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """SHARDREC_UPDATE_DOCS=1 rewrites the block (after a change of the preview or a new
    coefficients file); otherwise the test fails when it drifted."""
    monkeypatch.chdir(REPO)
    assert main(EXAMPLE_ARGS) == 0
    block = f"```\n$ recctl {' '.join(EXAMPLE_ARGS)}\n{capsys.readouterr().out}```\n"
    text = DOC.read_text(encoding="utf-8")
    found = EXAMPLE_BLOCK.search(text)
    assert found is not None, "docs/operations.md lost its plan-preview-example markers"
    if os.environ.get("SHARDREC_UPDATE_DOCS") == "1":
        DOC.write_text(text[: found.start(2)] + block + text[found.end(2) :], encoding="utf-8")
    assert found.group(2) == block or os.environ.get("SHARDREC_UPDATE_DOCS") == "1", (
        "docs/operations.md's plan example drifted: SHARDREC_UPDATE_DOCS=1 pytest " + __file__
    )


def test_a_layout_change_with_writes_on_is_flagged_for_the_operator_not_for_the_local_runtime(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    writes = {"writes": {"enabled": True}}
    current = cluster_document(**writes)
    status = write(tmp_path / "status.yaml", status_of(current))
    cr = write(tmp_path / "cr.yaml", cluster_document(version="v2", **writes))
    assert main(["plan", "-f", str(cr), "--status", str(status)]) == 0
    # A status describes the operator's cluster (it carries a new version through a carrier); it
    # says nothing of the serving layout's logs, so the carry is stated as a condition.
    assert "[info] WritesCarried: if the serving layout logs item writes" in capsys.readouterr().out
    state = tmp_path / ".shardrec" / "movies"
    state.mkdir(parents=True)
    write(state / "cluster.yaml", current)
    (state / "status.json").write_text(json.dumps(status_of(current)))
    assert main(["plan", "-f", str(cr)]) == 0
    assert "WritesNotCarried" not in capsys.readouterr().out  # the local supervisor carries them
