"""`recctl capacity` end to end: the table, JSON, the repository's measured coefficients, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shardrec.tools.capacity.coefficients import load_coefficients
from shardrec.tools.cli.main import main
from tests.capacity.fixtures import document

REPO = Path(__file__).resolve().parents[2]
MEASURED = REPO / "benchmarks" / "coefficients.json"
SIZING = [
    "capacity",
    "--peak-qps", "36000",
    "--items", "10000000",
    "--dimension", "64",
    "--users", "100000000",
    "--k", "10",
    "--recall", "0.95",
    "--availability", "99.95",
    "--zones", "3",
]  # fmt: skip


@pytest.fixture
def fixture_file(tmp_path: Path) -> Path:
    path = tmp_path / "coefficients.json"
    path.write_text(json.dumps(document()))
    return path


def test_table_names_every_section_and_the_coefficients_source(
    fixture_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*SIZING, "--coefficients", str(fixture_file)]) == 0
    out = capsys.readouterr().out
    for section in ("memory", "cpu", "users", "total", "spike", "versions", "storage", "bandwidth"):
        assert f"\n{section} " in out
    assert f"coefficients: {fixture_file}" in out
    assert "hand-made test fixture" in out
    assert "blue/green cost" in out and "in-place alternative" in out
    assert "feature store beside the router" in out  # 100M users do not fit an 8 GiB router


def test_json_output_agrees_with_the_arithmetic(
    fixture_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*SIZING, "--coefficients", str(fixture_file), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["pods"] == plan["shards"] * plan["replicas"] + plan["routers"]
    assert plan["replicas"] >= plan["replicas_cpu"]
    assert plan["target"]["peak_qps"] == 36000
    assert plan["coefficients"] == str(fixture_file)


def test_the_issue_sizing_runs_on_the_measured_coefficients(capsys: pytest.CaptureFixture[str]) -> None:
    measured = load_coefficients(MEASURED)  # validates: every field names its command
    assert main([*SIZING, "--coefficients", str(MEASURED), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["shards"] >= 1 and plan["replicas"] >= 2 and plan["routers"] >= 2
    # A zone loss leaves the peak served at full CPU.
    assert plan["zone_loss_capacity_qps"] >= 36000
    assert plan["bytes_per_item"] > 4 * 64  # more than the raw vector: the graph and the ids
    assert measured.provenance[0].command
    # 10M items in one shard is a measured size (the 10M x 64 point): nothing is extrapolated.
    assert not any("largest measured" in warning for warning in plan["warnings"]), plan["warnings"]


def test_the_text_names_the_scale_points_and_warns(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*SIZING, "--coefficients", str(MEASURED)]) == 0
    out = capsys.readouterr().out
    assert "scale points" in out and "python benchmarks/scale_bench.py --sizes 10m --dims 64" in out
    assert "WARNING" not in out
    # 100M items in pods of 64 GiB: 2 shards of 50M, 5x the largest measured shard.
    sizing = [*SIZING, "--items", "100000000", "--shard-pod-memory-gib", "64"]
    assert main([*sizing, "--coefficients", str(MEASURED)]) == 0
    out = capsys.readouterr().out
    assert "\nwarnings " in out and "WARNING: 50,000,000 items/shard is 5.0x the largest measured" in out


def test_bad_flags_name_the_flag(fixture_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*SIZING, "--peak-qps", "lots", "--coefficients", str(fixture_file)])
    assert exited.value.code == 2
    assert "--peak-qps" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["capacity", "--items", "10"])
    assert "--peak-qps" in capsys.readouterr().err
    assert main([*SIZING, "--zones", "0", "--coefficients", str(fixture_file)]) == 1
    assert "--zones must be greater than 0" in capsys.readouterr().err
    assert main([*SIZING, "--recall", "0.999", "--coefficients", str(fixture_file)]) == 1
    assert "--recall 0.999: the ef fit is measured at 0.9-0.98" in capsys.readouterr().err


def test_missing_or_invalid_coefficients_name_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.json"
    assert main([*SIZING, "--coefficients", str(missing)]) == 1
    assert f"{missing}: cannot read coefficients" in capsys.readouterr().err
    broken = tmp_path / "broken.json"
    doc = document()
    doc["provenance"][0]["fields"].remove("search")
    broken.write_text(json.dumps(doc))
    assert main([*SIZING, "--coefficients", str(broken)]) == 1
    err = capsys.readouterr().err
    assert str(broken) in err and "no provenance entry names the command that measured ['search']" in err


def test_the_pipeline_of_the_seed_on_the_measured_coefficients(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*SIZING, "--coefficients", str(MEASURED), "--pipeline", "--json"]) == 0
    pipeline = json.loads(capsys.readouterr().out)
    # ~1B events a day at 100M daily users; 1B requests; the training extrapolated, with a range.
    assert pipeline["events_per_day"] == pytest.approx(1e9)
    assert pipeline["requests_per_day"] == pytest.approx(1e9)
    assert pipeline["training_nnz"] == pytest.approx(1e10)
    low, mid, high = (pipeline[f"als_iteration_cpu_s{s}"] for s in ("_low", "", "_high"))
    assert 0 < low <= mid <= high
    assert (
        pipeline["all_regions_usd_per_1k"] > pipeline["pipeline_usd_per_1k"] > pipeline["serving_usd_per_1k"]
    )
    assert "plan" not in pipeline


def test_pipeline_flags_change_the_pipeline_and_bad_ones_name_the_flag(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main([*SIZING, "--coefficients", str(MEASURED), "--pipeline", "--regions", "3", "--markdown"]) == 0
    out = capsys.readouterr().out
    assert "| all 3 regions |" in out and "| events |" in out
    assert main([*SIZING, "--coefficients", str(MEASURED), "--pipeline", "--ab-share", "2"]) != 0
    assert "--ab-share must be within [0, 1]" in capsys.readouterr().err
