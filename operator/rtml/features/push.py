"""Rows pushed to a `source.type: push` FeatureView: checked against the view, as a DataFrame.

One check for both doors (the runtime's `POST /push/{view}` and `rtml push`), so a bad row is
refused with the same words, naming its field (`rows[2].amount`), before Feast sees it.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from rtml.api.featureview import Dtype, FeatureView

if TYPE_CHECKING:
    import pandas as pd

MAX_PUSH_ROWS = 10_000


class PushError(ValueError):
    """A pushed payload that does not fit the view; `field` names where."""

    def __init__(self, message: str, field: str | None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


def _value(dtype: Dtype, value: Any, where: str) -> Any:
    ok = {
        "STRING": isinstance(value, str),
        "BOOL": isinstance(value, bool),
        "INT32": isinstance(value, int) and not isinstance(value, bool),
        "INT64": isinstance(value, int) and not isinstance(value, bool),
    }.get(dtype)
    if ok is None:  # FLOAT, DOUBLE
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        ok = ok and math.isfinite(value)
    if not ok:
        raise PushError(f"{where} must be a {dtype} value, not {value!r}", where)
    return float(value) if dtype in ("FLOAT", "DOUBLE") else value


def _timestamp(value: Any, where: str) -> datetime:
    try:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return datetime.fromtimestamp(value, tz=UTC)
        if isinstance(value, str):
            stamp = datetime.fromisoformat(value.replace("Z", "+00:00"))
            return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)
    except (ValueError, OverflowError, OSError):
        pass
    raise PushError(f"{where} must be an ISO 8601 time or epoch seconds, not {value!r}", where)


def check_rows(view: FeatureView, payload: Any) -> list[dict[str, Any]]:
    """The payload's rows, typed; every row carries the join key, the timestamp and each feature.

    Raises PushError naming the first field that does not fit.
    """
    if not isinstance(payload, dict) or not isinstance(payload.get("rows"), list):
        raise PushError('the body must be {"rows": [{...}, ...]}', "rows")
    rows = payload["rows"]
    if not rows:
        raise PushError("rows is empty; push at least one row", "rows")
    if len(rows) > MAX_PUSH_ROWS:
        raise PushError(f"rows holds {len(rows)} rows, over the limit of {MAX_PUSH_ROWS}", "rows")
    spec = view.spec
    key, ts = spec.entity.join_key, spec.source.timestamp_field
    dtypes: dict[str, Dtype] = {f.name: f.dtype for f in spec.features}
    out = []
    for i, row in enumerate(rows):
        at = f"rows[{i}]"
        if not isinstance(row, dict):
            raise PushError(f"{at} must be an object", at)
        unknown = sorted(set(row) - {key, ts, *dtypes})
        if unknown:
            raise PushError(
                f"{at}.{unknown[0]} is not a feature of FeatureView {view.metadata.name!r}",
                f"{at}.{unknown[0]}",
            )
        missing = [n for n in (key, ts, *dtypes) if row.get(n) is None]
        if missing:
            raise PushError(f"{at}.{missing[0]} is missing", f"{at}.{missing[0]}")
        typed = {
            key: _value(spec.entity.value_type, row[key], f"{at}.{key}"),
            ts: _timestamp(row[ts], f"{at}.{ts}"),
        }
        typed.update({n: _value(d, row[n], f"{at}.{n}") for n, d in dtypes.items()})
        out.append(typed)
    return out


def rows_frame(view: FeatureView, payload: Any) -> pd.DataFrame:
    """`check_rows` as the DataFrame Feast's push API takes."""
    import pandas as pd

    return pd.DataFrame(check_rows(view, payload))
