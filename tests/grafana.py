"""The chart's Grafana dashboard (charts/rtml/files/dashboard.json) as the queries Grafana would
send: every panel target's PromQL with the dashboard's variables substituted."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DASHBOARD = Path(__file__).resolve().parents[1] / "charts" / "rtml" / "files" / "dashboard.json"
VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")


@dataclass(frozen=True)
class PanelQuery:
    panel: str
    ref_id: str
    expr: str


def dashboard() -> dict[str, Any]:
    loaded = json.loads(DASHBOARD.read_text())
    assert isinstance(loaded, dict)
    return loaded


def panels(board: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every panel but rows (and those nested in collapsed rows)."""
    out: list[dict[str, Any]] = []
    for p in (board or dashboard())["panels"]:
        if p["type"] == "row":
            out.extend(p.get("panels") or [])
        else:
            out.append(p)
    return out


def queries(board: dict[str, Any] | None = None) -> list[PanelQuery]:
    return [
        PanelQuery(p["title"], t["refId"], t["expr"])
        for p in panels(board)
        for t in p.get("targets") or []
    ]


def substitute(expr: str, values: dict[str, str]) -> str:
    """`$name` and `${name}` replaced as Grafana does for a single-value selection; an unknown
    variable raises KeyError."""
    return VARIABLE.sub(lambda m: values[m.group(1) or m.group(2)], expr)
