"""A default BentoML 1.4 service serving the fraud model: `@bentoml.service` + `@bentoml.api`,
every setting at its default (a sync API, so BentoML runs it in its thread pool).

    bentoml serve bentoml_default:Fraud --working-dir benchmarks/servers

With BENCH_FEAST_REPO set, each request first reads the entity's features through the Feast
SDK (the sync read: the API already runs in a worker thread).
"""

from __future__ import annotations

import bentoml
from feast_lookup import FeastLookup
from fraud_model import Scorer


@bentoml.service
class Fraud:
    def __init__(self) -> None:
        self.scorer = Scorer()
        self.lookup = FeastLookup.from_env()

    @bentoml.api
    def predict(self, features: dict[str, float], entity_id: str = "") -> dict[str, float]:
        values = features
        if self.lookup is not None:
            values = {**self.lookup.read(entity_id), **features}
        return {"score": self.scorer.score(values)}
