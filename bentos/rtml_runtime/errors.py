"""Errors the HTTP surface turns into `{"error": {"code", "message", "field"}}`."""

from __future__ import annotations


class RequestError(Exception):
    """A request that cannot be answered as asked; status is the HTTP status."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        retry_after_s: float | None = None,
        headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.retry_after_s = retry_after_s
        self.headers = headers  # more response headers (a 401's WWW-Authenticate)

    def body(self) -> dict[str, object]:
        return {"error": {"code": self.code, "message": self.message, "field": self.field}}


def bad_input(message: str, field: str | None) -> RequestError:
    return RequestError(400, "invalid_input", message, field)


def too_many_rows(message: str, field: str) -> RequestError:
    """A batch over RTML_MAX_BATCH_ROWS: too large, as an oversized body is (413)."""
    return RequestError(413, "too_many_rows", message, field)
