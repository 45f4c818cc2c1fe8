"""Which failures are the user's to fix and which are worth retrying."""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

# 4xx answers that retrying cannot fix: the object is invalid or we are not allowed.
PERMANENT_STATUSES = {400, 403, 404, 422}


class UserError(Exception):
    """A mistake in what the user wrote: reported as a False condition, not retried."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def describe_validation_error(err: ValidationError) -> str:
    """Pydantic's errors as one sentence per field, with camelCase paths as users wrote them."""
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        parts.append(f"{loc}: {e['msg']}" if loc else e["msg"])
    return "; ".join(parts)


def api_error_message(status: int | None, body: Any) -> str:
    """The API server's own message (it names the field), not the whole HTTP exchange."""
    try:
        data = json.loads(body) if isinstance(body, str | bytes) else body
        return str(data.get("message") or data)
    except (ValueError, AttributeError):
        return f"the API server answered {status}"


def backoff_delay(retry: int, base: float = 1.0, cap: float = 60.0) -> float:
    """Exponential backoff for temporary errors: 1, 2, 4, ... capped at a minute."""
    return float(min(cap, base * 2 ** max(0, retry)))
