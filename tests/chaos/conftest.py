"""The fault suite's scale and its recorder.

SHARDREC_CHAOS_SCALE: `short` (the default: what `make test`, and so CI, runs) or `full` (`make
chaos`). SHARDREC_CHAOS_ROWS: where to write the recorded rows at the end of the session, for
benchmarks/chaos_table.py."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.table import chaos_table

SCALE = os.environ.get("SHARDREC_CHAOS_SCALE", "short")
if SCALE not in ("short", "full"):
    raise pytest.UsageError(f"SHARDREC_CHAOS_SCALE: 'short' or 'full', got {SCALE!r}")
# Normal requests per scenario.
REQUESTS = 1000 if SCALE == "full" else 100


class Recorder:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self._check = chaos_table().check_row

    def record(self, scenario: str, sent: int, failed: int, p99_ms: float, outcome: str) -> None:
        row = {
            "scenario": scenario,
            "sent": sent,
            "failed": failed,
            "p99_ms": float(p99_ms),
            "outcome": outcome,
        }
        self._check(row)
        print(f"CHAOS {row}")
        self.rows.append(row)


@pytest.fixture(scope="session")
def chaos() -> Iterator[Recorder]:
    recorder = Recorder()
    yield recorder
    target = os.environ.get("SHARDREC_CHAOS_ROWS")
    if target:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        Path(target).write_text(json.dumps({"scale": SCALE, "rows": recorder.rows}, indent=2) + "\n")
