"""Leader election on a coordination.k8s.io/v1 Lease, so two operator replicas never both reconcile.

Why not kopf's `--peering`: peering is a priority scheme, not an election. Replicas of one
Deployment share one priority, and kopf then has *every* operator warn and freeze (its docs: "If
two operators run with the same priority, all operators issue a warning and freeze, leaving the
cluster unserved"); it also needs its own CRDs and cluster-wide RBAC. A Lease is what
kube-controller-manager and controller-runtime use: one namespaced object, optimistic concurrency
on its resourceVersion, nothing to install.

The rules are client-go's (`leaderelection`), in its default timings (15 s lease, 10 s renew
deadline, 2 s retry):
- a candidate takes the Lease when it is free or names it, or when its record has not changed
  for `leaseDurationSeconds` *as observed by this process* (never by comparing clocks with the
  holder's `renewTime`);
- the leader renews every `retry` seconds; every write is a JSON merge patch carrying the
  resourceVersion it read (so RBAC needs get/create/patch, never update), and a conflict (409)
  means someone else wrote it first;
- a leader that could not renew for `renew_deadline` seconds stops: the process exits, so it
  never reconciles on a lease it may have lost (the kubelet restarts it, as a candidate).

    candidate --(free / expired / ours)--> leader --(renewed)--> leader
        ^                                      |
        +---------- process exits <-- renew deadline passed

Takeover after a leader dies is at most `leaseDurationSeconds + retry` (17 s by default); a
leader that stops cleanly (SIGTERM) releases the Lease, and a candidate takes it at its next try.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubernetes import client as k8s_client
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)

LEASE_DURATION_SECONDS = 15
RENEW_DEADLINE_SECONDS = 10.0
RETRY_SECONDS = 2.0


@dataclass(frozen=True)
class LeaseRecord:
    """What a Lease says, plus the resourceVersion to update it against."""

    holder: str
    duration_s: int
    transitions: int
    acquired: str
    resource_version: str


@dataclass(frozen=True)
class Observation:
    """The last record this candidate saw, and when (its own monotonic clock) it last changed."""

    record: LeaseRecord | None
    changed_at: float


def may_take(observation: Observation, me: str, now: float) -> bool:
    """Whether `me` may write itself into the Lease: free, already ours, or unchanged for its duration."""
    record = observation.record
    if record is None or not record.holder or record.holder == me:
        return True
    return now >= observation.changed_at + record.duration_s


def observe(previous: Observation | None, record: LeaseRecord | None, now: float) -> Observation:
    """The new observation: its clock restarts whenever the record changed (a renewal bumps the
    resourceVersion), so an expiry is measured on this process's clock only."""
    if previous is not None and previous.record == record:
        return previous
    return Observation(record, now)


def _micro_time(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_body(
    name: str, me: str, duration_s: int, previous: LeaseRecord | None, now: datetime
) -> dict[str, Any]:
    """The Lease naming `me` as holder, renewed now (a new holder counts a transition)."""
    stamp = _micro_time(now)
    taking_over = previous is None or previous.holder != me
    transitions = (previous.transitions if previous else 0) + (1 if taking_over and previous else 0)
    metadata: dict[str, Any] = {"name": name}
    if previous is not None:
        metadata["resourceVersion"] = previous.resource_version
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": metadata,
        "spec": {
            "holderIdentity": me,
            "leaseDurationSeconds": duration_s,
            "acquireTime": stamp if taking_over or previous is None else previous.acquired,
            "renewTime": stamp,
            "leaseTransitions": transitions,
        },
    }


def _record(lease: Any) -> LeaseRecord:
    spec = lease.spec
    acquired = spec.acquire_time
    return LeaseRecord(
        holder=spec.holder_identity or "",
        duration_s=int(spec.lease_duration_seconds or LEASE_DURATION_SECONDS),
        transitions=int(spec.lease_transitions or 0),
        acquired=_micro_time(acquired) if isinstance(acquired, datetime) else str(acquired or ""),
        resource_version=str(lease.metadata.resource_version),
    )


