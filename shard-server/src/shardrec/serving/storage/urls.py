"""Store and source locations: `s3://bucket/prefix`, `file:///abs/path` or a plain path. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

S3_SCHEME: Final = "s3://"
FILE_SCHEME: Final = "file://"


class LocationError(ValueError):
    """A URL this project cannot use as a store or source."""


@dataclass(frozen=True)
class S3Location:
    """`s3://bucket/prefix`: a bucket and a key prefix (no leading or trailing '/'; may be empty)."""

    bucket: str
    prefix: str

    def url(self) -> str:
        return f"{S3_SCHEME}{self.bucket}/{self.prefix}" if self.prefix else f"{S3_SCHEME}{self.bucket}"

    def child(self, name: str) -> S3Location:
        return S3Location(self.bucket, join_key(self.prefix, name))

    def parent_and_name(self) -> tuple[S3Location, str]:
        """`s3://b/p/q` -> (`s3://b/p`, `q`): a layout URL split into its store and its id."""
        if not self.prefix:
            raise LocationError(f"{self.url()}: names a bucket, not a layout under a store prefix")
        head, _, name = self.prefix.rpartition("/")
        return S3Location(self.bucket, head), name


Location = S3Location | Path


def join_key(*parts: str) -> str:
    """Join key parts with '/', ignoring empty parts."""
    return "/".join(part.strip("/") for part in parts if part.strip("/"))


def is_remote(url: str) -> bool:
    return url.startswith(S3_SCHEME)


def parse_location(url: str) -> Location:
    """An S3Location for `s3://...`, else the local Path (`file://` stripped)."""
    if url.startswith(S3_SCHEME):
        rest = url.removeprefix(S3_SCHEME)
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise LocationError(f"{url}: no bucket; use s3://bucket/prefix")
        if any(part in {".", ".."} for part in prefix.split("/")):
            raise LocationError(f"{url}: '.' and '..' are not allowed in an object key prefix")
        return S3Location(bucket, prefix.strip("/"))
    if url.startswith(FILE_SCHEME):
        return Path(url.removeprefix(FILE_SCHEME))
    if "://" in url:
        raise LocationError(f"{url}: unsupported scheme; use s3://bucket/prefix, file:///path or a path")
    return Path(url)
