"""`rtml serve`: the runtime's own command (the top-level `rtml` adds it; `rtml bench` is
operator/rtml/bench_cli.py, driving rtml_runtime.bench).

`rtml serve CONFIG` is also the runtime image's entry point in a pod: the operator renders
`rtml.contract.runtime_args()` after the image's ENTRYPOINT (`rtml`), with the Feast profile in
`RTML_FEAST_*` (credentials from a Secret). CONFIG is the operator's resolved config (JSON, the
ConfigMap's `model.json`) or, on one machine, a Model manifest (YAML) with its FeatureView.
Only light modules are imported here: `rtml --help` must not load BentoML or ONNX Runtime.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from rtml.contract import (
    ENV_CONFIG,
    ENV_FEAST_PATH,
    ENV_FEAST_REDIS_URL,
    ENV_FEAST_STORE,
    FeastProfile,
    RuntimeSettings,
    SettingsError,
    load_settings,
)


def process_settings(
    config: Path,
    model_name: str | None,
    profile: str | None,
    store_path: Path | None,
    redis_url: str | None,
    traffic: Path | None = None,
) -> tuple[RuntimeSettings, FeastProfile]:
    """The process's settings (`rtml serve`, `rtml stream`): the environment, with the given
    options on top.

    A manifest keeps its Feast files and downloaded artifacts in `.rtml/` beside it unless the
    environment says otherwise; the resolved config of a pod uses the contract's defaults.
    """
    manifest = config.suffix != ".json"
    base = (config if config.is_dir() else config.parent).resolve()
    feast: dict[str, Any] = {}
    if profile is not None:
        feast["kind"] = profile
    if redis_url is not None:
        feast["redis_url"] = redis_url
    if store_path is not None:
        feast["path"] = store_path.resolve()
    elif manifest and ENV_FEAST_PATH not in os.environ:
        feast["path"] = base / ".rtml" / "feature_store"
    runtime: dict[str, Any] = {"config": config.resolve()}
    if model_name is not None:
        runtime["model"] = model_name
    if traffic is not None:
        runtime["traffic"] = traffic.absolute()
    if manifest and "RTML_ARTIFACT_DIR" not in os.environ:
        runtime["artifact_dir"] = base / ".rtml" / "artifacts"
    try:
        return load_settings(RuntimeSettings, **runtime), load_settings(FeastProfile, **feast)
    except SettingsError as e:
        raise click.ClickException(str(e)) from e


@click.command()
@click.argument("config", type=click.Path(exists=True, path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=3000, show_default=True, type=int, help="Port to listen on.")
@click.option(
    "--model", "model_name", default=None, help="The Model to serve when CONFIG holds several."
)
@click.option(
    "--profile",
    type=click.Choice(["sqlite", "redis"]),
    default=None,
    help=f"Feast online store [default: ${ENV_FEAST_STORE}, else sqlite].",
)
@click.option(
    "--store-path",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help=f"Folder for the Feast registry (and SQLite online store) [default: ${ENV_FEAST_PATH}, "
    "else .rtml/feature_store beside a manifest].",
)
@click.option(
    "--redis-url",
    default=None,
    help=f"Redis for --profile redis [default: ${ENV_FEAST_REDIS_URL}, "
    "else redis://127.0.0.1:6379/0; the password may come from $RTML_FEAST_REDIS_PASSWORD].",
)
@click.option(
    "--register/--no-register",
    default=True,
    show_default=True,
    help="Apply the FeatureView to the Feast registry and materialise it first "
    "(in a cluster the operator does this, and the operator renders --no-register).",
)
@click.option(
    "--traffic",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Follow the traffic plan (an Experiment's split) in this file, re-read when it changes; "
    "a missing file means no experiment [default: $RTML_TRAFFIC, else none].",
)
@click.option(
    "--server",
    type=click.Choice(["bentoml", "uvicorn"]),
    default="bentoml",
    show_default=True,
    help="Host the runtime in BentoML, or in plain uvicorn.",
)
def serve(
    config: Path,
    host: str,
    port: int,
    model_name: str | None,
    profile: str | None,
    store_path: Path | None,
    redis_url: str | None,
    register: bool,
    traffic: Path | None,
    server: str,
) -> None:
    """Serve the Model in CONFIG: a Model manifest on one machine (its FeatureView read from
    the same file or folder, registered in a local Feast registry and materialised first), or
    the operator's resolved config (model.json) in a pod."""
    # The runtime proper (numpy, the engine) loads only when serving, not for `rtml --help`.
    from rtml_runtime.bootstrap import register_features
    from rtml_runtime.config import ConfigError, load_config

    settings, feast = process_settings(config, model_name, profile, store_path, redis_url, traffic)
    try:
        resolved = load_config(settings, feast)
    except ConfigError as e:
        raise click.ClickException(str(e)) from e
    if resolved.feature_view is not None and register:
        click.echo(
            f"registering FeatureView {resolved.feature_view.metadata.name} in Feast "
            f"({feast.kind}) and materialising it...",
            err=True,
        )
        register_features(resolved)
    env = {
        **os.environ,
        ENV_CONFIG: str(settings.config),
        ENV_FEAST_STORE: feast.kind,
        ENV_FEAST_PATH: str(feast.path),
        ENV_FEAST_REDIS_URL: feast.redis_url,
        "RTML_ARTIFACT_DIR": str(settings.artifact_dir),
    }
    if settings.model:
        env["RTML_MODEL"] = settings.model
    if settings.traffic is not None:
        env["RTML_TRAFFIC"] = str(settings.traffic)
    argv = _server_argv(server, host, port)
    click.echo(
        f"serving {config} on http://{host}:{port} ({server}, {feast.kind} features)", err=True
    )
    sys.stdout.flush()
    sys.stderr.flush()
    # Replace this process with the server: no parent left holding the Feast SDK in memory
    # (it was imported only to register), and signals reach the server directly.
    os.execvpe(argv[0], argv, env)  # noqa: S606 - our own interpreter and module


def _server_argv(server: str, host: str, port: int) -> list[str]:
    if server == "uvicorn":
        app = "rtml_runtime.uvicorn_app:app"
        extra = ["--no-access-log", "--log-level", "warning"]
        return [sys.executable, "-m", "uvicorn", app, "--host", host, "--port", str(port), *extra]
    service = "rtml_runtime.service:RtmlRuntime"
    return [sys.executable, "-m", "bentoml", "serve", service, "--host", host, "--port", str(port)]