class LeaseElector:
    """Acquire, renew and release one Lease (blocking calls; renewal runs in a daemon thread)."""

    def __init__(
        self,
        api_client: k8s_client.ApiClient,
        *,
        namespace: str,
        name: str,
        identity: str,
        lease_duration_s: int = LEASE_DURATION_SECONDS,
        renew_deadline_s: float = RENEW_DEADLINE_SECONDS,
        retry_s: float = RETRY_SECONDS,
    ) -> None:
        self.api = k8s_client.CoordinationV1Api(api_client)
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration_s = lease_duration_s
        self.renew_deadline_s = renew_deadline_s
        self.retry_s = retry_s
        self._observation: Observation | None = None
        self._stop = threading.Event()

    def _read(self) -> LeaseRecord | None:
        try:
            return _record(self.api.read_namespaced_lease(self.name, self.namespace))
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def _patch(self, body: Any) -> Any:
        """A merge patch preconditioned on the resourceVersion in `body` (409 when it is stale)."""
        return self.api.patch_namespaced_lease(
            self.name, self.namespace, body, _content_type="application/merge-patch+json"
        )

    def try_acquire_or_renew(self) -> bool:
        """One attempt; True when this process holds the Lease afterwards."""
        now = time.monotonic()
        record = self._read()
        self._observation = observe(self._observation, record, now)
        if not may_take(self._observation, self.identity, now):
            return False
        # The client serialises a plain dict as it would a V1Lease (its stubs only name the model).
        body: Any = lease_body(self.name, self.identity, self.lease_duration_s, record, datetime.now(UTC))
        try:
            if record is None:
                written = self.api.create_namespaced_lease(self.namespace, body)
            else:
                written = self._patch(body)
        except ApiException as error:
            if error.status in (409, 422):  # someone else wrote it first: look again next time
                return False
            raise
        if record is None or record.holder != self.identity:
            log.info("Leader election: %s took Lease %s/%s", self.identity, self.namespace, self.name)
        self._observation = Observation(_record(written), time.monotonic())
        return True

    def acquire(self) -> None:
        """Block until this process leads."""
        log.info("Leader election: %s waits for Lease %s/%s", self.identity, self.namespace, self.name)
        while True:
            try:
                if self.try_acquire_or_renew():
                    return
            except (ApiException, OSError) as error:
                log.warning("Leader election: cannot read or write the Lease: %s", error)
            time.sleep(self.retry_s)

    def keep_renewing(self, on_lost: Any) -> threading.Thread:
        """Renew every `retry_s` in a daemon thread; call `on_lost()` once the renew deadline passes."""

        def loop() -> None:
            renewed = time.monotonic()
            while not self._stop.wait(self.retry_s):
                try:
                    if self.try_acquire_or_renew():
                        renewed = time.monotonic()
                        continue
                except (ApiException, OSError) as error:
                    log.warning("Leader election: renewing the Lease failed: %s", error)
                if time.monotonic() - renewed >= self.renew_deadline_s:
                    log.error("Leader election: %s lost Lease %s; stopping", self.identity, self.name)
                    on_lost()
                    return

        thread = threading.Thread(target=loop, name="lease-renewal", daemon=True)
        thread.start()
        return thread

    def release(self) -> None:
        """Stop renewing and hand the Lease back (a successor takes it at once, not after expiry)."""
        self._stop.set()
        try:
            record = self._read()
            if record is None or record.holder != self.identity:
                return
            body: Any = lease_body(self.name, self.identity, 1, record, datetime.now(UTC))
            body["spec"]["holderIdentity"] = ""
            self._patch(body)
            log.info("Leader election: %s released Lease %s", self.identity, self.name)
        except (ApiException, OSError) as error:
            log.warning("Leader election: releasing the Lease failed: %s", error)
