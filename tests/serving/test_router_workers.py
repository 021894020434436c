"""The pure parts of router/workers.py: how many workers, and what the pod reports for them."""

from __future__ import annotations

from shardrec.api.topology import RouterServing
from shardrec.serving.router.workers import combine_serving, worker_count


def test_worker_count_is_the_request_else_the_usable_cpus_and_at_least_one() -> None:
    assert worker_count(3, usable=8) == 3
    assert worker_count(None, usable=2) == 2
    assert worker_count(None, usable=0) == 1


def served(
    revision: int, layout: str | None = "L1", prepared: str | None = None, **extra: object
) -> RouterServing:
    return RouterServing(
        layout=layout, version="v" if layout else None, revision=revision, prepared=prepared, **extra
    )


def test_workers_that_agree_report_what_each_serves() -> None:
    one = served(3, switched_at=10.0)
    assert combine_serving([one, one]) == one


def test_the_pod_reports_its_least_advanced_worker() -> None:
    combined = combine_serving([served(4, "L2"), served(3, "L1")])
    assert (combined.revision, combined.layout) == (3, "L1")


def test_a_worker_that_has_not_reported_holds_the_pod_at_nothing_applied() -> None:
    combined = combine_serving([served(4, "L2"), None])
    assert (combined.revision, combined.layout, combined.prepared) == (-1, None, None)


def test_a_staged_layout_is_prepared_only_when_every_worker_loaded_it() -> None:
    assert combine_serving([served(5, prepared="L2"), served(5)]).prepared is None
    assert combine_serving([served(5, prepared="L2"), served(5, prepared="L2")]).prepared == "L2"


def test_workers_disagreeing_on_one_document_report_no_layout_and_say_why() -> None:
    combined = combine_serving([served(5, "L1"), served(5, "L2", error="cannot load")])
    assert combined.layout is None and combined.version is None
    assert "different layouts" in combined.error and "cannot load" in combined.error


def test_the_pod_switched_when_its_last_worker_did_and_epochs_order_first() -> None:
    assert combine_serving([served(5, switched_at=1.0), served(5, switched_at=2.0)]).switched_at == 2.0
    newer_epoch = RouterServing(layout="L3", version="v", revision=0, epoch=1)
    assert combine_serving([newer_epoch, served(9)]).revision == 9


def _canary(
    step: int, requests: int, overlap: float, p99: float | None
) -> dict[str, str | int | float | None]:
    return {
        "layout": "v2",
        "step": step,
        "requests": requests,
        "errors": 1,
        "compared": requests,
        "overlapSum": overlap,
        "candidateP99Ms": p99,
        "activeP99Ms": None,
    }


def test_the_pod_canary_report_sums_its_workers_and_keeps_the_worst_p99() -> None:
    """Each worker measures its own share of the traffic: without the sum, the operator would read
    one worker's requests and never see a step's minimum reached with several workers."""
    first = RouterServing(layout="a", version="v1", canary=_canary(1, 30, 12.0, 4.0))
    second = RouterServing(layout="a", version="v1", canary=_canary(1, 50, 20.0, 9.5))
    canary = combine_serving([first, second]).canary
    assert canary is not None
    assert canary["requests"] == 80
    assert canary["errors"] == 2
    assert canary["overlapSum"] == 32.0
    assert canary["candidateP99Ms"] == 9.5
    assert canary["activeP99Ms"] is None
    assert (canary["layout"], canary["step"]) == ("v2", 1)


def test_a_worker_still_on_the_previous_step_is_left_out_of_the_canary_sum() -> None:
    ahead = RouterServing(layout="a", canary=_canary(2, 10, 5.0, 3.0))
    behind = RouterServing(layout="a", canary=_canary(1, 500, 100.0, 80.0))
    idle = RouterServing(layout="a")
    canary = combine_serving([behind, ahead, idle]).canary
    assert canary is not None
    assert (canary["step"], canary["requests"], canary["candidateP99Ms"]) == (2, 10, 3.0)
    assert combine_serving([idle, idle]).canary is None
