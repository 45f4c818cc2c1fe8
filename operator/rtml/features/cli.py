"""`rtml materialize` and `rtml push`: Feast work from the command line.

`rtml materialize` is also what the operator's CronJob runs: the store options default to the
`RTML_FEAST_*` variables the operator puts in its environment, so the pod needs no flags and no
access to the API server (the view is found in the registry by name).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from rtml.contract import (
    ENV_FEAST_PATH,
    ENV_FEAST_REDIS_PASSWORD,
    ENV_FEAST_REDIS_URL,
    ENV_FEAST_REGISTRY,
    ENV_FEAST_STORE,
    FeastProfile,
    SettingsError,
    load_settings,
)

NAMESPACE_OPTION = click.option(
    "--namespace",
    "-n",
    default=None,
    help="The FeatureView's namespace; refuses a view another namespace registered.",
)


def store_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The Feast profile options; the command receives them as one `store: FeastProfile`.

    An option not given comes from the profile's environment (`RTML_FEAST_*`, what the
    operator's CronJob sets, the Redis password and registry URL from a Secret), then from the
    profile's defaults: one reading of the environment, in rtml.contract.
    """

    @functools.wraps(fn)
    def with_store(
        *args: Any,
        profile: str | None,
        store_path: Path | None,
        redis_url: str | None,
        registry: str | None,
        **kw: Any,
    ) -> Any:
        given = {"kind": profile, "path": store_path, "redis_url": redis_url, "registry": registry}
        try:
            store = load_settings(FeastProfile, **{k: v for k, v in given.items() if v})
        except SettingsError as e:
            raise click.ClickException(str(e)) from e
        return fn(*args, store=store, **kw)

    options = [
        click.option(
            "--profile",
            type=click.Choice(["sqlite", "redis"]),
            default=None,
            help=f"Feast online store [default: ${ENV_FEAST_STORE}, else sqlite].",
        ),
        click.option(
            "--store-path",
            type=click.Path(file_okay=False, path_type=Path),
            default=None,
            help="Folder of the SQLite registry and online store "
            f"[default: ${ENV_FEAST_PATH}, else feature_store].",
        ),
        click.option(
            "--redis-url",
            default=None,
            help=f"Redis for --profile redis [default: ${ENV_FEAST_REDIS_URL}, else "
            f"redis://127.0.0.1:6379/0; its password may come from ${ENV_FEAST_REDIS_PASSWORD}].",
        ),
        click.option(
            "--registry",
            default=None,
            help=f"SQLAlchemy URL of the registry [default: ${ENV_FEAST_REGISTRY}, "
            "else SQLite in --store-path].",
        ),
    ]
    command: Callable[..., Any] = with_store
    for option in reversed(options):
        command = option(command)
    return command


@contextmanager
def feast_errors() -> Iterator[None]:
    """Feast's refusals and outages as one-line CLI errors; anything else as a traceback."""
    from rtml.features.store import FeatureStoreError, is_unreachable

    try:
        yield
    except FeatureStoreError as e:
        raise click.ClickException(str(e)) from e
    except click.ClickException:
        raise
    except Exception as e:
        if is_unreachable(e):
            first = (str(e).strip().splitlines() or [""])[0]
            raise click.ClickException(f"the Feast registry is unreachable: {first}") from e
        raise


def feast_view_names(view_or_manifest: str) -> list[str]:
    """Feast names of the FeatureViews in a manifest, or of the one resource name given."""
    from rtml.features.translate import feast_name_for

    path = Path(view_or_manifest)
    if not (path.suffix in (".yaml", ".yml") or path.is_dir()):
        return [feast_name_for(view_or_manifest)]
    if not path.exists():
        raise click.ClickException(f"{path} does not exist")
    import yaml

    files = sorted([*path.glob("*.yaml"), *path.glob("*.yml")]) if path.is_dir() else [path]
    names: list[str] = []
    for f in files:
        try:
            docs = list(yaml.safe_load_all(f.read_text()))
        except yaml.YAMLError as e:
            raise click.ClickException(f"{f} is not valid YAML: {e}") from e
        names += [
            feast_name_for(str((d.get("metadata") or {}).get("name", "")))
            for d in docs
            if isinstance(d, dict) and d.get("kind") == "FeatureView"
        ]
    if not names:
        raise click.ClickException(f"{path} holds no FeatureView")
    return names


@click.command()
@click.argument("view_or_manifest")
@NAMESPACE_OPTION
@store_options
def materialize(view_or_manifest: str, namespace: str | None, store: FeastProfile) -> None:
    """Load new rows of a registered FeatureView into the online store, then print the end time.

    VIEW_OR_MANIFEST is a FeatureView's name (as the operator registered it) or a YAML file (or
    folder) of FeatureViews. Incremental: each run continues where the last one ended.
    """
    from rtml.features.store import check_namespace, open_store
    from rtml.features.store import materialize as run_materialization

    names = feast_view_names(view_or_manifest)
    with feast_errors(), open_store(store) as feast_store:
        for name in names:
            check_namespace(feast_store, name, namespace)
        end = run_materialization(feast_store, names)
    click.echo(end.isoformat())


@click.command()
@click.argument("view")
@click.option(
    "--file",
    "rows_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help='JSON {"rows": [{join key, timestamp, every feature}, ...]}, as POST /push/{view}.',
)
@NAMESPACE_OPTION
@store_options
def push(view: str, rows_file: Path, namespace: str | None, store: FeastProfile) -> None:
    """Write feature rows of a push FeatureView VIEW straight into the online store.

    The view is read back from the registry, and each row is checked against it (the same
    check as the runtime's POST /push/{view}) before Feast's push API writes it.
    """
    import json

    from rtml.features.push import PushError, rows_frame
    from rtml.features.store import check_namespace, open_store, push_rows, view_from_registry
    from rtml.features.translate import feast_name_for

    try:
        payload = json.loads(rows_file.read_text())
    except ValueError as e:
        raise click.ClickException(f"{rows_file} is not valid JSON: {e}") from e
    name = feast_name_for(view)
    with feast_errors(), open_store(store) as feast_store:
        check_namespace(feast_store, name, namespace)
        resource = view_from_registry(feast_store, name)
        try:
            frame = rows_frame(resource, payload)
        except PushError as e:
            raise click.ClickException(f"{rows_file}: {e.message}") from e
        written = push_rows(feast_store, resource, frame)
    click.echo(f"pushed {written} row(s) to {view}")


def add_feature_commands(group: click.Group) -> None:
    """Register this module's commands on the `rtml` group."""
    group.add_command(materialize)
    group.add_command(push)
