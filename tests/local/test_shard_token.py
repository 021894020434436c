"""The local runtime's per-cluster shard admin token: generated once in the state dir, private."""

from __future__ import annotations

import stat
from pathlib import Path

from shardrec.tools.local.state import StateDir


def test_the_token_is_generated_once_private_and_per_cluster(tmp_path: Path) -> None:
    one, other = StateDir(tmp_path / "one"), StateDir(tmp_path / "other")
    for state in (one, other):
        state.ensure()
    token = one.shard_token()
    assert len(token) == 64 and int(token, 16) >= 0
    assert one.shard_token() == token  # stable across calls (and supervisor restarts)
    assert stat.S_IMODE(one.shard_token_file.stat().st_mode) == 0o600
    assert other.shard_token() != token
