"""`POST /push/{view}`: streaming feature rows written through Feast's push API.

A stream processor keeps a `source.type: push` view fresh by pushing rows here; they go straight
into the online store the runtime reads. The Feast SDK (and its FeatureStore) is loaded on the
first push only, off the event loop: a runtime that is never pushed to never pays for it.
The registry is the runtime's Feast profile's (`RTML_FEAST_REGISTRY`, as the operator's).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from rtml.contract import FEAST_PROJECT
from rtml.features.push import PushError, rows_frame
from rtml.features.store import make_store, push_rows
from rtml_runtime.config import RuntimeConfig
from rtml_runtime.errors import RequestError, bad_input

log = logging.getLogger("rtml.runtime.push")


class FeaturePusher:
    """Pushes rows of the runtime's FeatureView into the online store."""

    def __init__(self, config: RuntimeConfig) -> None:
        self.config = config
        self._store: Any = None
        self._lock = threading.Lock()

    def _feature_store(self) -> Any:
        with self._lock:
            if self._store is None:
                self._store = make_store(self.config.store, project=FEAST_PROJECT)
            return self._store

    def _push_sync(self, payload: Any) -> int:
        view = self.config.feature_view
        assert view is not None  # checked by push()
        try:
            frame = rows_frame(view, payload)
        except PushError as e:
            raise bad_input(e.message, e.field) from e
        return push_rows(self._feature_store(), view, frame)

    async def push(self, view_name: str, payload: Any) -> dict[str, Any]:
        view = self.config.feature_view
        if view is None or view_name != view.metadata.name:
            raise RequestError(
                404, "not_found", f"this runtime reads no FeatureView {view_name!r}", "view"
            )
        if view.spec.source.type != "push":
            raise bad_input(
                f"FeatureView {view_name!r} has spec.source.type {view.spec.source.type!r}; "
                "only push views take pushed rows",
                "view",
            )
        written = await asyncio.to_thread(self._push_sync, payload)
        log.info("pushed rows", extra={"view": view_name, "rows": written})
        return {"view": view_name, "rows": written}
