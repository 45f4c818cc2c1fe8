"""The one place rtml reaches into Kopf's internals (STYLE.md: kept here, version-checked,
tested in tests/unit/test_outages.py).

Kopf shows its handlers nothing of a healthy quiet watch: BOOKMARK events are dropped before
any handler (kopf/_core/reactor/queueing.py, `watcher`), and a stream's end and re-opening
are silent. The `watching` liveness probe needs exactly those (rtml.operator.liveness), so the
function that runs one watch request, `kopf._cogs.clients.watching.watch_objs`, is wrapped:
every item it yields and every normal end of a stream count as life of that stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from importlib.metadata import version
from typing import Any, Protocol

# The Kopf versions this was read against; another stops the operator at start-up.
KOPF_VERSIONS = ("1.45.",)


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

    async def watch_objs(*, resource: Any, namespace: Any, **kwargs: Any) -> AsyncIterator[Any]:
        name = stream_name(resource, namespace)
        try:
            async for raw in original(resource=resource, namespace=namespace, **kwargs):
                observer.saw(name)
                yield raw
        except (GeneratorExit, asyncio.CancelledError):
            observer.forget(name)  # Kopf stopped watching it (a CRD or namespace went away)
            raise
        observer.saw(name)  # ended (server timeout, inactivity): Kopf opens the next at once

    watch_objs.rtml_original = original  # type: ignore[attr-defined]
    watching.watch_objs = watch_objs
