"""The Kubernetes carrier: carries the item writes of a serving layout into a new layout.

One process per carrying layout (a Deployment the operator creates; its `CarrierConfig` in a
ConfigMap; the contract: /work/notes/carry-contract.md, docs/operator.md "The carrier"). Every
`poll_seconds` it makes one `step`:

1. **Cut**, once: every old leader's log read over HTTP (`log_export.read_leader_log`; each log is
   on its leader's ReadWriteOnce volume), the old layout's own carry folder folded in
   (`prior_carry`), written to the carry store as the carry folder the build Job folds in, with
   its progress (`forwarded.json`). A carry folder already on the store is resumed, not cut again.
2. **Forward**: one pass of `forwarding.forward_pass` (old leaders paged after the progress,
   re-partitioned, sent to the new leaders and replicated to their followers), the progress
   written to the store once the new shards acknowledged. New replicas not all ready: the pass
   waits. `caught_up` after the first complete pass.
3. **Requests** on the carrier's Deployment: a new hand-over request fences every old leader and
   forwards the rest (`handed_over`; on any failure the fenced leaders are opened again and
   `hand_over_failed`); a new open request opens the old leaders (`opened`); a finish request makes
   the next complete pass that finds nothing new the last one (`done`, then idle).

A **carry back** (`CarrierConfig.back`: a rollback to a kept layout the old layout was carried
from, whose replicas still run) skips the cut: the kept layout already holds everything up to the
old layout's first logged record, so its progress starts at sequence 0 of every old shard and
lives alone in `carry_store` (`carry-back/<to>/<from>`: `forwarded.json`, no carry folder, no
`prior_carry`). Before forwarding, the carrier opens the new leaders (the kept layout's, fenced
since the hand-over that made the old layout serve; a fenced leader refuses forwarded writes with
503 `writes_fenced`), once per process and again after a failed pass. Everything else is as above.

    back start --> progress on the store?
                     | no: after = 0 per old shard  | yes, not done: resume it
                     | yes, done: an earlier carry back between the same layouts (a second
                     |   rollback): resume at its `after` with the flags cleared; what the old
                     |   leaders logged since is exactly what the kept layout lacks
                     v
                   open the new leaders --> forward / requests as above

It reports `CarryProgress` on its own pod after each step (when it changed, and every
`HEARTBEAT_S`). Errors are reported (`message`) and retried by the next step: every call is
bounded by its timeout, every loop by a count; SIGTERM ends the loop between steps.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from shardrec.api.carry import CarrierConfig, CarryPhase, CarryProgress
from shardrec.serving.carry.forwarding import (
    ForwardError,
    HttpLeaderLog,
    HttpOldLogs,
    NewLayout,
    OldLogError,
    Progress,
    ShardCalls,
    forward_pass,
)
from shardrec.serving.carry.kube import CarrierKube, CarryRequests, KubeError
from shardrec.serving.carry.store import CarryFolderError, CarryStore, prior_state
from shardrec.serving.index.carry import Cut
from shardrec.serving.index.write_log import WriteLogError, WriteRecord
from shardrec.serving.shard.log_export import ExportError, read_leader_log
from shardrec.serving.storage.errors import StoreError
from shardrec.serving.tls import client_context

log = logging.getLogger("shardrec.carrier")

HEARTBEAT_S = 30.0
"""The report is sent again after this long even when nothing changed (an edit may drop it)."""
MAX_HAND_OVER_PASSES = 32
"""Forwarding passes a hand-over may take to reach the fenced leaders' last sequences."""
MAX_MESSAGE = 1000


@dataclass
class CarrierState:
    """What the carrier keeps in `forwarded.json` on the store: the forwarding's `Progress` (the
    same keys the local runtime writes) plus the cut and the outcome of the operator's requests,
    so a restarted carrier neither forwards again nor repeats a handled request."""

    progress: Progress
    cut: list[int] | None
    """None in a carry back (nothing cut)."""
    handed_over: str | None = None
    hand_over_failed: str | None = None
    opened: str | None = None
    left_fenced: list[int] = field(default_factory=list)
    """Old shards a failed hand-over fenced and could not open again (retried every step)."""
    fenced: bool = False
    """The old leaders are meant to be fenced: from a successful hand-over until an open request."""

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.progress.as_dict(),
            "cut": self.cut,
            "handed_over": self.handed_over,
            "hand_over_failed": self.hand_over_failed,
            "opened": self.opened,
            "left_fenced": self.left_fenced,
            "fenced": self.fenced,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CarrierState:
        progress = Progress.from_dict(data)
        cut = data.get("cut", progress.after)
        return cls(
            progress,
            None if cut is None else [int(x) for x in cut],
            data.get("handed_over"),
            data.get("hand_over_failed"),
            data.get("opened"),
            [int(x) for x in data.get("left_fenced", [])],
            bool(data.get("fenced", False)),
        )


