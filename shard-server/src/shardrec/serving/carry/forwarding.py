"""The forwarding of a carry, for both runtimes: records an old layout's leaders logged after the
cut go, re-partitioned, to the new layout's shards.

One pass (`forward_pass`) reads the old leaders' records after `Progress.after` (from an
`OldLogs`: the log files in the local runtime, `GET /v1/admin/writes` pages on Kubernetes),
re-partitions them by the new shard count (`serving/index/carry.py: repartition`) and sends each
new shard its part: to replica 0, which numbers, logs and applies them (`POST /v1/admin/writes`),
then the numbered records to its other replicas (`POST /v1/admin/writes/replicate`, as the router
replicates). A follower that misses earlier records answers 409 with its applied sequence and
first gets them from the new leader's log (a `LeaderLog`: the file locally, `GET
/v1/admin/writes` on Kubernetes). The caller persists the returned progress once the new shards
acknowledged; a pass that fails changes nothing, and the next one sends the same records again
(the same records in the same order leave the same item state).

Who calls it: tools/local/carry.py (the local runtime's supervisor) and serving/carry/carrier.py
(the Kubernetes carrier). Pure but for the HTTP calls of `ShardCalls`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from shardrec.serving.index.carry import repartition
from shardrec.serving.index.write_log import WriteLogError, WriteRecord
from shardrec.serving.shard.app import FENCE_PATH, MAX_WRITE_OPS, REPLICATE_PATH, WRITES_PATH

log = logging.getLogger("shardrec.carry")

FORWARD_TIMEOUT_S = 5.0
MAX_CATCH_UP_ROUNDS = 64
"""A follower behind gets at most this many batches of the leader's records per send."""
MAX_PAGES_PER_PASS = 64
"""Pages of one old leader's log read in one pass (64 x 1024 records); the rest in the next pass."""


class ForwardError(Exception):
    """A new shard did not take forwarded records; the pass stops and the next one retries."""


class OldLogError(Exception):
    """An old leader's log could not be read; the pass stops and the next one retries."""


@dataclass
class Progress:
    """How far the forwarding got: per old shard, the last sequence sent to the new layout.
    `caught_up`: a pass forwarded everything the old leaders held when it read them; `done`: the
    forwarding ended (a last pass found nothing new)."""

    after: list[int]
    caught_up: bool = False
    done: bool = False
    forwarded: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "after": self.after,
            "caught_up": self.caught_up,
            "done": self.done,
            "forwarded": self.forwarded,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Progress:
        return cls(
            [int(x) for x in data["after"]],
            bool(data.get("caught_up")),
            bool(data.get("done")),
            int(data.get("forwarded", 0)),
        )


@dataclass(frozen=True)
class OldRead:
    """Per old shard, records read after the progress (earlier ones may be included: they are
    skipped); `complete`: every record the old leaders held when read is among them."""

    logs: dict[int, list[WriteRecord]]
    complete: bool = True


class OldLogs(Protocol):
    """Where the old layout's records come from."""

    def read(self, after: Sequence[int]) -> OldRead:
        """The records after `after[s]` of each old shard; raises OldLogError."""
        ...


class LeaderLog(Protocol):
    """The new leaders' logs, for a follower that must catch up."""

    def records_after(self, shard: int, applied: int) -> list[WriteRecord]:
        """Up to MAX_WRITE_OPS records of new shard `shard`'s leader after sequence `applied`, in
        order; raises ForwardError."""
        ...


@dataclass(frozen=True)
class PassResult:
    progress: Progress
    sent: int


