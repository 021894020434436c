"""The per-cluster shard token: the pure rotation state machine, the Secret and the pods that
mount it, and the reconcile pass that writes it (API double)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest

from shardrec.api.credentials import ACCEPTED_KEY, SEND_KEY, TOKEN_MOUNT, parse_tokens
from shardrec_operator.desired import names
from shardrec_operator.desired.router import build_router_deployment
from shardrec_operator.desired.shard import build_shard_statefulset
from shardrec_operator.desired.shard_token import (
    MAX_TOKEN_AGE,
    PROPAGATION_WINDOW,
    ROTATE_ANNOTATION,
    TokenState,
    build_shard_token_secret,
    next_token_state,
    token_state_of,
)
from shardrec_operator.reconcile import resources as kinds
from tests.controller.samples import NAME, NAMESPACE, UID, cluster, layout_of
from tests.controller.world import World

T0 = datetime(2026, 12, 1, tzinfo=UTC)


def test_a_first_pass_creates_a_stable_token() -> None:
    decision = next_token_state(None, "", T0, lambda: "a")
    assert decision.state == TokenState("a", ("a",), "stable", T0, T0, "")
    assert decision.recheck_after_seconds is None


def test_a_stable_token_stays_until_asked_or_too_old() -> None:
    stable = TokenState("a", ("a",), "stable", T0, T0, "")
    assert next_token_state(stable, "", T0 + timedelta(days=1), lambda: "b").state == stable
    aged = next_token_state(stable, "", T0 + MAX_TOKEN_AGE, lambda: "b").state
    assert (aged.phase, aged.send, aged.accepted) == ("accepting", "a", ("a", "b"))
    asked = next_token_state(stable, "now", T0 + timedelta(hours=1), lambda: "b").state
    assert (asked.phase, asked.send, asked.accepted, asked.rotated_for) == (
        "accepting",
        "a",
        ("a", "b"),
        "now",
    )


def _send_and_accepted_over_a_rotation() -> list[tuple[str, str, tuple[str, ...]]]:
    state = next_token_state(None, "", T0, lambda: "a").state
    now = T0 + timedelta(hours=1)
    seen = [(state.phase, state.send, state.accepted)]
    for _ in range(40):
        decision = next_token_state(state, "r1", now, lambda: "b")
        state = decision.state
        seen.append((state.phase, state.send, state.accepted))
        now += timedelta(seconds=30)
    return seen


def test_a_rotation_accepts_first_then_sends_then_drops_the_old_token() -> None:
    seen = _send_and_accepted_over_a_rotation()
    phases = [phase for phase, _, _ in seen]
    assert [p for i, p in enumerate(phases) if i == 0 or p != phases[i - 1]] == [
        "stable", "accepting", "sending", "stable"
    ]  # fmt: skip
    assert seen[-1] == ("stable", "b", ("b",))
    # Each phase holds for the propagation window (30 s steps).
    window_steps = int(PROPAGATION_WINDOW.total_seconds() // 30)
    assert phases.count("accepting") == phases.count("sending") == window_steps


def test_no_moment_of_a_rotation_sends_a_token_shards_did_not_accept_one_window_earlier() -> None:
    """The no-failed-request property: whatever a router sends at step i was accepted by every
    shard from at least one propagation window before (a pod may lag by less than a window)."""
    seen = _send_and_accepted_over_a_rotation()
    lag = int(PROPAGATION_WINDOW.total_seconds() // 30)
    for i, (_, send, _) in enumerate(seen):
        for j in range(max(0, i - lag), i + 1):
            assert send in seen[j][2], (i, j, seen[j])


def test_the_recheck_is_when_the_phase_ends() -> None:
    stable = TokenState("a", ("a",), "stable", T0, T0, "")
    accepting = next_token_state(stable, "x", T0, lambda: "b")
    assert accepting.recheck_after_seconds == PROPAGATION_WINDOW.total_seconds()
    later = next_token_state(accepting.state, "x", T0 + timedelta(seconds=60), lambda: "c")
    assert later.state == accepting.state
    assert later.recheck_after_seconds == PROPAGATION_WINDOW.total_seconds() - 60


def test_the_secret_round_trips_and_is_owned_by_the_cluster() -> None:
    state = TokenState("b", ("b", "a"), "sending", T0, T0, "r1")
    secret = build_shard_token_secret(cluster(), state)
    assert secret["metadata"]["name"] == names.shard_token_secret(NAME)
    assert secret["metadata"]["ownerReferences"][0]["uid"] == UID
    assert base64.b64decode(secret["data"][SEND_KEY]).decode() == "b\n"
    assert parse_tokens(base64.b64decode(secret["data"][ACCEPTED_KEY]).decode()) == ("b", "a")
    assert token_state_of(secret) == state


@pytest.mark.parametrize(
    "damage",
    [
        lambda s: s["data"].pop(SEND_KEY),
        lambda s: s["metadata"]["annotations"].update({"shardrec.io/token-phase": "bogus"}),
        lambda s: s["data"].update({SEND_KEY: base64.b64encode(b"zzz").decode()}),  # sent, not accepted
    ],
)
def test_a_damaged_secret_reads_as_none(damage: object) -> None:
    secret = build_shard_token_secret(cluster(), TokenState("a", ("a",), "stable", T0, T0, ""))
    damage(secret)  # type: ignore[operator]
    assert token_state_of(secret) is None


def test_shard_and_router_pods_mount_their_key_of_the_secret() -> None:
    sample = cluster()
    shard = build_shard_statefulset(sample, layout_of(sample), 0, 2)["spec"]["template"]["spec"]
    router = build_router_deployment(sample)["spec"]["template"]["spec"]
    for pod, key, flag in (
        (shard, ACCEPTED_KEY, "--admin-token-file"),
        (router, SEND_KEY, "--shard-token-file"),
    ):
        (volume,) = [v for v in pod["volumes"] if v["name"] == "shard-token"]
        assert volume["secret"]["secretName"] == names.shard_token_secret(NAME)
        assert volume["secret"]["items"] == [{"key": key, "path": key}]
        command = pod["containers"][0]["command"]
        assert command[command.index(flag) + 1] == f"{TOKEN_MOUNT}/{key}"
        (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "shard-token"]
        assert mount == {"name": "shard-token", "mountPath": TOKEN_MOUNT, "readOnly": True}  # no subPath


def _secret_state(world: World) -> TokenState:
    secret = world.api.get(kinds.SECRET, NAMESPACE, names.shard_token_secret(NAME))
    state = token_state_of(secret)
    assert state is not None
    return state


def test_reconcile_creates_the_secret_once_and_keeps_it() -> None:
    world = World()
    world.settle()
    first = _secret_state(world)
    assert len(first.send) == 64 and first.accepted == (first.send,)
    settled = world.reconcile()
    assert settled.writes == 0, "a settled cluster rewrites nothing, the Secret included"
    assert _secret_state(world) == first


def test_reconcile_rotates_on_the_annotation_and_asks_to_come_back() -> None:
    world = World()
    world.settle()
    old = _secret_state(world).send
    world.body["metadata"].setdefault("annotations", {})[ROTATE_ANNOTATION] = "1"
    result = world.reconcile(advance=0)
    accepting = _secret_state(world)
    assert (accepting.phase, accepting.send, accepting.accepted[0]) == ("accepting", old, old)
    assert result.requeue_after_seconds is not None
    assert result.requeue_after_seconds <= PROPAGATION_WINDOW.total_seconds()
    world.now += PROPAGATION_WINDOW
    world.reconcile(advance=0)
    sending = _secret_state(world)
    assert sending.phase == "sending" and sending.send == accepting.accepted[1]
    world.now += PROPAGATION_WINDOW
    world.reconcile(advance=0)
    assert _secret_state(world) == TokenState(
        sending.send, (sending.send,), "stable", world.now, accepting.created, "1"
    )
