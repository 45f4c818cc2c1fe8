"""The one place rtml reaches into Kopf's internals (STYLE.md: kept here, version-checked,
tested in tests/unit/test_outages.py).

Kopf shows its handlers nothing of a healthy quiet watch: BOOKMARK events are dropped before
any handler (kopf/_core/reactor/queueing.py, `watcher`), and a stream's end and re-opening
are silent. The `watching` liveness probe needs exactly those (rtml.operator.liveness), so the
function that runs one watch request, `kopf._cogs.clients.watching.watch_objs`, is wrapped:
every item it yields and every normal end of a stream count as life of that stream, except
the second end in a row that Kopf's inactivity timeout caused on a stream whose server sends
bookmarks. Such an end is silence, not life: a watch whose every connection stalls (a proxy
or load balancer that stopped passing data on) is re-opened by Kopf each inactivity timeout,
and counting those ends hid it from the probe for ever (tests/integration/test_api_faults.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from importlib.metadata import version
from typing import Any, Protocol

# The Kopf versions this was read against; another stops the operator at start-up.
KOPF_VERSIONS = ("1.45.",)
# A stream that ended after this share of Kopf's inactivity timeout in silence was ended by it
# (Kopf re-arms its timeout a moment after our clock restarts, so the share is below 1).
SILENT_SHARE = 0.98


class StreamObserver(Protocol):
    def saw(self, stream: str) -> None: ...
    def forget(self, stream: str) -> None: ...


def stream_name(resource: Any, namespace: str | None) -> str:
    group = f".{resource.group}" if resource.group else ""
    return f"{resource.plural}{group}" + (f" in {namespace}" if namespace else "")


def observe_watch_streams(observer: StreamObserver) -> None:
    """Wraps Kopf's watch request so `observer` hears of each stream's life. Idempotent."""
    installed = version("kopf")
    if not installed.startswith(KOPF_VERSIONS):
        raise RuntimeError(
            f"kopf {installed} is not a version rtml.operator.kopf_compat was checked against "
            f"({', '.join(KOPF_VERSIONS)}x): re-read kopf/_cogs/clients/watching.py and update it"
        )
    from kopf._cogs.clients import watching

    original = getattr(watching.watch_objs, "rtml_original", watching.watch_objs)  # re-install
    bookmarked: set[str] = set()  # streams whose server sent a BOOKMARK: it sends them
    idle_ends: dict[str, int] = {}  # per stream: its last streams in a row ended for silence

    async def watch_objs(*, resource: Any, namespace: Any, **kwargs: Any) -> AsyncIterator[Any]:
        name = stream_name(resource, namespace)
        settings = kwargs.get("settings")
        inactivity = settings.watching.inactivity_timeout if settings is not None else None
        loop = asyncio.get_running_loop()
        quiet_since = loop.time()
        try:
            async for raw in original(resource=resource, namespace=namespace, **kwargs):
                observer.saw(name)
                idle_ends.pop(name, None)
                if isinstance(raw, dict) and raw.get("type") == "BOOKMARK":
                    bookmarked.add(name)
                yield raw
                quiet_since = loop.time()  # Kopf's inactivity timeout restarts from here
        except (GeneratorExit, asyncio.CancelledError):
            observer.forget(name)  # Kopf stopped watching it (a CRD or namespace went away)
            idle_ends.pop(name, None)
            raise
        # Ended: by the server (its timeout), by Kopf after `inactivity` seconds of silence, or
        # on a connection error; Kopf opens the next at once. One silent end is tolerated (a
        # bookmark late once); two in a row, where bookmarks come every minute, is a dead watch.
        if inactivity is not None and loop.time() - quiet_since >= inactivity * SILENT_SHARE:
            idle_ends[name] = idle_ends.get(name, 0) + 1
            if idle_ends[name] > 1 and name in bookmarked:
                return
        observer.saw(name)

    watch_objs.rtml_original = original  # type: ignore[attr-defined]
    watching.watch_objs = watch_objs
