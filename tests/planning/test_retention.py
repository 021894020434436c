"""Retention: the pure rule (property tests) and the planner's garbage collection around it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from shardrec.api.v1alpha1 import RecommenderClusterSpec, RetentionSpec, StoredLayoutStatus
from shardrec.planning import DeleteArtifacts, RecordEvent, format_time, layout_id
from shardrec.planning.retention import StoredLayout, layouts_to_delete, newest_first, next_expiry
from tests.planning.world import FakeWorld, make_spec, run_until_settled, with_version

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)

stored_layouts = st.lists(
    st.builds(
        StoredLayout,
        layout_id=st.text(alphabet="0123456789abcdef", min_size=10, max_size=10),
        built_at=st.integers(min_value=0, max_value=400 * 3600).map(lambda s: NOW - timedelta(seconds=s)),
    ),
    max_size=12,
    unique_by=lambda entry: entry.layout_id,
)
retentions = st.builds(
    RetentionSpec,
    keep_layouts=st.integers(min_value=1, max_value=6),
    max_age_hours=st.integers(min_value=0, max_value=300),
)


@settings(max_examples=300, deadline=None)
@given(stored=stored_layouts, retention=retentions, data=st.data())
def test_retention_keeps_exactly_what_it_should(
    stored: list[StoredLayout], retention: RetentionSpec, data: st.DataObject
) -> None:
    ids = [entry.layout_id for entry in stored]
    protected = set(data.draw(st.lists(st.sampled_from(ids), unique=True) if ids else st.just([])))
    deleted = {verdict.layout_id for verdict in layouts_to_delete(stored, protected, retention, NOW)}
    newest = {entry.layout_id for entry in newest_first(stored)[: retention.keep_layouts]}
    max_age = timedelta(hours=retention.max_age_hours)
    assert not deleted & protected, "deleted a serving, targeted or kept-running layout"
    assert not deleted & newest, "deleted one of the newest keepLayouts"
    for entry in stored:
        expected = (
            entry.layout_id not in protected
            and entry.layout_id not in newest
            and NOW - entry.built_at >= max_age
        )
        assert (entry.layout_id in deleted) == expected, entry
    # What stays: the protected, the newest keepLayouts, and the rest only while younger than maxAge.
    kept = set(ids) - deleted
    assert len(kept) >= min(len(ids), retention.keep_layouts)


@settings(max_examples=200, deadline=None)
@given(stored=stored_layouts, retention=retentions)
def test_retention_is_deterministic_and_the_next_expiry_is_when_it_deletes_more(
    stored: list[StoredLayout], retention: RetentionSpec
) -> None:
    first = layouts_to_delete(stored, (), retention, NOW)
    assert first == layouts_to_delete(list(reversed(stored)), (), retention, NOW)
    tracked = [
        StoredLayoutStatus(name=e.layout_id, version="v", built_at=format_time(e.built_at)) for e in stored
    ]
    expiry = next_expiry(tracked, (), retention, NOW)
    if expiry is not None:
        assert expiry > NOW
        later = layouts_to_delete(stored, (), retention, expiry)
        assert len(later) > len(first), "nothing new became deletable at the expiry"
        just_before = layouts_to_delete(stored, (), retention, expiry - timedelta(seconds=1))
        assert len(just_before) == len(first)


def test_keep_two_deletes_the_third_newest_only_after_max_age() -> None:
    stored = [StoredLayout(f"{i:010d}", NOW - timedelta(hours=10 * i)) for i in range(4)]
    retention = RetentionSpec(keep_layouts=2, max_age_hours=25)
    verdicts = layouts_to_delete(stored, {"0000000000"}, retention, NOW)
    assert [v.layout_id for v in verdicts] == ["0000000003"]  # built 30 h ago; 20 h is still young
    assert "keepLayouts" in verdicts[0].reason and "maxAgeHours: 25" in verdicts[0].reason


def _deletions(world: FakeWorld) -> list[DeleteArtifacts]:
    return [a for a in world.executed if isinstance(a, DeleteArtifacts)]


def test_the_planner_collects_old_layouts_once_and_never_a_live_one() -> None:
    world = FakeWorld()
    spec = make_spec()
    spec = spec.model_copy(
        update={
            "index": spec.index.model_copy(
                update={
                    "store": spec.index.store.model_copy(update={"retention": RetentionSpec(keep_layouts=2)})
                }
            )
        }
    )
    built = []
    for version in ("v1", "v2", "v3", "v4"):
        spec = with_version(spec, version)
        run_until_settled(world, spec)
        built.append(world.confirmed)
        world.now += timedelta(hours=1)
    deletions = _deletions(world)
    # v1 and v2 fell out of the newest two; each was deleted exactly once, after it stopped running.
    assert sorted(a.layout_id for a in deletions) == sorted(built[:2])
    stored = [entry.name for entry in world.stored_status().stored_layouts]
    assert stored == [built[3], built[2]]
    reasons = [e.reason for e in world.events if isinstance(e, RecordEvent)]
    assert reasons.count("DeletingArtifacts") == 2 and reasons.count("ArtifactsDeleted") == 2


def test_a_rollback_to_a_retained_layout_an_hour_later_reuses_its_artifacts() -> None:
    world = FakeWorld(build_ticks=6)
    spec = make_spec()
    first = _passes_until_serving(world, spec)
    v1 = world.confirmed
    run_until_settled(world, with_version(spec, "v2"))
    assert v1 not in world.layouts, "v1's pods are gone after its rollback window"
    world.now += timedelta(hours=1)
    again = _passes_until_serving(world, spec)
    assert world.confirmed == v1 and v1 in world.artifacts
    assert not _deletions(world)
    # The build found its artifacts (one tick instead of six): the rollback is that much quicker.
    assert again <= first - 5, (first, again)
    run_until_settled(world, spec)
    assert world.stored_status().stored_layouts[0].name != v1  # v2 is newer


def _passes_until_serving(world: FakeWorld, spec: RecommenderClusterSpec, limit: int = 50) -> int:
    target = layout_id(spec)
    for passes in range(1, limit + 1):
        world.step(spec)
        if world.confirmed == target:
            return passes
    raise AssertionError(f"layout {target} did not serve within {limit} passes")


def test_carry_folders_are_needed_while_their_layout_exists_or_a_carry_names_it() -> None:
    from shardrec.planning.carrying import Carry
    from shardrec.planning.retention import carry_folders_needed

    # A layout that exists: a later carry out of it folds its carry folder in (`prior`), and a
    # carry back into it or from it may still start.
    assert "still exists" in (carry_folders_needed("L1", live={"L1", "L2"}, carries=[]) or "")
    # Gone, but a carrier out of it (it folds L1's folder in while cutting) or into it is known.
    out_of = Carry("L2", "L1")
    assert "carry from layout L1 into layout L2" in (
        carry_folders_needed("L1", live={"L2"}, carries=[out_of]) or ""
    )
    into = Carry("L1", "L0")
    assert carry_folders_needed("L1", live={"L0"}, carries=[into]) is not None
    # A done carry out of it (still listed while the layout it carried into exists) reads nothing
    # any more: that layout's own carry folder holds L1's as `prior` since the cut.
    from shardrec.api.v1alpha1 import CarryStatus

    done = CarryStatus(layout="L2", from_layout="L1", done=True)
    carried = Carry("L2", "L1", remembered=done)
    assert carry_folders_needed("L1", live={"L2"}, carries=[carried]) is None
    # Gone and named by no carry: its carry folder and every carry-back folder naming it (a carry
    # back needs both layouts of its pair) are garbage.
    assert carry_folders_needed("L1", live={"L2", "L3"}, carries=[Carry("L3", "L2")]) is None


def test_the_planner_collects_carried_layouts_once_nothing_needs_their_carry_folders() -> None:
    from tests.planning.test_carry_planner import WRITES_ON, CarryWorld

    world = CarryWorld()
    spec = WRITES_ON.model_copy(
        update={
            "index": WRITES_ON.index.model_copy(
                update={
                    "store": WRITES_ON.index.store.model_copy(
                        update={"retention": RetentionSpec(keep_layouts=2)}
                    )
                }
            )
        }
    )
    built = []
    for version in ("v1", "v2", "v3", "v4"):
        spec = with_version(spec, version)
        world.generation += 1
        run_until_settled(world, spec)
        built.append(world.confirmed)
        world.now += timedelta(hours=1)
    assert not world.carriers
    deletions = _deletions(world)
    # v1 (carried out of into v2) and v2 (carried into, then out of): each once, after nothing ran it.
    assert sorted(a.layout_id for a in deletions) == sorted(built[:2])


def test_a_carrier_waits_while_its_layouts_artifacts_and_carry_folders_are_deleted() -> None:
    """The garbage-collection Job deletes the carry folder too: a carrier started meanwhile would
    cut into a folder being deleted under it."""
    from shardrec.planning import EnsureCarrier, LayoutSpec, Observed
    from shardrec.planning.predicates import PredicateContext, wait_for_artifact_deletion

    spec = make_spec(writes={"enabled": True})
    layout = LayoutSpec.from_spec(spec)
    action = EnsureCarrier(layout, layout, "r", False)

    def context(deletions: dict[str, str]) -> PredicateContext:
        observed = Observed(generation=1, now=NOW, artifact_deletions=deletions)  # type: ignore[arg-type]
        return PredicateContext(spec, observed, {}, layout.id)

    assert "being deleted" in (wait_for_artifact_deletion(context({layout.id: "Running"}), action) or "")
    assert wait_for_artifact_deletion(context({layout.id: "Succeeded"}), action) is None
    assert wait_for_artifact_deletion(context({}), action) is None
