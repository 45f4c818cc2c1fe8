"""Online features through the Feast SDK, as a Feast user would read them in a model server."""

from __future__ import annotations

import os
from typing import Any

from feast import FeatureStore


class FeastLookup:
    """One entity's features from `FeatureStore.get_online_features` (sync or async)."""

    def __init__(self, repo: str, view: str, features: list[str], join_key: str) -> None:
        self.store = FeatureStore(repo_path=repo)
        self.refs = [f"{view}:{f}" for f in features]
        self.names = features
        self.join_key = join_key

    @classmethod
    def from_env(cls) -> FeastLookup | None:
        """Configured by BENCH_FEAST_REPO, BENCH_FEAST_VIEW, BENCH_FEAST_FEATURES, BENCH_JOIN_KEY;
        None when BENCH_FEAST_REPO is unset (the server then reads no features)."""
        repo = os.environ.get("BENCH_FEAST_REPO")
        if not repo:
            return None
        return cls(
            repo,
            os.environ["BENCH_FEAST_VIEW"],
            os.environ["BENCH_FEAST_FEATURES"].split(","),
            os.environ["BENCH_JOIN_KEY"],
        )

    def _values(self, response: Any) -> dict[str, float]:
        row = response.to_dict()
        values = {n: row[n][0] for n in self.names}
        if all(v is None for v in values.values()):
            raise LookupError("unknown entity")
        return values

    def read(self, entity_id: str) -> dict[str, float]:
        return self._values(
            self.store.get_online_features(
                features=self.refs, entity_rows=[{self.join_key: entity_id}]
            )
        )

    async def read_async(self, entity_id: str) -> dict[str, float]:
        return self._values(
            await self.store.get_online_features_async(
                features=self.refs, entity_rows=[{self.join_key: entity_id}]
            )
        )
