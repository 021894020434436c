"""Fetch the MovieLens archive from GroupLens when the folder is missing, and install it verified.

The archive is unpacked beside the destination and renamed into place only after every known
checksum matches, so a failed or tampered download never leaves a half-installed folder.
Only the expected member names are read from the zip, so its paths cannot escape the target.
"""

from __future__ import annotations

import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from tqdm import tqdm

from shardrec.tools.pipeline.checksums import ChecksumError, verify_files
from shardrec.tools.pipeline.movielens import DATASET_NAME, KNOWN_SHA256, MovieLensError

ARCHIVE_URL = "https://files.grouplens.org/datasets/movielens/ml-latest-small.zip"
_OPTIONAL_MEMBERS = ("README.txt",)
_CHUNK = 1 << 16


def install_archive(archive: Path, dest: Path, expected: dict[str, str] | None = None) -> Path:
    """Unpack `<name>/<file>` members of a GroupLens zip into `dest`, verified, atomically."""
    expected = expected if expected is not None else KNOWN_SHA256[DATASET_NAME]
    if dest.exists():
        raise MovieLensError(f"{dest}: already exists; not overwriting it with {archive}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        try:
            with zipfile.ZipFile(archive) as bundle:
                names = set(bundle.namelist())
                for filename in (*sorted(expected), *_OPTIONAL_MEMBERS):
                    member = f"{DATASET_NAME}/{filename}"
                    if member not in names:
                        if filename in expected:
                            raise MovieLensError(f"{archive}: member {member} missing from the archive")
                        continue
                    with bundle.open(member) as source, (staging / filename).open("wb") as target:
                        shutil.copyfileobj(source, target)
        except zipfile.BadZipFile as exc:
            raise MovieLensError(f"{archive}: not a zip archive ({exc})") from exc
        try:
            verify_files(staging, expected)
        except ChecksumError as exc:
            raise MovieLensError(f"{archive}: {exc}".replace(str(staging), DATASET_NAME)) from exc
        staging.rename(dest)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return dest


def download_movielens(dest: Path, url: str = ARCHIVE_URL, *, progress: bool = True) -> Path:
    """Download the archive from `url` and install it at `dest` (see `install_archive`)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=dest.parent) as scratch:
        archive = Path(scratch) / "archive.zip"
        try:
            with urllib.request.urlopen(url, timeout=60) as response, archive.open("wb") as out:
                total = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(
                    total=total, unit="B", unit_scale=True, desc="download", disable=not progress
                ) as bar:
                    while chunk := response.read(_CHUNK):
                        out.write(chunk)
                        bar.update(len(chunk))
        except (urllib.error.URLError, OSError) as exc:
            raise MovieLensError(
                f"could not download {url} ({exc}); put {DATASET_NAME} at {dest} or point "
                "--movielens / $SHARDREC_MOVIELENS at a copy"
            ) from exc
        return install_archive(archive, dest)