def config_problems(config: CarrierConfig) -> list[str]:
    """What makes a config unusable beyond its schema (empty: none). Pure."""
    problems = []
    if len(config.old_leaders) != config.from_shards:
        problems.append(f"old_leaders: {len(config.old_leaders)} URLs for {config.from_shards} old shards")
    if len(config.new_replicas) != config.to_shards or not all(config.new_replicas):
        problems.append(f"new_replicas: one non-empty list per new shard ({config.to_shards}) expected")
    return problems


@dataclass(frozen=True)
class Todo:
    """What a step does about the operator's requests (pure: `requests_todo`)."""

    hand_over: str | None = None
    hand_over_refused: str | None = None
    open: str | None = None
    final: bool = False


def requests_todo(state: CarrierState, requests: CarryRequests) -> Todo:
    """Which requests are new. An open request wins over a hand-over request first seen in the
    same step: the carrier cannot know which the operator made last, and a hand-over that ends
    with the leaders open would be unsafe to switch on, so that hand-over is refused (the operator
    requests it again with a new id, as after any failed hand-over). Pure."""
    new_open = requests.open if requests.open is not None and requests.open != state.opened else None
    handled = {state.handed_over, state.hand_over_failed}
    new_hand_over = requests.hand_over if requests.hand_over not in handled else None
    if new_open is not None and new_hand_over is not None:
        return Todo(hand_over_refused=new_hand_over, open=new_open, final=requests.finish is not None)
    return Todo(hand_over=new_hand_over, open=new_open, final=requests.finish is not None)


def progress_report(
    config: CarrierConfig, state: CarrierState | None, phase: CarryPhase, message: str, at: datetime
) -> CarryProgress:
    """The pod annotation's content. Pure."""
    return CarryProgress(
        to_layout=config.to_layout,
        from_layout=config.from_layout,
        phase=phase,
        cut=list(state.cut) if state is not None and state.cut is not None else None,
        after=list(state.progress.after) if state is not None else [0] * config.from_shards,
        caught_up=state.progress.caught_up if state is not None else False,
        forwarded=state.progress.forwarded if state is not None else 0,
        handed_over=state.handed_over if state is not None else None,
        hand_over_failed=state.hand_over_failed if state is not None else None,
        opened=state.opened if state is not None else None,
        done=state.progress.done if state is not None else False,
        message=message[:MAX_MESSAGE],
        at=at.isoformat(timespec="seconds"),
    )


def same_report(a: CarryProgress | None, b: CarryProgress) -> bool:
    return a is not None and a.model_copy(update={"at": ""}) == b.model_copy(update={"at": ""})


