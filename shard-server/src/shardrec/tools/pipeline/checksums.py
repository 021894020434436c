"""SHA-256 of data files and verification against known digests."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from shardrec.serving.index.files import sha256_file


class ChecksumError(ValueError):
    """A data file is missing or its SHA-256 differs from the known one."""


def verify_files(folder: Path, expected: Mapping[str, str]) -> dict[str, str]:
    """Check every file named in `expected` inside `folder`; return the verified digests.

    The error names the first bad file, its expected and actual digest, so a truncated
    download or an edited copy is obvious.
    """
    verified: dict[str, str] = {}
    for name, want in sorted(expected.items()):
        path = folder / name
        if not path.is_file():
            raise ChecksumError(f"{path}: file missing (expected sha256 {want})")
        got = sha256_file(path)
        if got != want:
            raise ChecksumError(f"{path}: sha256 mismatch: expected {want}, got {got}")
        verified[name] = got
    return verified
