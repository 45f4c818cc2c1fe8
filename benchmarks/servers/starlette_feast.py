"""The framework floor with features: Starlette + the Feast SDK's async online read + ORT.

    uvicorn starlette_feast:app --app-dir benchmarks/servers --no-access-log

`get_online_features_async` (Feast's async path over `redis.asyncio`) keeps the event loop
free; the sync read inside an async handler would block it.
"""

from __future__ import annotations

from feast_lookup import FeastLookup
from fraud_model import Scorer
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

SCORER = Scorer()
LOOKUP = FeastLookup.from_env()
assert LOOKUP is not None, "set BENCH_FEAST_REPO"


async def predict(request: Request) -> JSONResponse:
    payload = await request.json()
    assert LOOKUP is not None
    try:
        stored = await LOOKUP.read_async(str(payload["entity_id"]))
    except LookupError:
        return JSONResponse({"error": "unknown entity"}, status_code=404)
    return JSONResponse({"score": SCORER.score({**stored, **payload["features"]})})


app = Starlette(routes=[Route("/predict", predict, methods=["POST"])])
