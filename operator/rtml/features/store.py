"""Feast built from an operator-wide profile: the store, applying FeatureViews, materialising them.

A profile is what the Helm values (or `rtml serve` flags) say: a SQL registry (a SQLite file on
one machine, PostgreSQL in a cluster) and an online store (SQLite or Redis); the offline store is
always Feast's file store. The RepoConfig is built in code, so no feature_store.yaml is written;
feature_repo/ holds the equivalent YAML for the plain `feast` CLI.
"""

from __future__ import annotations

import logging
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rtml.api.featureview import FeatureView
from rtml.contract import (
    FEAST_ENTITY_KEY_VERSION,
    FEAST_PROJECT,
    FeastProfile,
    parse_redis_url,
)
from rtml.features.translate import (
    NAME_TAG,
    NAMESPACE_TAG,
    feast_name,
    feast_name_for,
    from_feast,
    push_source_name,
    to_feast,
)

if TYPE_CHECKING:
    import feast
    import pandas as pd

log = logging.getLogger("rtml.features")

# Feast starts a view's first incremental run at `now - ttl`; rtml starts it here instead, so the
# first run loads the latest row of every entity whatever its age (Feast's reads apply the TTL).
FIRST_MATERIALIZATION_START = datetime(1970, 1, 1, tzinfo=UTC)


class FeatureStoreError(Exception):
    """The registry refuses a FeatureView, or a view to materialise is not registered."""


def is_unreachable(error: BaseException) -> bool:
    """Whether `error` says the registry or online store could not be reached (worth a retry),
    rather than that Feast refused what it was given."""
    from sqlalchemy import exc

    transient = (
        exc.OperationalError,
        exc.InterfaceError,
        exc.DisconnectionError,
        exc.TimeoutError,
        OSError,
        TimeoutError,
    )
    if isinstance(error, transient):
        return True
    try:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError
    except ImportError:  # pragma: no cover - redis is a Feast dependency
        return False
    return isinstance(error, RedisConnectionError | RedisTimeoutError)


def redis_connection_string(profile: FeastProfile) -> str:
    """Feast's `host:port,db=N,...` form of the profile's Redis URL (and password)."""
    url = profile.redis_url_with_password
    parts = parse_redis_url(url)
    params = [f"{parts.hostname}:{parts.port or 6379}", f"db={parts.path.lstrip('/') or '0'}"]
    if parts.username:
        params.append(f"username={urllib.parse.unquote(parts.username)}")
    if parts.password:
        params.append(f"password={urllib.parse.unquote(parts.password)}")
    if parts.scheme == "rediss":
        params.append("ssl=true")
    return ",".join(params)  # no comma in the credentials: FeastProfile refuses them


def repo_config(profile: FeastProfile, project: str = FEAST_PROJECT) -> feast.RepoConfig:
    """The Feast RepoConfig a profile stands for (what feature_store.yaml would say)."""
    from feast import RepoConfig

    root = profile.path.absolute()
    online: dict[str, Any] = (
        {"type": "sqlite", "path": str(root / "online.db")}
        if profile.kind == "sqlite"
        else {"type": "redis", "connection_string": redis_connection_string(profile)}
    )
    return RepoConfig(
        project=project,
        provider="local",
        registry={
            "registry_type": "sql",
            "path": profile.registry_url,
            "cache_ttl_seconds": profile.registry_cache_ttl_seconds,
            "sqlalchemy_config_kwargs": {"echo": False, "pool_pre_ping": True},
        },
        online_store=online,
        offline_store={"type": "file"},
        entity_key_serialization_version=FEAST_ENTITY_KEY_VERSION,
        repo_path=root,
    )


def make_store(profile: FeastProfile, project: str = FEAST_PROJECT) -> feast.FeatureStore:
    """A FeatureStore for the profile; creates its folder (SQLite files live there)."""
    from feast import FeatureStore

    profile.path.mkdir(parents=True, exist_ok=True)
    config = repo_config(profile, project)
    log.info("Feast project %s: %s", project, profile.described())
    return FeatureStore(config=config)


