"""SweptTimeout: BentoML's traffic-timeout contract without a timer per request."""

from __future__ import annotations

import asyncio
import gc
import inspect
import json
from typing import Any

import pytest

from rtml_runtime.traffic import SweptTimeout

pytestmark = pytest.mark.unit
SCOPE = {"type": "http", "path": "/predict", "method": "POST"}


class Recorder:
    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    async def __call__(self, message: dict[str, Any]) -> None:
        self.messages.append(message)

    @property
    def status(self) -> int:
        return int(self.messages[0]["status"])

    @property
    def body(self) -> Any:
        return json.loads(b"".join(m.get("body", b"") for m in self.messages[1:]))


async def receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def answer(send: Any, delay: float = 0.0, then: float = 0.0) -> None:
    await asyncio.sleep(delay)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await asyncio.sleep(then)
    await send({"type": "http.response.body", "body": b'{"ok": true}'})


def test_fast_requests_leave_nothing_behind() -> None:
    async def app(scope: Any, rcv: Any, send: Any) -> None:
        await answer(send)

    async def main() -> SweptTimeout:
        mw = SweptTimeout(app, timeout=5.0, tick=0.01)
        sends = [Recorder() for _ in range(500)]
        await asyncio.gather(*(asyncio.create_task(mw(SCOPE, receive, s)) for s in sends))
        assert {s.status for s in sends} == {200}
        assert mw.in_flight == 0
        # BentoML's middleware left a timer per request scheduled for the whole timeout.
        timers = [o for o in gc.get_objects() if isinstance(o, asyncio.TimerHandle)]
        assert len([t for t in timers if not t.cancelled()]) <= 1  # the sweep, if any
        await asyncio.sleep(0.05)  # the sweep stops once nothing is in flight
        assert mw._sweep_handle is None
        return mw

    asyncio.run(main())


def test_a_request_with_no_response_by_the_timeout_gets_504_and_its_app_is_cancelled() -> None:
    cancelled = asyncio.Event()

    async def app(scope: Any, rcv: Any, send: Any) -> None:
        try:
            await answer(send, delay=5)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def main() -> Recorder:
        mw = SweptTimeout(app, timeout=0.05, tick=0.01)
        send = Recorder()
        started = asyncio.get_running_loop().time()
        await mw(SCOPE, receive, send)
        assert asyncio.get_running_loop().time() - started < 1.0
        assert cancelled.is_set()
        assert mw.in_flight == 0
        return send

    send = asyncio.run(main())
    assert send.status == 504
    assert send.body["error"]["code"] == "deadline_exceeded"
    assert "traffic timeout" in send.body["error"]["message"]


def test_a_response_already_started_is_not_cut() -> None:
    async def app(scope: Any, rcv: Any, send: Any) -> None:
        await answer(send, delay=0.0, then=0.15)

    async def main() -> Recorder:
        mw = SweptTimeout(app, timeout=0.05, tick=0.01)
        send = Recorder()
        await mw(SCOPE, receive, send)
        return send

    send = asyncio.run(main())
    assert send.status == 200
    assert send.body == {"ok": True}


def test_a_cancellation_from_elsewhere_still_propagates() -> None:
    async def app(scope: Any, rcv: Any, send: Any) -> None:
        await answer(send, delay=5)

    async def main() -> None:
        mw = SweptTimeout(app, timeout=10, tick=0.01)
        task = asyncio.create_task(mw(SCOPE, receive, Recorder()))
        await asyncio.sleep(0.02)
        task.cancel()  # the client went away, or the server shuts down
        with pytest.raises(asyncio.CancelledError):
            await task
        assert mw.in_flight == 0

    asyncio.run(main())


def test_bentoml_looks_the_timeout_middleware_up_where_service_py_replaces_it() -> None:
    """service.py swaps the class in bentoml's traffic module; BentoML must still import it
    from there when it builds the stack (bentoml is pinned; an upgrade that moves it fails here)."""
    from bentoml._internal.server import base_app

    source = inspect.getsource(base_app.BaseAppFactory)
    assert "from .http.traffic import TimeoutMiddleware" in source
    assert "Middleware(TimeoutMiddleware, timeout=self.timeout)" in source
