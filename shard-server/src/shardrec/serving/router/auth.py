"""API keys: loaded from a file (a mounted Secret in Kubernetes), checked in constant time.

File format: one key per line, `name:key` or a bare key (then the name is `key-<line>`),
optionally followed by whitespace and its permissions, comma-separated: `read` (recommendations,
similar items), `write` (item upserts and deletes). A key without permissions may read only, so
existing key files grant nothing new; a key that must write says so (`ingest:k3y write` or
`admin:k3y read,write`). Blank lines and lines starting with `#` are ignored. The name, never
the key, labels rate-limit buckets and logs.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Permission = Literal["read", "write"]
PERMISSIONS: frozenset[str] = frozenset({"read", "write"})
DEFAULT_PERMISSIONS: frozenset[str] = frozenset({"read"})


class ApiKeysError(ValueError):
    """The API keys file is unreadable or malformed; the message names the file and line."""


@dataclass(frozen=True)
class ApiKeys:
    entries: tuple[tuple[str, bytes], ...]  # (name, key)
    permissions: Mapping[str, frozenset[str]] = field(default_factory=dict)
    """Per key name; a name not listed may read only."""

    def allows(self, name: str, permission: Permission) -> bool:
        return permission in self.permissions.get(name, DEFAULT_PERMISSIONS)

    @property
    def required(self) -> bool:
        return bool(self.entries)

    def identify(self, presented: str) -> str | None:
        """The name of the key equal to `presented`, or None.

        Compares against every key with `hmac.compare_digest` and does not stop at a match, so the
        time taken does not reveal which key (or how much of one) matched.
        """
        candidate = presented.encode("utf-8", "surrogateescape")
        found: str | None = None
        for name, key in self.entries:
            if hmac.compare_digest(candidate, key) and found is None:
                found = name
        return found


OPEN = ApiKeys(entries=())


def parse_api_keys(text: str, source: str) -> ApiKeys:
    entries: list[tuple[str, bytes]] = []
    permissions: dict[str, frozenset[str]] = {}
    names: set[str] = set()
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line, granted = _split_permissions(line, source, number)
        name, sep, key = line.partition(":")
        if not sep:
            name, key = f"key-{number}", line
        name, key = name.strip(), key.strip()
        if not name or not key:
            raise ApiKeysError(f"{source}:{number}: expected 'name:key' or a bare key, got an empty part")
        if any(ch.isspace() for ch in key):
            raise ApiKeysError(f"{source}:{number}: an API key must not contain whitespace")
        if name in names:
            raise ApiKeysError(f"{source}:{number}: duplicate key name {name!r}")
        names.add(name)
        entries.append((name, key.encode("utf-8")))
        if granted is not None:
            permissions[name] = granted
    if not entries:
        raise ApiKeysError(f"{source}: no API keys in the file (an empty file would lock every client out)")
    return ApiKeys(entries=tuple(entries), permissions=permissions)


def _split_permissions(line: str, source: str, number: int) -> tuple[str, frozenset[str] | None]:
    """`name:key read,write` -> ("name:key", {"read", "write"}); no permissions -> None."""
    parts = line.split()
    if len(parts) == 1:
        return line, None
    if len(parts) > 2:
        raise ApiKeysError(
            f"{source}:{number}: expected 'name:key [read,write]' (no whitespace in a key), "
            f"got {len(parts)} words"
        )
    granted = frozenset(p.strip() for p in parts[1].split(",") if p.strip())
    unknown = sorted(granted - PERMISSIONS)
    if unknown or not granted:
        raise ApiKeysError(
            f"{source}:{number}: unknown permission(s) {', '.join(unknown) or '(none)'}: an API key must "
            "not contain whitespace, and what follows it are its permissions, read and/or write"
        )
    return parts[0], granted


def load_api_keys(path: Path) -> ApiKeys:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ApiKeysError(f"{path}: cannot read API keys: {exc}") from exc
    return parse_api_keys(text, str(path))