@contextmanager
def open_store(profile: FeastProfile, project: str = FEAST_PROJECT) -> Iterator[feast.FeatureStore]:
    """A FeatureStore for one unit of work, its registry connections closed afterwards.

    A long-lived process (the operator) opens one per reconcile: no pooled connection outlives
    an outage or a moved registry, so every attempt sees the registry as it is now.
    """
    store = make_store(profile, project)
    try:
        yield store
    finally:
        registry = store.registry
        for attr in ("write_engine", "read_engine"):
            engine = getattr(registry, attr, None)
            if engine is not None:
                engine.dispose()


def _registered_view(store: feast.FeatureStore, name: str) -> feast.FeatureView | None:
    from feast.errors import FeatureViewNotFoundException

    try:
        return store.get_feature_view(name, allow_registry_cache=False)
    except FeatureViewNotFoundException:
        return None


def _check_not_taken(store: feast.FeatureStore, view: FeatureView, name: str) -> None:
    """One registry serves every namespace: refuse to overwrite another resource's view."""
    existing = _registered_view(store, name)
    if existing is None:
        return
    owner = (existing.tags.get(NAMESPACE_TAG), existing.tags.get(NAME_TAG))
    mine = (view.metadata.namespace, view.metadata.name)
    if owner[0] is not None and owner != mine:
        raise FeatureStoreError(
            f"FeatureView {mine[0]}/{mine[1]} would be registered in Feast as {name!r}, which "
            f"FeatureView {owner[0]}/{owner[1]} already uses; rename one of them"
        )


def apply_views(
    store: feast.FeatureStore, views: Sequence[FeatureView], *, base_dir: Path | None = None
) -> list[str]:
    """Register the views (entity, source, feature view) in one registry write.

    `base_dir` resolves relative `file://` source paths (the manifest's folder). Returns the
    Feast names of the views.
    """
    translated = [to_feast(v, repo_dir=base_dir) for v in views]
    names = [t.feature_view.name for t in translated]
    for view, name in zip(views, names, strict=True):
        _check_not_taken(store, view, name)
    store.apply([o for t in translated for o in t.objects])
    for view, t in zip(views, translated, strict=True):
        log.info(
            "applied FeatureView %s/%s as Feast view %s: %d features by %s, source %s",
            view.metadata.namespace,
            view.metadata.name,
            t.feature_view.name,
            len(t.feature_view.features),
            view.spec.entity.join_key,
            t.source.name,
        )
    return names


def materialize(
    store: feast.FeatureStore,
    views: Sequence[str | FeatureView],
    end: datetime | None = None,
) -> datetime:
    """Load each view's new rows, up to `end` (default now), into the online store.

    Incremental: a view continues from where its last run ended. A view never materialised
    starts at FIRST_MATERIALIZATION_START rather than Feast's `now - ttl`. Returns `end`.
    """
    end = end or datetime.now(UTC)
    names = [v if isinstance(v, str) else feast_name(v) for v in views]
    first: list[str] = []
    later: list[str] = []
    for name in names:
        registered = _registered_view(store, name)
        if registered is None:
            raise FeatureStoreError(
                f"Feast has no feature view {name!r} to materialise; apply its FeatureView first"
            )
        (later if registered.most_recent_end_time else first).append(name)
    started = time.perf_counter()
    if first:
        log.info("materialising %s for the first time, up to %s", ", ".join(first), end)
        store.materialize(start_date=FIRST_MATERIALIZATION_START, end_date=end, feature_views=first)
    if later:
        log.info("materialising %s incrementally, up to %s", ", ".join(later), end)
        store.materialize_incremental(end_date=end, feature_views=later)
    log.info("materialised %d view(s) in %.2fs", len(names), time.perf_counter() - started)
    return end


