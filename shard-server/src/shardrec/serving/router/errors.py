"""Client-facing errors: every one is JSON `{"error": {"code", "message"}}` with a fitting status."""

from __future__ import annotations

import orjson


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def body(self) -> bytes:
        return error_body(self.code, self.message)


def error_body(code: str, message: str) -> bytes:
    return orjson.dumps({"error": {"code": code, "message": message}})


def invalid(message: str) -> ApiError:
    """A well-formed JSON body whose fields are wrong."""
    return ApiError(422, "invalid_request", message)