class ShardCalls:
    """The admin calls to shards (bearer token; TLS with the cluster CA when the client has it)."""

    def __init__(self, client: httpx.Client, token: str, *, tls_name: str | None = None) -> None:
        self.client = client
        self.token = token
        self._extensions = {"sni_hostname": tls_name} if tls_name else None

    @property
    def _headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"}

    def request(self, url: str, body: dict[str, Any]) -> httpx.Response:
        try:
            return self.client.post(
                url, json=body, headers=self._headers, timeout=FORWARD_TIMEOUT_S, extensions=self._extensions
            )
        except httpx.HTTPError as exc:
            raise ForwardError(f"{url}: {exc!r}") from exc

    def post(self, url: str, body: dict[str, Any]) -> Any:
        response = self.request(url, body)
        if response.status_code != 200:
            raise ForwardError(f"{url}: {response.status_code} {response.text[:200]}")
        return json.loads(response.content)

    def read_page(self, base_url: str, after: int) -> dict[str, Any]:
        """One page of a leader's log: `{"shard", "last_sequence", "records"}`."""
        url = base_url.rstrip("/") + WRITES_PATH
        try:
            response = self.client.get(
                url,
                params={"after": after, "limit": MAX_WRITE_OPS},
                headers=self._headers,
                timeout=FORWARD_TIMEOUT_S,
                extensions=self._extensions,
            )
        except httpx.HTTPError as exc:
            raise ForwardError(f"{url}: {exc!r}") from exc
        if response.status_code != 200:
            raise ForwardError(f"{url}: {response.status_code} {response.text[:200]}")
        body: dict[str, Any] = json.loads(response.content)
        return body

    def ready(self, base_url: str) -> bool:
        """Whether the replica answers /readyz with 200 (a replica not ready is waited for)."""
        try:
            response = self.client.get(
                base_url.rstrip("/") + "/readyz", timeout=FORWARD_TIMEOUT_S, extensions=self._extensions
            )
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    def fence(self, leader_url: str, fenced: bool) -> int | None:
        """Fence (or open) one leader: its last sequence, or None when it did not answer."""
        try:
            answer = self.post(leader_url.rstrip("/") + FENCE_PATH, {"fenced": fenced})
        except ForwardError as exc:
            log.warning("%s writes of %s: %s", "fencing" if fenced else "opening", leader_url, exc)
            return None
        return int(answer.get("last_sequence", 0))


def _records(raw: Any, where: str) -> list[WriteRecord]:
    try:
        return [WriteRecord.from_dict(item) for item in raw]
    except (KeyError, TypeError, ValueError, WriteLogError) as exc:
        raise ForwardError(f"{where}: a record that cannot be read: {exc}") from exc


class HttpOldLogs:
    """The old leaders' logs over HTTP (`GET /v1/admin/writes?after=N`): on Kubernetes each log
    is on its leader's own ReadWriteOnce volume. Per shard, pages up to the last sequence its
    first answer named (at most MAX_PAGES_PER_PASS pages: a long backlog takes several passes)."""

    def __init__(
        self, calls: ShardCalls, leaders: Sequence[str], *, max_pages: int = MAX_PAGES_PER_PASS
    ) -> None:
        self._calls = calls
        self._leaders = list(leaders)
        self._max_pages = max_pages

    def read(self, after: Sequence[int]) -> OldRead:
        logs: dict[int, list[WriteRecord]] = {}
        complete = True
        for shard, url in enumerate(self._leaders):
            records, reached = self._read_one(shard, url, after[shard])
            logs[shard] = records
            complete = complete and reached
        return OldRead(logs, complete)

    def _read_one(self, shard: int, url: str, after: int) -> tuple[list[WriteRecord], bool]:
        records: list[WriteRecord] = []
        last = after
        named: int | None = None
        for _ in range(self._max_pages):
            try:
                page = self._calls.read_page(url, last)
            except ForwardError as exc:
                raise OldLogError(str(exc)) from exc
            if int(page.get("shard", shard)) != shard:
                raise OldLogError(f"{url}: serves shard {page.get('shard')}, expected shard {shard}")
            named = int(page["last_sequence"]) if named is None else named
            try:
                fresh = _records(page["records"], url)
            except ForwardError as exc:
                raise OldLogError(str(exc)) from exc
            for record in fresh:
                if record.seq != last + 1:
                    raise OldLogError(f"{url}: sequence {record.seq} where {last + 1} was expected")
                records.append(record)
                last = record.seq
            if not fresh or last >= named:
                return records, last >= named
        return records, False


