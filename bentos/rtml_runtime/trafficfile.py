"""Reading the traffic plan file, and noticing when the kubelet has replaced it.

A ConfigMap volume is refreshed by writing a new `..data_TIMESTAMP` folder and renaming the
`..data` symlink over the old one: the file's path never changes, its content does, atomically.
So the file is re-read every `traffic_poll_seconds` and compared by content (a few hundred
bytes once a second; (inode, mtime) of a symlinked path would need the resolved path's stat
and still miss an edit in place on one machine). Reading happens in a worker thread.

A file that is missing means no experiment (a pod of a Model without an Experiment, or
`rtml serve` without --traffic). A file that cannot be parsed is logged, naming the file and
the field, and ignored: the plan in effect stays (a bad write never takes traffic away from a
running experiment, nor silently ends it).
"""

from __future__ import annotations

import logging
from pathlib import Path

from pydantic import ValidationError

from rtml.api.traffic import CHAMPION_ONLY, TrafficPlan

log = logging.getLogger("rtml.runtime.traffic")


class PlanError(ValueError):
    """The traffic file holds something that is not a plan; says which file and field."""


def parse_plan(text: bytes, where: Path) -> TrafficPlan:
    if not text.strip():
        return CHAMPION_ONLY
    try:
        return TrafficPlan.model_validate_json(text)
    except ValidationError as e:
        parts = []
        for err in e.errors():
            field = ".".join(str(p) for p in err["loc"]) or "(the plan)"
            parts.append(f"{field}: {str(err['msg']).removeprefix('Value error, ')}")
        raise PlanError(f"the traffic plan {where} is invalid: {'; '.join(parts)}") from e


class TrafficFile:
    """`read()` answers the plan when the file changed since the last call, else None."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._last: bytes | None = None

    def read(self) -> TrafficPlan | None:
        try:
            text = self.path.read_bytes()
        except FileNotFoundError:
            text = b""
        except OSError as e:
            log.error(
                "cannot read the traffic plan %s: %s; keeping the plan in effect",
                self.path,
                e,
                extra={"file": str(self.path)},
            )
            return None
        if text == self._last:
            return None
        self._last = text
        try:
            return parse_plan(text, self.path)
        except PlanError as e:
            # In the message itself: BentoML's log format drops `extra` fields.
            log.error("%s; keeping the plan in effect", e, extra={"file": str(self.path)})
            return None