def registered_view(store: feast.FeatureStore, view: FeatureView) -> feast.FeatureView | None:
    """The Feast feature view registered for this resource, or None (fresh from the registry)."""
    return _registered_view(store, feast_name(view))


def check_namespace(store: feast.FeatureStore, name: str, namespace: str | None) -> None:
    """Refuse to work on Feast view `name` when another namespace's FeatureView registered it."""
    registered = _registered_view(store, name)
    if registered is None:
        raise FeatureStoreError(f"Feast has no feature view {name!r}; apply its FeatureView first")
    owner = registered.tags.get(NAMESPACE_TAG)
    if namespace is not None and owner is not None and owner != namespace:
        raise FeatureStoreError(
            f"Feast view {name!r} belongs to a FeatureView in namespace {owner!r}, "
            f"not {namespace!r}"
        )


def registered_resources(store: feast.FeatureStore) -> list[tuple[str, str]]:
    """(namespace, name) of every FeatureView resource whose view rtml registered here (the
    tags it writes); views registered by anything else are not listed."""
    out = []
    for view in store.list_feature_views(allow_cache=False):
        namespace, name = view.tags.get(NAMESPACE_TAG), view.tags.get(NAME_TAG)
        if namespace and name:
            out.append((namespace, name))
    return out


def remove_view(store: feast.FeatureStore, namespace: str, name: str) -> bool:
    """Delete the Feast feature view of FeatureView namespace/name, its sources and online table.

    The entity goes too unless another feature view still uses it. A view registered by another
    resource under the same Feast name is left alone. Returns whether anything was deleted.
    """
    fname = feast_name_for(name)
    registered = _registered_view(store, fname)
    if registered is None:
        return False
    owner = (registered.tags.get(NAMESPACE_TAG), registered.tags.get(NAME_TAG))
    if owner[0] is not None and owner != (namespace, name):
        log.info("Feast view %s belongs to %s/%s; not deleting it", fname, *owner)
        return False
    sources = [s for s in (registered.stream_source, registered.batch_source) if s is not None]
    registered_sources = {s.name for s in store.list_data_sources(allow_cache=False)}
    others = [v for v in store.list_feature_views(allow_cache=False) if v.name != fname]
    still_used = {e for v in others for e in v.entities}
    entities = [
        store.get_entity(e, allow_registry_cache=False)
        for e in registered.entities
        if e not in still_used
    ]
    store.apply(
        [],
        objects_to_delete=[
            registered,
            *[s for s in sources if s.name in registered_sources],
            *entities,
        ],
        partial=False,
    )
    log.info("deleted Feast view %s of FeatureView %s/%s", fname, namespace, name)
    return True


def push_rows(store: feast.FeatureStore, view: FeatureView, rows: pd.DataFrame) -> int:
    """Write rows of a `source.type: push` view straight into the online store.

    `rows` holds the join key, the timestamp field and every feature (see
    rtml.features.push.rows_frame). Returns the number of rows written.
    """
    from feast.data_source import PushMode

    if view.spec.source.type != "push":
        raise FeatureStoreError(
            f"FeatureView {view.metadata.name!r} has spec.source.type "
            f"{view.spec.source.type!r}; only push views take pushed rows"
        )
    store.push(push_source_name(view), rows, to=PushMode.ONLINE)
    log.info("pushed %d row(s) to Feast view %s", len(rows), feast_name(view))
    return len(rows)


def view_from_registry(store: feast.FeatureStore, name: str) -> FeatureView:
    """The FeatureView registered as Feast view `name`, rebuilt from the registry."""
    registered = _registered_view(store, name)
    if registered is None:
        raise FeatureStoreError(f"Feast has no feature view {name!r}; apply its FeatureView first")
    (key,) = registered.entity_columns
    return from_feast(registered, "INT64" if str(key.dtype) == "Int64" else "STRING")