class HttpLeaderLog:
    """The new leaders' logs over HTTP, for followers that must catch up."""

    def __init__(self, calls: ShardCalls, leaders: Sequence[str]) -> None:
        self._calls = calls
        self._leaders = list(leaders)

    def records_after(self, shard: int, applied: int) -> list[WriteRecord]:
        page = self._calls.read_page(self._leaders[shard], applied)
        return [r for r in _records(page["records"], self._leaders[shard]) if r.seq > applied][:MAX_WRITE_OPS]


class NewLayout:
    """The new layout's replicas, per shard, replica 0 (the leader) first; a shard whose list is
    empty has no ready leader."""

    def __init__(self, calls: ShardCalls, replicas: Sequence[Sequence[str]], leader_log: LeaderLog) -> None:
        self._calls = calls
        self._replicas = [list(urls) for urls in replicas]
        self._leader_log = leader_log

    @property
    def shards(self) -> int:
        return len(self._replicas)

    def send(self, shard: int, records: Sequence[WriteRecord]) -> None:
        """To the leader (which numbers them), then the numbered records to every follower."""
        replicas = self._replicas[shard]
        if not replicas:
            raise ForwardError(f"new shard {shard}: its leader (replica 0) is not ready")
        leader = replicas[0].rstrip("/")
        for start in range(0, len(records), MAX_WRITE_OPS):
            chunk = records[start : start + MAX_WRITE_OPS]
            ops = [{k: v for k, v in r.as_dict().items() if k != "seq"} for r in chunk]
            answer = self._calls.post(leader + WRITES_PATH, {"ops": ops})
            numbered = [{**op, "seq": int(seq)} for op, seq in zip(ops, answer["sequences"], strict=True)]
            for follower in replicas[1:]:
                self._replicate(shard, follower.rstrip("/"), numbered)

    def _replicate(self, shard: int, url: str, numbered: list[dict[str, Any]]) -> None:
        """Send numbered records to a follower; one that misses earlier records (409 with its
        applied sequence) first gets them from the leader's log, then the batch again."""
        body = numbered
        for _ in range(MAX_CATCH_UP_ROUNDS):
            response = self._calls.request(url + REPLICATE_PATH, {"records": body})
            if response.status_code == 200:
                if body is numbered:
                    return
                body = numbered
                continue
            if response.status_code != 409:
                raise ForwardError(f"{url}: replicate answered {response.status_code} {response.text[:200]}")
            applied = int(response.json()["applied_sequence"])
            body = [r.as_dict() for r in self._leader_log.records_after(shard, applied)]
            if not body:
                raise ForwardError(f"{url}: sequence gap after {applied} that the leader's log cannot fill")
        raise ForwardError(f"{url}: still behind after {MAX_CATCH_UP_ROUNDS} rounds of catching up")


def forward_pass(progress: Progress, old: OldLogs, new: NewLayout, *, final: bool = False) -> PassResult:
    """One pass: read, re-partition, send. Returns the progress to persist (the caller writes it
    once this returned: the new shards acknowledged everything it counts) and how many records
    went. `final`: nothing more can reach the old logs (the old layout is gone, or every router
    serves the new one), so a complete pass that sent nothing ends the forwarding (`done`).
    Raises OldLogError or ForwardError; then nothing was recorded and the next pass retries."""
    read = old.read(progress.after)
    after = dict(enumerate(progress.after))
    parts = repartition(read.logs, new.shards, after=after)
    sent = 0
    for shard, records in enumerate(parts):
        if records:
            new.send(shard, records)
            sent += len(records)
    read_upto = [read.logs[s][-1].seq if read.logs.get(s) else after[s] for s in range(len(progress.after))]
    advanced = dataclasses.replace(
        progress,
        after=[max(a, b) for a, b in zip(progress.after, read_upto, strict=True)],
        forwarded=progress.forwarded + sent,
        caught_up=progress.caught_up or read.complete,
        done=final and read.complete and sent == 0,
    )
    return PassResult(advanced, sent)
