"""`POST /push/{view}`: streaming feature rows written through Feast's push API.

A stream processor keeps a `source.type: push` view fresh by pushing rows here; they go straight
into the online store the runtime reads. The Feast SDK (and its FeatureStore) is loaded on the
first push only, off the event loop: a runtime that is never pushed to never pays for it.
The registry is the runtime's Feast profile's (`RTML_FEAST_REGISTRY`, as the operator's).

Writing features changes what every caller's score is computed from, so a push needs the bearer
token in `RTML_PUSH_TOKEN` (in a cluster, from the Secret the operator's chart names); with none
set, /push is off.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import threading
from typing import Any

from pydantic import SecretStr

from rtml.contract import ENV_PUSH_TOKEN, FEAST_PROJECT
from rtml.features.push import PushError, rows_frame
from rtml.features.store import make_store, push_rows
from rtml_runtime.config import RuntimeConfig
from rtml_runtime.errors import RequestError, bad_input

log = logging.getLogger("rtml.runtime.push")
BEARER = b"bearer "


def authorize_push(token: SecretStr | None, authorization: bytes | None) -> None:
    """Raises the RequestError a push without the right bearer token gets: 403 when this
    runtime has no token (pushing is off), 401 when the header is missing or wrong."""
    expected = token.get_secret_value().encode() if token is not None else b""
    if not expected:
        raise RequestError(
            403,
            "push_disabled",
            f"POST /push is off: this runtime has no push token; set {ENV_PUSH_TOKEN} (in a "
            "cluster, the operator's chart value runtime.pushToken.existingSecret) and send "
            "it as Authorization: Bearer <token>",
            None,
        )
    given = b""
    if authorization is not None and authorization[: len(BEARER)].lower() == BEARER:
        given = authorization[len(BEARER) :].strip()
    # Constant time: the comparison's duration says nothing about how much of a guess was right.
    if not hmac.compare_digest(given, expected):
        raise RequestError(
            401,
            "unauthorized",
            "POST /push needs the header Authorization: Bearer <token>, with the token in "
            f"{ENV_PUSH_TOKEN}; it was "
            + ("missing" if authorization is None else "not that token"),
            None,
            headers=((b"www-authenticate", b'Bearer realm="rtml-push"'),),
        )


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
