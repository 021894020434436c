"""`recctl demo --canary`: a v2 trained with other ALS parameters, rolled out with
`rollout.strategy: Canary` (a short shadow step, then a short 25% step) under bounded demo traffic,
and its analysis table read from the status the local runtime writes.

The traffic is the demo's own: sequential `/v1/recommend` calls for the trained users, to the
router on 127.0.0.1 only, at most `MAX_REQUESTS` and at most `--canary-timeout` seconds; it stops
as soon as the canary is promoted or rolled back. A canary that is still running when the traffic
stops is said, not hidden (it needs requests to finish).
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from shardrec.api.v1alpha1 import CanarySpec, CanaryStatus
from shardrec.tools.cli.main import CliError
from shardrec.tools.local.state import StateDir, is_supervisor_running, read_json
from shardrec.tools.pipeline.training import TrainParams

VERSION = "v2"
DEFAULT_REGULARIZATION = 1.0
DEFAULT_ALPHA = 1.0
DEFAULT_TIMEOUT_S = 120.0
START_TIMEOUT_S = 300.0
"""How long the v2 layout may take to build and start before its canary begins."""
MAX_REQUESTS = 5000
POLL_S = 0.5

# Short steps for a demo (the defaults are 60 s and 200 requests each, with four steps). The shadow
# step mirrors every query, the weight step compares half the candidate's answers. The demo shares
# a laptop's cores between its own client and two layouts of up to 8 processes each, so latency
# noise must not decide its outcome: the p99 slack is wide (200 ms, as in tests/local's canary
# test; default 5 ms), and the shadow step, the candidate's first requests, needs 300 answers, so
# its p99 is not just its one slowest answer (with 100, a good v2 was rolled back on a loaded
# 2-core machine: 567 ms vs 75 ms; mirrored answers also share the router with the next request).
CANARY = CanarySpec.model_validate(
    {
        "steps": [
            {"shadow": {"sampleRate": 1.0}, "minDurationSeconds": 5, "minRequests": 300},
            {"weight": 25, "minDurationSeconds": 5, "minRequests": 100},
        ],
        "analysis": {"compareSampleRate": 0.5, "p99SlackMilliseconds": 200},
    }
)


def canary_params(regularization: float, alpha: float) -> TrainParams:
    """The v2 recipe: the tuned defaults with another regularization and alpha (the same factors,
    since a new version keeps the dimension). Errors name the flag."""
    if not (math.isfinite(regularization) and regularization >= 0):
        raise CliError(f"--canary-regularization must be a finite number >= 0 (got {regularization})")
    if not (math.isfinite(alpha) and alpha > 0):
        raise CliError(f"--canary-alpha must be a finite number > 0 (got {alpha})")
    return TrainParams(regularization=regularization, alpha=alpha)


def check_timeout(seconds: float) -> float:
    if not (math.isfinite(seconds) and 0 < seconds <= 3600):
        raise CliError(f"--canary-timeout must be between 0 and 3600 seconds (got {seconds})")
    return seconds


def embeddings_dir(data: Path, params: TrainParams) -> Path:
    """Where v2 is trained: one folder per recipe, so another --canary-* trains anew."""
    return data / f"movielens-{VERSION}-reg{params.regularization:g}-alpha{params.alpha:g}"


def canary_manifest(v1: dict[str, Any], embeddings: Path) -> dict[str, Any]:
    """The v1 manifest with index version v2 from `embeddings` and `rollout.strategy: Canary`."""
    manifest = copy.deepcopy(v1)
    spec = manifest["spec"]
    spec["index"].update({"version": VERSION, "source": str(embeddings.resolve())})
    spec["rollout"].update(
        {"strategy": "Canary", "canary": CANARY.model_dump(by_alias=True, mode="json", exclude_none=True)}
    )
    return manifest


def quality_line(name: str, metadata: dict[str, Any]) -> str:
    """`v1 als factors=...: hit rate@10 0.123, NDCG@10 0.045 (held out)` from metadata.json."""
    params = (metadata.get("trainer") or {}).get("params") or {}
    recipe = " ".join(f"{k}={v}" for k, v in params.items() if k not in ("model", "threads"))
    quality = metadata.get("quality") or {}
    if "ndcg_at_10" not in quality:
        return f"  {name}: {recipe}"
    return (
        f"  {name}: {recipe}: hit rate@10 {quality['hit_rate_at_10']:.4f}, "
        f"NDCG@10 {quality['ndcg_at_10']:.4f} (offline, each user's latest rating held out)"
    )


def read_status(state: StateDir) -> dict[str, Any]:
    status: dict[str, Any] = read_json(state.status_file) if state.status_file.exists() else {}
    return status


def canary_of(status: dict[str, Any]) -> CanaryStatus | None:
    """`status.canary` when it is about v2."""
    raw = status.get("canary")
    canary = CanaryStatus.model_validate(raw) if isinstance(raw, dict) else None
    return canary if canary is not None and canary.version == VERSION else None


def wait_for_start(state: StateDir, timeout_s: float = START_TIMEOUT_S) -> CanaryStatus:
    """Until v2 is built, started and staged and its canary runs (bounded)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not is_supervisor_running(state):
            raise CliError(f"the supervisor exited; see {state.logs_dir / 'supervisor.log'}")
        status = read_status(state)
        canary = canary_of(status)
        if canary is not None:
            return canary
        for layout in status.get("layouts", []):
            if layout.get("version") == VERSION and layout.get("state") == "Failed":
                raise CliError(
                    f"layout {layout.get('name')} of {VERSION} failed: {layout.get('message', '')}"
                )
        time.sleep(POLL_S)
    raise CliError(
        f"{VERSION} did not reach its canary within {timeout_s:g}s; "
        f"see `recctl status --state-dir {state.root}`"
    )


