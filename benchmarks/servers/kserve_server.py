"""KServe's Python model server (kserve 0.21) serving the fraud model, its defaults untouched.

    python kserve_server.py --http_port 8080 --grpc_port 8081   (v1: POST /v1/models/fraud:predict)

With BENCH_FEAST_REPO set, `predict` reads the entity's features through the Feast SDK's async
path first (KServe awaits an async `predict` on its event loop).
"""

from __future__ import annotations

from typing import Any

import kserve
from feast_lookup import FeastLookup
from fraud_model import Scorer


class FraudModel(kserve.Model):  # type: ignore[misc]  # kserve ships no type hints
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.scorer: Scorer | None = None
        self.lookup: FeastLookup | None = None
        self.load()

    def load(self) -> bool:
        self.scorer = Scorer()
        self.lookup = FeastLookup.from_env()
        self.ready = True
        return True

    async def predict(
        self,
        payload: dict[str, Any],
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        assert self.scorer is not None
        values = payload["features"]
        if self.lookup is not None:
            values = {**await self.lookup.read_async(str(payload["entity_id"])), **values}
        return {"score": self.scorer.score(values)}


if __name__ == "__main__":
    kserve.ModelServer().start([FraudModel("fraud")])