class Carrier:
    """One carrying layout's carrier (see the module docstring)."""

    def __init__(
        self,
        config: CarrierConfig,
        store: CarryStore,
        calls: ShardCalls,
        kube: CarrierKube,
        *,
        token: Callable[[], str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.store = store
        self.calls = calls
        self.kube = kube
        self._token = token
        self._clock = clock
        self.state: CarrierState | None = None
        self.phase: CarryPhase = "forwarding" if config.back else "cutting"
        self._new_leaders_open = False
        """A carry back opened the new leaders (in this process; a failed pass opens them again)."""
        self.message = ""
        self._persisted: dict[str, Any] | None = None
        self._reported: CarryProgress | None = None
        self._reported_at = float("-inf")
        self._requests = CarryRequests()
        self._waiting_logged = False
        new_leaders = [urls[0] for urls in config.new_replicas]
        self._old = HttpOldLogs(calls, config.old_leaders)
        self._new_leaders = new_leaders
        self._new = NewLayout(calls, config.new_replicas, HttpLeaderLog(calls, new_leaders))

    # --- the loop --------------------------------------------------------------------------------

    def run(self, stop: threading.Event, *, max_steps: int | None = None) -> None:
        """Steps every `poll_seconds` until `stop` is set (SIGTERM) or `max_steps` ran (tests)."""
        steps = 0
        while not stop.is_set() and (max_steps is None or steps < max_steps):
            self.step()
            steps += 1
            if stop.wait(self.config.poll_seconds):
                break
        log.info("carrier of %s stops (%d steps)", self.config.to_layout, steps)

    def step(self) -> None:
        """One round: requests, cut or resume, open/hand-over, a forwarding pass, the report."""
        if self._token is not None:
            self.calls.token = self._token()
        self.message = ""
        try:
            self._requests = self.kube.requests()
        except KubeError as exc:  # act on the requests last read; forwarding goes on
            self._fail_soft(f"cannot read the operator's requests: {exc}")
        try:
            self._step(self._requests)
        finally:
            self._report()

    def _step(self, requests: CarryRequests) -> None:
        start = self._resume_or_start_back if self.config.back else self._resume_or_cut
        if self.state is None and not start():
            return
        state = self.state
        assert state is not None
        if not self._persist():
            return  # never forward more than the store knows: a restart would send it again
        if state.progress.done:
            self.phase = "done"
            return
        self.phase = "forwarding"
        self._reopen_left_fenced(state)
        self._keep_fenced(state)
        todo = requests_todo(state, requests)
        if todo.hand_over_refused is not None:
            state.hand_over_failed = todo.hand_over_refused
            self._fail_soft(
                f"hand-over {todo.hand_over_refused} refused: an open request ({todo.open}) came with it; "
                "request the hand-over again with a new id"
            )
        if todo.open is not None:
            self._open(state, todo.open)
        if todo.hand_over is not None:
            self._hand_over(state, todo.hand_over)
        else:
            self._forward(state, final=todo.final)
        self._persist()
        if state.progress.done:
            self.phase = "done"
            log.info(
                "carry of %s %s %s done: %d records forwarded",
                self.config.from_layout,
                "back into" if self.config.back else "into",
                self.config.to_layout,
                state.progress.forwarded,
            )

    # --- the cut ---------------------------------------------------------------------------------

    def _resume_or_cut(self) -> bool:
        """The state from the store (a restarted carrier), else a new cut. False: not yet."""
        self.phase = "cutting"
        try:
            if self.store.has_carry():
                self.state = self._resumed()
                log.info(
                    "resuming the carry of %s into %s at %s (cut %s)",
                    self.config.from_layout,
                    self.config.to_layout,
                    self.state.progress.after,
                    self.state.cut,
                )
                self._persisted = self.state.as_dict()
                return True
            self.state = self._cut()
            self._persisted = self.state.as_dict()
            return True
        except CarryFolderError as exc:
            self._fail_hard(f"carry folder {self.store.describe()}: {exc}")
        except (ExportError, OldLogError) as exc:
            self._fail_soft(f"cut: {exc}")
        except StoreError as exc:
            self._fail_soft(f"carry store: {exc}")
        return False

    def _resume_or_start_back(self) -> bool:
        """A carry back's state: its progress from the store, else from sequence 0 of every old
        shard (the kept layout holds everything before the old layout's first record). False: the
        store could not be read (retried)."""
        try:
            data = self.store.read_progress()
            self.state = self._back_state(data)
        except CarryFolderError as exc:
            self._fail_hard(f"carry back progress {self.store.describe()}: {exc}")
            return False
        except StoreError as exc:
            self._fail_soft(f"carry store: {exc}")
            return False
        self._persisted = data
        log.info(
            "carrying %s back into kept layout %s from %s",
            self.config.from_layout,
            self.config.to_layout,
            self.state.progress.after,
        )
        return True

    def _back_state(self, data: dict[str, Any] | None) -> CarrierState:
        if data is None:
            return CarrierState(Progress([0] * self.config.from_shards), None)
        try:
            state = CarrierState.from_dict(data)
        except (KeyError, TypeError, ValueError) as exc:
            raise CarryFolderError(f"forwarded.json: {exc}") from exc
        if len(state.progress.after) != self.config.from_shards:
            raise CarryFolderError(
                f"forwarded.json names {len(state.progress.after)} old shards, the config "
                f"{self.config.from_shards}"
            )
        if not state.progress.done:
            return state
        # A done carry back between the same two layouts is an earlier rollback's (the layouts
        # went back and forth), or this one's before a restart: either way the old leaders'
        # records after `after` are what the kept layout lacks (its own records since were
        # carried into the old layout and logged there after `after`), and never the ones
        # before it, which the kept layout holds and may have overwritten since. The requests it
        # handled were another Deployment's (or are handled again harmlessly).
        progress = Progress(list(state.progress.after), forwarded=state.progress.forwarded)
        return CarrierState(progress, None, left_fenced=state.left_fenced)

    def _open_new_leaders(self) -> bool:
        """A carry back: open the kept layout's leaders (fenced since the hand-over that made the
        old layout serve) so they take the forwarded writes; once per process, again after a
        failed pass. False (reported): a leader did not answer."""
        if self._new_leaders_open:
            return True
        closed = [url for url in self._new_leaders if self.calls.fence(url, False) is None]
        if closed:
            self._fail_soft(f"carry back: leaders of {self.config.to_layout} not opened: {', '.join(closed)}")
            return False
        log.info("carry back: the leaders of %s take forwarded writes", self.config.to_layout)
        self._new_leaders_open = True
        return True

    def _resumed(self) -> CarrierState:
        cut = self.store.read_cut()
        if cut.from_layout != self.config.from_layout or cut.from_shards != self.config.from_shards:
            raise CarryFolderError(
                f"it carries {cut.from_layout} ({cut.from_shards} shards), the config names "
                f"{self.config.from_layout} ({self.config.from_shards} shards)"
            )
        data = self.store.read_progress()
        if data is None:
            return CarrierState(Progress(list(cut.upto)), list(cut.upto))
        try:
            return CarrierState.from_dict(data)
        except (KeyError, TypeError, ValueError) as exc:
            raise CarryFolderError(f"forwarded.json: {exc}") from exc

    def _cut(self) -> CarrierState:
        logs: dict[int, list[WriteRecord]] = {}
        upto: list[int] = []
        for shard, url in enumerate(self.config.old_leaders):
            served, last, records = read_leader_log(
                self.calls.client, url, self.calls.token, self.config.tls_name
            )
            if served != shard:
                raise CarryFolderError(f"{url} serves shard {served}, the config lists it as shard {shard}")
            logs[shard] = records
            upto.append(last)
        prior = prior_state(self.config.prior_carry, self.store.settings)
        cut = Cut(self.config.from_layout, self.config.from_shards, tuple(upto))
        state = CarrierState(Progress(list(upto)), list(upto))
        try:
            self.store.write_carry(cut, logs, prior, state.as_dict())
        except WriteLogError as exc:
            raise CarryFolderError(str(exc)) from exc
        log.info(
            "cut: %s carries %s's writes up to %s (%d records, %d items from the prior carry) in %s",
            self.config.to_layout,
            self.config.from_layout,
            upto,
            sum(len(r) for r in logs.values()),
            len(prior),
            self.store.describe(),
        )
        return state

    # --- forwarding, hand-over, open -------------------------------------------------------------

    def _new_replicas_ready(self) -> bool:
        waiting = [url for urls in self.config.new_replicas for url in urls if not self.calls.ready(url)]
        if waiting and not self._waiting_logged:
            log.info(
                "waiting for %d replicas of %s to be ready, e.g. %s",
                len(waiting),
                self.config.to_layout,
                waiting[0],
            )
        self._waiting_logged = bool(waiting)
        return not waiting

    def _forward(self, state: CarrierState, *, final: bool) -> bool:
        """One pass, its progress written to the store; False when it did not run or failed
        (reported, retried next step)."""
        if not self._new_replicas_ready():
            return False
        if self.config.back and not self._open_new_leaders():
            return False  # they would refuse the forwarded writes (503 writes_fenced)
        try:
            result = forward_pass(state.progress, self._old, self._new, final=final)
        except (ForwardError, OldLogError) as exc:
            self._fail_soft(f"forwarding: {exc}")
            # Opening again is cheap; a kept leader fenced since would refuse every later pass.
            self._new_leaders_open = False
            return False
        if result.sent:
            log.info(
                "forwarded %d records to %s (after %s)",
                result.sent,
                self.config.to_layout,
                result.progress.after,
            )
        if result.progress.caught_up and not state.progress.caught_up:
            log.info(
                "%s caught up with %s's writes (%d forwarded)",
                self.config.to_layout,
                self.config.from_layout,
                result.progress.forwarded,
            )
        state.progress = result.progress
        # Written before anything more is sent: a restart resumes here and sends nothing twice.
        return self._persist()

    def _hand_over(self, state: CarrierState, request: str) -> None:
        """Fence every old leader, forward up to their last sequences, report; on any failure
        open them again and report the failure."""
        self.phase = "handing-over"
        self._report()
        log.info("hand-over %s: fencing the leaders of %s", request, self.config.from_layout)
        fenced: dict[int, int] = {}
        problem = ""
        for shard, url in enumerate(self.config.old_leaders):
            last = self.calls.fence(url, True)
            if last is None:
                problem = f"leader of old shard {shard} ({url}) could not be fenced"
                break
            fenced[shard] = last
        if not problem:
            problem = self._forward_up_to(state, fenced)
        if problem:
            state.fenced = False
            self._open_again(state, sorted(fenced))
            state.hand_over_failed = request
            self._fail_soft(f"hand-over {request} failed: {problem}")
        else:
            state.handed_over = request
            state.left_fenced = []  # fenced on purpose now
            state.fenced = True
            log.info(
                "hand-over %s: %s fenced, every write up to %s forwarded to %s",
                request,
                self.config.from_layout,
                state.progress.after,
                self.config.to_layout,
            )
        self.phase = "forwarding"

    def _forward_up_to(self, state: CarrierState, fenced: dict[int, int]) -> str:
        """Passes until every old shard is forwarded up to its fenced last sequence ('' when it is;
        else why not). The leaders take no write meanwhile, so the passes do not wait for
        replicas: a replica not ready fails the hand-over at once."""
        for _ in range(MAX_HAND_OVER_PASSES):
            if all(state.progress.after[s] >= last for s, last in fenced.items()):
                if not self._persist():
                    return "the progress could not be written to the carry store"
                return ""
            if not self._new_replicas_ready():
                return f"not every replica of {self.config.to_layout} is ready"
            if not self._forward(state, final=False):
                return self.message or "a forwarding pass failed"
        return f"not forwarded up to the fenced sequences after {MAX_HAND_OVER_PASSES} passes"

    def _open(self, state: CarrierState, request: str) -> None:
        shards = list(range(self.config.from_shards))
        state.fenced = False  # from now on meant open: leaders that do not answer are retried
        if self._open_again(state, shards):
            state.opened = request
            log.info("open %s: the leaders of %s take writes again", request, self.config.from_layout)
        else:
            self._fail_soft(
                f"open {request}: not every leader of {self.config.from_layout} answered (retried)"
            )

    def _open_again(self, state: CarrierState, shards: list[int]) -> bool:
        """Open these old shards' leaders; those that do not answer are kept in `left_fenced`."""
        failed = [s for s in shards if self.calls.fence(self.config.old_leaders[s], False) is None]
        state.left_fenced = sorted((set(state.left_fenced) - set(shards)) | set(failed))
        return not failed

    def _keep_fenced(self, state: CarrierState) -> None:
        """After a hand-over, fence the old leaders again every step: a fence is held in a
        leader's memory, so one that restarted (an eviction, a node drain) would take writes
        again from a router still on the old topology. This narrows that window to one poll; what
        it took meanwhile is forwarded. A leader that does not answer takes no writes either."""
        if state.fenced:
            for url in self.config.old_leaders:
                self.calls.fence(url, True)

    def _reopen_left_fenced(self, state: CarrierState) -> None:
        """A failed hand-over must not leave leaders fenced: those it could not open are retried."""
        if state.left_fenced and not self._open_again(state, list(state.left_fenced)):
            self._fail_soft(
                f"old shards {state.left_fenced} are still fenced after a failed hand-over (retried)"
            )

    # --- durability and reports ------------------------------------------------------------------

    def _persist(self) -> bool:
        """Write the state to the store when it changed. False: it could not (retried next step)."""
        if self.state is None:
            return False
        data = self.state.as_dict()
        if data == self._persisted:
            return True
        try:
            self.store.write_progress(data)
        except StoreError as exc:
            self._fail_soft(f"writing the progress to {self.store.describe()}: {exc}")
            return False
        self._persisted = data
        return True

    def _fail_soft(self, message: str) -> None:
        """A fault the next step retries: reported in `message`, the phase unchanged."""
        log.warning("%s", message)
        self.message = message

    def _fail_hard(self, message: str) -> None:
        """A fault retrying cannot fix without a change (the store's folder, the config)."""
        log.error("%s", message)
        self.phase = "failed"
        self.message = message

    def report(self) -> CarryProgress:
        return progress_report(self.config, self.state, self.phase, self.message, datetime.now(UTC))

    def _report(self) -> None:
        current = self.report()
        now = self._clock()
        if same_report(self._reported, current) and now - self._reported_at < HEARTBEAT_S:
            return
        try:
            self.kube.report(current)
        except KubeError as exc:
            log.warning("cannot report the carry's progress: %s", exc)
            return
        self._reported, self._reported_at = current, now


def shard_client(ca_file: str | None) -> httpx.Client:
    """The HTTP client to shards: verifying with the cluster CA when TLS is on."""
    verify: ssl.SSLContext | bool = client_context(Path(ca_file)) if ca_file else True
    return httpx.Client(verify=verify)