@dataclass
class CanaryWatch:
    """What the demo saw: the last status.canary of its candidate, and its traffic."""

    canary: CanaryStatus
    sent: int = 0
    failed: list[str] = field(default_factory=list)
    versions: Counter[str] = field(default_factory=Counter)

    def see(self, canary: CanaryStatus | None) -> None:
        if canary is not None and canary.layout == self.canary.layout:
            self.canary = canary

    @property
    def finished(self) -> bool:
        return self.canary.phase != "Running"


def drive(
    router: str,
    state: StateDir,
    users: list[str],
    started: CanaryStatus,
    *,
    timeout_s: float,
    max_requests: int = MAX_REQUESTS,
    api_key: str | None = None,
) -> CanaryWatch:
    """Sequential `/v1/recommend` calls for `users` (cycled) until the canary finishes, or
    `max_requests` are sent, or `timeout_s` passes; the status is read every POLL_S seconds, and
    after the last request until the canary finishes or `timeout_s` passes."""
    if not router.startswith("http://127.0.0.1:"):
        raise CliError(f"demo traffic goes to 127.0.0.1 only, not {router}")
    watch = CanaryWatch(started)
    deadline = time.monotonic() + timeout_s
    next_poll = 0.0
    headers = {"x-api-key": api_key} if api_key else {}
    with httpx.Client(base_url=router, timeout=5, headers=headers) as client:
        while watch.sent < max_requests and time.monotonic() < deadline:
            if time.monotonic() >= next_poll:
                watch.see(canary_of(read_status(state)))
                if watch.finished:
                    break
                next_poll = time.monotonic() + POLL_S
            user = users[watch.sent % len(users)]
            watch.sent += 1
            try:
                response = client.post("/v1/recommend", json={"user_id": user, "k": 10})
            except httpx.HTTPError as exc:
                watch.failed.append(f"transport: {exc!r}")
                continue
            if response.status_code != 200:
                watch.failed.append(f"{response.status_code}: {response.text[:200]}")
                continue
            watch.versions[str(response.json().get("index_version", "?"))] += 1
    watch.see(canary_of(read_status(state)))
    # The request count can run out before a step's minimum duration (fast answers on small data:
    # "analysis passes; 4s/5s" after 5,000 requests): what is left is time alone, so wait for the
    # decision without more requests, until the same deadline.
    while not watch.finished and time.monotonic() < deadline:
        time.sleep(POLL_S)
        watch.see(canary_of(read_status(state)))
    return watch


def demo_users(user_ids: list[str]) -> list[str]:
    """The trained users in a fixed shuffled order (so both buckets of the split come early)."""
    users = list(user_ids)
    random.Random(0).shuffle(users)
    return users


def wait_for_switch(state: StateDir, timeout_s: float = 60.0) -> bool:
    """After a promotion: whether the status names v2 as the active version within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if read_status(state).get("activeVersion") == VERSION:
            return True
        time.sleep(POLL_S)
    return False
