"""A request body's JSON, or a 400 that says what is wrong with it."""

from __future__ import annotations

import json
from typing import Any

from rtml_runtime.errors import bad_input


def _reject_constant(value: str) -> Any:
    raise ValueError(f"{value} is not allowed: numbers must be finite")


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        raise bad_input(f"malformed JSON: {e.msg} at line {e.lineno} column {e.colno}", None) from e
    except ValueError as e:  # NaN/Infinity, or bytes that are not UTF-8
        raise bad_input(str(e), None) from e
    except RecursionError as e:
        raise bad_input("the JSON is nested too deeply", None) from e
