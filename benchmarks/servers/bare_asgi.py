"""The framework floor: a hand-written ASGI app under uvicorn calling ONNX Runtime, no features.

uvicorn bare_asgi:app --app-dir benchmarks/servers --lifespan off --no-access-log
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from fraud_model import Scorer

SCORER = Scorer()


async def app(
    scope: dict[str, Any],
    receive: Callable[[], Awaitable[dict[str, Any]]],
    send: Callable[[dict[str, Any]], Awaitable[None]],
) -> None:
    body, more = b"", True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    out = json.dumps({"score": SCORER.score(json.loads(body)["features"])}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(out))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": out})
