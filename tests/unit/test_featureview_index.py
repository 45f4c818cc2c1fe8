"""A FeatureView's event re-judges only the Models that read it, found through the
`rtml_model_views` index: no listing of the namespace's Models (issue 12, 1,000 Models)."""

from __future__ import annotations

import asyncio
from typing import Any

import kopf
import pytest

from rtml.operator import handlers


def model(name: str, view: str | None, uid: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"version": "v1"}
    if view:
        spec["features"] = {"featureViewRef": view}
    return {"kind": "Model", "metadata": {"namespace": "ml", "name": name,
            "uid": uid or f"uid-{name}"}, "spec": spec}  # fmt: skip


def index_of(*models: dict[str, Any]) -> dict[Any, list[handlers.Ref]]:
    """What Kopf builds from the indexing handler's answers: key -> every value under it."""
    out: dict[Any, list[handlers.Ref]] = {}
    for m in models:
        answer = asyncio.run(
            handlers.index_model_views(body=kopf.Body(m), spec=kopf.Spec(kopf.Body(m)))
        )
        for key, ref in answer.items():
            out.setdefault(key, []).append(ref)
    return out


def test_the_index_keys_models_by_namespace_and_view() -> None:
    idx = index_of(model("a", "cards"), model("b", "cards"), model("c", "users"), model("d", None))
    assert sorted(r.name for r in idx[("ml", "cards")]) == ["a", "b"]
    assert [r.name for r in idx[("ml", "users")]] == ["c"]
    assert len(idx) == 2  # a Model without a view is not indexed


def test_a_view_event_reads_and_reconciles_only_its_models(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stored = {m["metadata"]["name"]: m for m in (
        model("a", "cards"), model("b", "users"), model("moved", "users"))}  # fmt: skip
    # "moved" was indexed under cards, then its spec changed: it is read, and skipped.
    idx = index_of(model("a", "cards"), model("moved", "cards"), model("b", "users"))
    reconciled: list[str] = []
    monkeypatch.setattr(
        handlers, "_reconcile", lambda body, *_, **__: reconciled.append(body["metadata"]["name"])
    )

    class Client:
        reads: list[str] = []

        def get(self, api_version: str, kind: str, ns: str, name: str) -> dict[str, Any] | None:
            assert (api_version, kind, ns) == ("rtml.dev/v1alpha1", "Model", "ml")
            self.reads.append(name)
            return stored.get(name)

        def list_in(self, *_: Any) -> list[dict[str, Any]]:
            raise AssertionError("a view event must not list the namespace's Models")

    client = Client()
    view = {"metadata": {"namespace": "ml", "name": "cards"}}
    handlers.feature_view_changed(
        body=view, memo={"client": client}, type="MODIFIED", rtml_model_views=idx
    )
    assert sorted(client.reads) == ["a", "moved"]
    assert reconciled == ["a"]
    handlers.feature_view_changed(body=view, memo={"client": client}, type=None,
                                  rtml_model_views=idx)  # fmt: skip
    assert reconciled == ["a"]  # the initial listing: the Models' own handlers cover it
