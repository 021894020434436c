"""The two stores: a local folder and an S3-compatible bucket prefix, behind one small interface.

Keys are '/'-separated and relative to the store's root (a folder, or `s3://bucket/prefix`). These
classes are the I/O edge: each call is one operation, retried (retry.py) when the fault is transient;
everything above them (layouts.py) only sees `ObjectStore` and StoreError.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

from shardrec.serving.storage.errors import (
    AccessDeniedError,
    ObjectMissingError,
    StoreBusyError,
    StoreError,
    StoreUnreachableError,
)
from shardrec.serving.storage.retry import DEFAULT_POLICY, RetryPolicy, with_retries
from shardrec.serving.storage.urls import Location, S3Location, join_key, parse_location

if TYPE_CHECKING:
    from obstore.store import S3Store as _ObstoreS3

T = TypeVar("T")
_CHUNK = 8 << 20


class ObjectStore(Protocol):
    """What layouts.py needs of a store."""

    def describe(self, key: str = "") -> str:
        """A URL naming `key` (or the store), for messages."""
        ...

    def read_bytes(self, key: str) -> bytes: ...

    def download(self, key: str, dest: Path) -> str:
        """Write the object to `dest` (overwritten, fsynced) and return its sha256."""
        ...

    def sha256(self, key: str) -> tuple[int, str]:
        """(size, sha256) of the object, read through without keeping it."""
        ...

    def upload(self, key: str, src: Path) -> None: ...

    def write_bytes(self, key: str, data: bytes) -> None: ...

    def list_keys(self, prefix: str) -> list[str]:
        """Every key under `prefix` (a folder-like prefix, '' for all)."""
        ...

    def delete(self, keys: list[str]) -> None:
        """Delete these keys; missing ones are fine."""
        ...


@dataclass(frozen=True)
class S3Settings:
    """How to reach an S3 API. Credentials are NOT here: they come from AWS_* variables only."""

    endpoint: str | None = None
    region: str = "us-east-1"
    path_style: bool = False


ENV_ENDPOINT = "SHARDREC_S3_ENDPOINT"
ENV_REGION = "SHARDREC_S3_REGION"
ENV_PATH_STYLE = "SHARDREC_S3_PATH_STYLE"


def settings_from_env(env: Mapping[str, str] | None = None) -> S3Settings:
    """S3Settings from SHARDREC_S3_ENDPOINT / _REGION / _PATH_STYLE (for processes without --s3-* flags)."""
    env = os.environ if env is None else env
    return S3Settings(
        endpoint=env.get(ENV_ENDPOINT) or None,
        region=env.get(ENV_REGION) or "us-east-1",
        path_style=env.get(ENV_PATH_STYLE, "") in {"1", "true", "yes"},
    )


def _hash_into(
    chunks: Iterator[bytes] | Iterator[memoryview], sink: Callable[[bytes], object] | None
) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    for chunk in chunks:
        data = bytes(chunk) if not isinstance(chunk, bytes) else chunk
        digest.update(data)
        size += len(data)
        if sink is not None:
            sink(data)
    return size, digest.hexdigest()


class FileStore:
    """A store in a local folder (a PVC mount, a path on this machine)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def describe(self, key: str = "") -> str:
        return str(self.root / key) if key else str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / key

    def _missing(self, key: str) -> ObjectMissingError:
        return ObjectMissingError(f"{self.describe(key)}: file missing")

    def read_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise self._missing(key) from exc

    def _chunks(self, key: str) -> Iterator[bytes]:
        try:
            handle = self._path(key).open("rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise self._missing(key) from exc
        with handle:
            while chunk := handle.read(_CHUNK):
                yield chunk

    def download(self, key: str, dest: Path) -> str:
        chunks = self._chunks(key)
        with dest.open("wb") as out:
            _, digest = _hash_into(chunks, out.write)
            out.flush()
            os.fsync(out.fileno())
        return digest

    def sha256(self, key: str) -> tuple[int, str]:
        return _hash_into(self._chunks(key), None)

    def upload(self, key: str, src: Path) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        shutil.copyfile(src, temporary)
        with temporary.open("rb") as handle:
            os.fsync(handle.fileno())
        temporary.replace(target)

    def write_bytes(self, key: str, data: bytes) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        with temporary.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        temporary.replace(target)

    def list_keys(self, prefix: str) -> list[str]:
        base = self._path(prefix) if prefix else self.root
        if not base.is_dir():
            return []
        return sorted(
            path.relative_to(self.root).as_posix()
            for path in base.rglob("*")
            if path.is_file() and not path.name.startswith(".")
        )

    def delete(self, keys: list[str]) -> None:
        for key in keys:
            path = self._path(key)
            path.unlink(missing_ok=True)
            # Drop folders the deletion emptied, up to (not including) the root.
            for folder in path.parents:
                if folder == self.root or self.root not in folder.parents:
                    break
                try:
                    folder.rmdir()
                except OSError:
                    break


def _credentials() -> dict[str, str]:
    """obstore config entries from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN only."""
    names = {
        "access_key_id": "AWS_ACCESS_KEY_ID",
        "secret_access_key": "AWS_SECRET_ACCESS_KEY",
        "session_token": "AWS_SESSION_TOKEN",
    }
    return {key: os.environ[variable] for key, variable in names.items() if os.environ.get(variable)}


_S3_CODE = re.compile(r"<Code>([^<]{1,64})</Code>")
_HTTP_STATUS = re.compile(r"status code: (\d{3}[A-Za-z ]*)")


def describe_s3_failure(text: str) -> str:
    """One short line for an obstore error: the HTTP status and S3 error code when present (the
    XML body is dropped), else the error's first line. Pure."""
    code = _S3_CODE.search(text)
    status = _HTTP_STATUS.search(text)
    if code or status:
        parts = [f"HTTP {status.group(1).strip()}" if status else "", code.group(1) if code else ""]
        return ", ".join(part for part in parts if part)
    line = text.strip().splitlines()[0] if text.strip() else "(no message)"
    return line[:300]


_STATUS_NUMBER = re.compile(r"status code: (\d{3})\b")
_NOT_A_STATUS = re.compile(r"https?://\S+|(?<![\w.])\d+(?:\.\d+)?\s*(?:µs|us|ns|ms|s)(?=\W|$)")
"""URLs and durations (obstore's "in 403.504µs" and, in its debug source, "elapsed: 403.907µs"):
digits that only look like a status."""
_DENIED_CODES = frozenset(
    {"accessdenied", "invalidaccesskeyid", "signaturedoesnotmatch", "expiredtoken", "tokenrefreshrequired"}
)
_BUSY_CODES = frozenset({"slowdown", "internalerror", "serviceunavailable", "requesttimeout"})


def classify_s3_error(exc: BaseException, where: str) -> StoreError:
    """A StoreError for an obstore (or connection) exception. Pure: exception in, exception out.

    The HTTP status and the S3 error code, where the text states them, decide; digits elsewhere in
    the text (request ids, ports, paths) never do. Substring markers only classify texts that
    carry neither (connection errors, other libraries' messages)."""
    from obstore import exceptions as obx

    text = str(exc)
    lowered = _NOT_A_STATUS.sub(" ", text).lower()
    detail = describe_s3_failure(text)
    code_match = _S3_CODE.search(text)
    code = code_match.group(1).lower() if code_match else ""
    status_match = _STATUS_NUMBER.search(text)
    status = int(status_match.group(1)) if status_match else None
    stated = bool(code) or status is not None
    missing = ObjectMissingError(f"{where}: object missing")
    denied = AccessDeniedError(
        f"{where}: access denied ({detail}); check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / "
        "AWS_SESSION_TOKEN and their expiry"
    )
    busy = StoreBusyError(f"{where}: store busy or failing ({detail})")
    if code == "nosuchbucket":
        return ObjectMissingError(f"{where}: bucket missing ({detail})")
    if isinstance(exc, FileNotFoundError | obx.NotFoundError) or code == "nosuchkey" or status == 404:
        return missing
    if isinstance(exc, obx.PermissionDeniedError | obx.UnauthenticatedError) or code in _DENIED_CODES:
        return denied
    if status in (401, 403):
        return denied
    if code in _BUSY_CODES or (status is not None and status >= 500):
        return busy
    if not stated:
        if "nosuchbucket" in lowered:
            return ObjectMissingError(f"{where}: bucket missing ({detail})")
        if "nosuchkey" in lowered or re.search(r"\b404\b", lowered):
            return missing
        if re.search(r"\b40[13]\b", lowered) or any(
            m in lowered for m in ("accessdenied", "invalidaccesskeyid", "signaturedoesnotmatch", "expired")
        ):
            return denied
        if re.search(r"\b50[0234]\b", lowered) or "slowdown" in lowered or "internalerror" in lowered:
            return busy
    if any(
        marker in lowered
        for marker in (
            "error sending request",
            "connect",
            "connection",
            "timed out",
            "timeout",
            "broken pipe",
        )
    ):
        return StoreUnreachableError(f"{where}: store unreachable ({detail})")
    return StoreError(f"{where}: {detail}")


class S3Store:
    """A bucket prefix on an S3 API, through obstore (Rust object_store; chosen in docs/object-storage.md).

    obstore's own retries are off: this class retries (retry.py) so the policy, its logging and the
    set of retryable faults are ours and tested."""

    def __init__(
        self, location: S3Location, settings: S3Settings, *, policy: RetryPolicy = DEFAULT_POLICY
    ) -> None:
        from obstore.store import S3Store as ObstoreS3

        self.location = location
        self.policy = policy
        config: dict[str, str | bool] = {"region": settings.region, **_credentials()}
        if settings.endpoint:
            config["endpoint"] = settings.endpoint
        config["virtual_hosted_style_request"] = not settings.path_style
        if not _credentials():
            config["skip_signature"] = True
        client: dict[str, str | bool | timedelta] = {
            "connect_timeout": timedelta(seconds=5),
            "timeout": timedelta(seconds=300),
        }
        if settings.endpoint and settings.endpoint.startswith("http://"):
            client["allow_http"] = True
        self._store: _ObstoreS3 = ObstoreS3(
            location.bucket,
            prefix=location.prefix or None,
            config=config,  # type: ignore[arg-type]
            client_options=client,  # type: ignore[arg-type]
            retry_config={"max_retries": 0, "retry_timeout": timedelta(seconds=1)},
        )

    def describe(self, key: str = "") -> str:
        return self.location.child(key).url() if key else self.location.url()

    def _call(self, key: str, operation: Callable[[], T]) -> T:
        where = self.describe(key)

        def once() -> T:
            try:
                return operation()
            except StoreError:
                raise
            except Exception as exc:  # obstore raises its own classes, OSError and ValueError
                raise classify_s3_error(exc, where) from None

        return with_retries(once, what=where, policy=self.policy)

    def read_bytes(self, key: str) -> bytes:
        import obstore

        return self._call(key, lambda: bytes(obstore.get(self._store, key).bytes()))

    def download(self, key: str, dest: Path) -> str:
        import obstore

        def once() -> str:
            result = obstore.get(self._store, key)
            with dest.open("wb") as out:
                _, digest = _hash_into(iter(result.stream(min_chunk_size=_CHUNK)), out.write)
                out.flush()
                os.fsync(out.fileno())
            return digest

        return self._call(key, once)

    def sha256(self, key: str) -> tuple[int, str]:
        import obstore

        return self._call(
            key, lambda: _hash_into(iter(obstore.get(self._store, key).stream(min_chunk_size=_CHUNK)), None)
        )

    def upload(self, key: str, src: Path) -> None:
        import obstore

        self._call(key, lambda: obstore.put(self._store, key, src))

    def write_bytes(self, key: str, data: bytes) -> None:
        import obstore

        self._call(key, lambda: obstore.put(self._store, key, data))

    def list_keys(self, prefix: str) -> list[str]:
        import obstore

        def once() -> list[str]:
            keys: list[str] = []
            for batch in obstore.list(self._store, prefix=prefix or None):
                keys.extend(str(meta["path"]) for meta in batch)
            return sorted(keys)

        return self._call(prefix, once)

    def delete(self, keys: list[str]) -> None:
        import obstore

        if keys:
            self._call(keys[0], lambda: obstore.delete(self._store, keys))


def open_store(location: Location | str, settings: S3Settings | None = None) -> ObjectStore:
    """The store at `location` (a URL or a parsed location)."""
    parsed = parse_location(location) if isinstance(location, str) else location
    if isinstance(parsed, S3Location):
        return S3Store(parsed, settings or S3Settings())
    return FileStore(parsed)


__all__ = ["FileStore", "ObjectStore", "S3Settings", "S3Store", "join_key", "open_store"]
