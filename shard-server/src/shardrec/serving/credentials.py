"""Shard tokens as the servers hold them: fixed (a flag or the environment) or a file that may
change under a running process (a mounted Kubernetes Secret, rotated by the operator).

`TokenFile` re-reads its file when its identity (inode, size, mtime) changed, checking at most
once per `recheck_s`; kubelet swaps a Secret volume's files by renaming a symlink, so a read sees
either the old or the new content, never half. A file that cannot be read keeps the last good
tokens (a rotation must not turn into an outage), and an empty or missing file at start-up is an
error the caller reports.

`accepts` compares the presented header with every accepted token in constant time and looks at
all of them, so the timing says nothing about which one (if any) matched.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from shardrec.api.credentials import parse_tokens


class TokenSource(Protocol):
    def tokens(self) -> tuple[str, ...]: ...


class TokenFileError(Exception):
    """The token file is missing, unreadable or empty."""


class StaticTokens:
    """Tokens that never change (`--admin-token`, the local runtime)."""

    def __init__(self, *tokens: str) -> None:
        self._tokens = tuple(t for t in tokens if t)

    def tokens(self) -> tuple[str, ...]:
        return self._tokens


class TokenFile:
    """The tokens in `path`, one a line, re-read when the file changes."""

    def __init__(
        self, path: Path, *, recheck_s: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.path = path
        self._recheck_s = recheck_s
        self._clock = clock
        self._identity: tuple[int, int, int] | None = None
        self._checked = float("-inf")
        self._tokens = self._read()
        if not self._tokens:
            raise TokenFileError(f"{path}: no token in the file")

    def _read(self) -> tuple[str, ...]:
        try:
            stat = self.path.stat()
            text = self.path.read_text(encoding="utf-8")
        except OSError as exc:
            raise TokenFileError(f"{self.path}: {exc.strerror or exc}") from exc
        self._identity = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        return parse_tokens(text)

    def tokens(self) -> tuple[str, ...]:
        now = self._clock()
        if now - self._checked < self._recheck_s:
            return self._tokens
        self._checked = now
        try:
            stat = self.path.stat()
            if (stat.st_ino, stat.st_size, stat.st_mtime_ns) != self._identity:
                fresh = self._read()
                if fresh:
                    self._tokens = fresh
        except (OSError, TokenFileError):
            pass  # keep the last good tokens; the next check tries again
        return self._tokens

    def first(self) -> str:
        return self.tokens()[0]


def accepts(tokens: tuple[str, ...], authorization: str) -> bool:
    """Whether `authorization` is `Bearer <one of tokens>`; constant time in which one matched."""
    presented = authorization.encode()
    matched = False
    for token in tokens:
        matched |= hmac.compare_digest(presented, f"Bearer {token}".encode())
    return matched
