"""`recctl demo --canary`'s pieces that need no cluster: v2's recipe and its flag errors, the
canary manifest (valid, Canary, same dimension), the status it watches, and the traffic's bounds."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from shardrec.api.v1alpha1 import RecommenderCluster
from shardrec.tools.cli import demo_canary
from shardrec.tools.cli.demo_cmd import _canary_params, cluster_manifest, register
from shardrec.tools.cli.main import CliError
from shardrec.tools.local.ports import free_port
from shardrec.tools.local.state import StateDir


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return parser.parse_args(["demo", *argv])


def test_without_canary_there_is_no_v2_and_a_canary_flag_alone_is_refused_by_name() -> None:
    assert _canary_params(_args()) is None
    with pytest.raises(CliError, match="--canary-alpha needs --canary"):
        _canary_params(_args("--canary-alpha", "2"))


def test_v2_is_the_tuned_recipe_with_another_regularization_and_alpha() -> None:
    params = _canary_params(_args("--canary", "--canary-regularization", "100"))
    assert params is not None
    assert (params.regularization, params.alpha, params.factors) == (100.0, demo_canary.DEFAULT_ALPHA, 128)
    default = _canary_params(_args("--canary"))
    assert default is not None and default.regularization == demo_canary.DEFAULT_REGULARIZATION
    assert demo_canary.embeddings_dir(Path("d"), params) != demo_canary.embeddings_dir(Path("d"), default)


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--canary-regularization", "-1"], "--canary-regularization"),
        (["--canary-regularization", "nan"], "--canary-regularization"),
        (["--canary-alpha", "0"], "--canary-alpha"),
    ],
)
def test_bad_v2_parameters_name_their_flag(argv: list[str], flag: str) -> None:
    with pytest.raises(CliError, match=flag):
        _canary_params(_args("--canary", *argv))


@pytest.mark.parametrize("seconds", [0.0, -5.0, float("inf"), 7200.0])
def test_a_bad_timeout_names_its_flag(seconds: float) -> None:
    with pytest.raises(CliError, match="--canary-timeout"):
        demo_canary.check_timeout(seconds)


def test_the_canary_manifest_is_v1s_with_version_v2_and_short_canary_steps(tmp_path: Path) -> None:
    v1 = cluster_manifest(tmp_path / "v1", "v1", 4, 2, 128)
    manifest = demo_canary.canary_manifest(v1, tmp_path / "v2")
    cluster = RecommenderCluster.model_validate(manifest)
    assert v1["spec"]["index"]["version"] == "v1", "v1's manifest is not changed"
    assert cluster.spec.index.version == "v2" and cluster.spec.index.source == str(
        (tmp_path / "v2").resolve()
    )
    assert cluster.spec.index.dimension == 128 and cluster.spec.shards == 4
    canary = cluster.spec.rollout.canary_spec()
    assert canary == demo_canary.CANARY
    assert [s.shadow is not None for s in canary.steps] == [True, False]
    assert all(s.min_duration_seconds <= 10 and s.min_requests <= 300 for s in canary.steps)


def _status(state: StateDir, phase: str, step: int, requests: int | None, version: str = "v2") -> None:
    canary = {
        "layout": "b2",
        "version": version,
        "activeLayout": "a1",
        "phase": phase,
        "step": step,
        "steps": 2,
        "stepStartedAt": "2026-12-05T22:00:00Z",
    }
    if requests is not None:
        canary["analysis"] = {"requests": requests, "compared": requests, "overlapAt10": 0.7}
    state.status_file.write_text(json.dumps({"canary": canary}))


def test_the_watch_follows_its_candidates_status_and_ignores_another_version(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    _status(state, "Running", 0, None, version="v9")
    assert demo_canary.canary_of(demo_canary.read_status(state)) is None
    _status(state, "Running", 0, None)
    started = demo_canary.canary_of(demo_canary.read_status(state))
    assert started is not None
    watch = demo_canary.CanaryWatch(started)
    _status(state, "Running", 0, 120)
    watch.see(demo_canary.canary_of(demo_canary.read_status(state)))
    assert not watch.finished and watch.canary.analysis is not None
    _status(state, "Promoted", 1, 60)
    watch.see(demo_canary.canary_of(demo_canary.read_status(state)))
    assert watch.finished and watch.canary.phase == "Promoted"


class _Clock:
    """drive's clock: every read moves it on by STEP_S, every sleep by its length, so the loops
    end on the same reads on any machine and the wait for a decision takes no real time."""

    STEP_S = 0.1

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        self.now += self.STEP_S
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_demo_traffic_goes_to_127_0_0_1_only_and_stops_at_its_request_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = StateDir(tmp_path)
    _status(state, "Running", 0, None)
    started = demo_canary.canary_of(demo_canary.read_status(state))
    assert started is not None
    with pytest.raises(CliError, match=r"127\.0\.0\.1 only"):
        demo_canary.drive("http://example.com:80", state, ["1"], started, timeout_s=1)
    clock = _Clock()
    monkeypatch.setattr(demo_canary, "time", clock)
    # Nothing listens on a free port: every request fails fast, and the bound stops the loop (the
    # deadline is hundreds of clock reads away: without the bound, far more than 3 would be sent).
    watch = demo_canary.drive(
        f"http://127.0.0.1:{free_port()}", state, ["1", "2"], started, timeout_s=60, max_requests=3
    )
    assert watch.sent == 3 and len(watch.failed) == 3 and not watch.finished
    assert clock.now >= 60, "without a decision it waits, sending nothing more, until the deadline"
