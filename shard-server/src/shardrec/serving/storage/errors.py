"""What can go wrong with a store, as exceptions that name the object and never a credential."""

from __future__ import annotations

import os
from typing import Final

CREDENTIAL_VARIABLES: Final = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
_REDACTED: Final = "***"


def redact(text: str, secrets: tuple[str, ...] | None = None) -> str:
    """`text` with every credential value (default: the current AWS_* variables) replaced by ***."""
    values = (
        secrets if secrets is not None else tuple(os.environ.get(name, "") for name in CREDENTIAL_VARIABLES)
    )
    # Longest first, so a secret that contains another is replaced whole.
    for value in sorted((v for v in values if len(v) >= 4), key=len, reverse=True):
        text = text.replace(value, _REDACTED)
    return text


class StoreError(Exception):
    """A store operation failed; the message is one line, safe to log, and says what to check."""

    retryable: bool = False

    def __init__(self, message: str) -> None:
        super().__init__(redact(" ".join(message.split())))


class ObjectMissingError(StoreError):
    """The object (or file) does not exist."""


class ChecksumMismatchError(StoreError):
    """An object's bytes differ from its manifest entry."""


class AccessDeniedError(StoreError):
    """403/401: wrong, missing or expired credentials, or no permission."""


class StoreUnreachableError(StoreError):
    """Connection refused, reset or timed out: retried, then reported."""

    retryable = True


class StoreBusyError(StoreError):
    """The store throttles (503 SlowDown) or failed internally (5xx): retried, then reported."""

    retryable = True
