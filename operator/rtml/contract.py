"""The contract between the operator and the runtime container, written once.

The operator's renderers (render/container.py, render/cronjob.py) write pods from these names;
the runtime's entry point (`rtml serve`, rtml_runtime.cli) and `rtml materialize` read them. It
imports neither Kopf nor BentoML nor either plane, so both can import it. A test starts the
runtime with the exact argv and env a renderer wrote (tests/integration/test_contract.py).

Settings are pydantic-settings models: one per process, built once by `load_settings`, whose
errors name the environment variable (`RTML_FEAST_STORE: Input should be 'sqlite' or
'redis'`) instead of a bad value silently becoming a default.
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from rtml import __version__

# --- the runtime container --------------------------------------------------------------------
# The runtime image's ENTRYPOINT (bentos/Containerfile); the operator renders only `args`.
RUNTIME_ENTRYPOINT: Final = ("rtml",)
HTTP_PORT: Final = 8080
CONFIG_MOUNT: Final = "/etc/rtml"
CONFIG_KEY: Final = "model.json"
CONFIG_PATH: Final = f"{CONFIG_MOUNT}/{CONFIG_KEY}"
# The traffic plan (rtml.api.traffic): a ConfigMap volume of its own, mounted without subPath
# so the kubelet refreshes it in place and the runtime applies a new weight without a restart.
TRAFFIC_MOUNT: Final = "/etc/rtml-traffic"
TRAFFIC_KEY: Final = "traffic.json"
TRAFFIC_PATH: Final = f"{TRAFFIC_MOUNT}/{TRAFFIC_KEY}"
# Writable emptyDirs: the root filesystem is read-only.
ARTIFACT_DIR: Final = "/var/lib/rtml"
TMP_DIR: Final = "/tmp"  # noqa: S108 - a pod's private emptyDir
READY_PATH: Final = "/v2/health/ready"
LIVE_PATH: Final = "/v2/health/live"
# Kubernetes' default terminationMessagePath: what a container writes there becomes
# lastState.terminated.message when it stops (the operator shows it in the Model's status).
TERMINATION_MESSAGE_PATH: Final = "/dev/termination-log"
# The non-root user of both images (USER in the Containerfiles) and of every pod rtml renders.
RUNTIME_UID: Final = 65532
IMAGE_REGISTRY: Final = "localhost"  # what `rtml dev images build` names its images
DEFAULT_RUNTIME_IMAGE: Final = f"{IMAGE_REGISTRY}/rtml-runtime:{__version__}"
DEFAULT_OPERATOR_IMAGE: Final = f"{IMAGE_REGISTRY}/rtml-operator:{__version__}"

# --- Feast --------------------------------------------------------------------------------------
FEAST_PROJECT: Final = "rtml"
# Feast 0.67's default and the only version it does not warn about; the runtime's Redis reader
# builds its keys with the same version.
FEAST_ENTITY_KEY_VERSION: Final = 3

# --- environment variable names -----------------------------------------------------------------
RUNTIME_PREFIX: Final = "RTML_"
FEAST_PREFIX: Final = "RTML_FEAST_"
ENV_CONFIG: Final = "RTML_CONFIG"
ENV_FEAST_STORE: Final = "RTML_FEAST_STORE"
ENV_FEAST_PATH: Final = "RTML_FEAST_PATH"
ENV_FEAST_REDIS_URL: Final = "RTML_FEAST_REDIS_URL"
ENV_FEAST_REDIS_PASSWORD: Final = "RTML_FEAST_REDIS_PASSWORD"  # noqa: S105 - a variable's name
ENV_FEAST_REGISTRY: Final = "RTML_FEAST_REGISTRY"
# The bearer token POST /push/{view} requires (a secretKeyRef in a pod; unset: /push is off).
ENV_PUSH_TOKEN: Final = "RTML_PUSH_TOKEN"  # noqa: S105 - a variable's name
# Where spec.audit's streams go (a secretKeyRef in a pod; unset: the online store's Redis).
ENV_AUDIT_REDIS_URL: Final = "RTML_AUDIT_REDIS_URL"


def runtime_args(
    config_path: str = CONFIG_PATH,
    host: str = "0.0.0.0",  # noqa: S104 - inside a pod the runtime must listen on the pod IP
    port: int = HTTP_PORT,
    traffic_path: str = TRAFFIC_PATH,
) -> list[str]:
    """What follows RUNTIME_ENTRYPOINT in a predictor pod: serve the operator's resolved config,
    splitting traffic as the plan at `traffic_path` says.

    `--no-register`: in a cluster the operator registers views and the CronJob materialises.
    """
    return [
        "serve",
        config_path,
        "--host",
        host,
        "--port",
        str(port),
        "--no-register",
        "--traffic",
        traffic_path,
    ]


# `rtml stream` in a spec.stream pod: its Prometheus /metrics (stream lag, the runtime's).
STREAM_METRICS_PORT: Final = 9400


def stream_args(
    input_stream: str,
    group: str,
    output: str,
    config_path: str = CONFIG_PATH,
    metrics_host: str = "0.0.0.0",  # noqa: S104 - inside a pod Prometheus scrapes the pod IP
    metrics_port: int = STREAM_METRICS_PORT,
) -> list[str]:
    """What follows RUNTIME_ENTRYPOINT in a spec.stream pod: consume `input_stream` in
    `group` with the operator's resolved config, publishing to `output`. The consumer's name
    is the pod's (its host name): a replaced pod's pending entries are reclaimed by the
    others once idle (XAUTOCLAIM, docs/streaming.md)."""
    return [
        "stream",
        config_path,
        "--input",
        input_stream,
        "--group",
        group,
        "--output",
        output,
        "--metrics-host",
        metrics_host,
        "--metrics-port",
        str(metrics_port),
    ]


def materialize_command(view_name: str, namespace: str) -> list[str]:
    """The materialization CronJob's command (the runtime image, its `rtml` entry point)."""
    return [*RUNTIME_ENTRYPOINT, "materialize", view_name, "--namespace", namespace]


# --- settings -----------------------------------------------------------------------------------
class SettingsError(ValueError):
    """An environment variable (or option) holds a value rtml cannot use; says which."""


S = TypeVar("S", bound=BaseSettings)


def load_settings(cls: type[S], **values: Any) -> S:
    """`cls` from the environment (`values` win), its errors naming the variables."""
    try:
        return cls(**values)
    except ValidationError as e:
        raise SettingsError(describe_settings_error(cls, e)) from e


def describe_settings_error(cls: type[BaseSettings], error: ValidationError) -> str:
    prefix = str(cls.model_config.get("env_prefix", ""))
    parts = []
    for err in error.errors():
        msg = str(err["msg"]).removeprefix("Value error, ")
        loc = [str(p) for p in err["loc"]]
        if not loc:  # a rule over several variables: its message names them
            parts.append(msg)
            continue
        head = loc[0]
        field = cls.model_fields.get(head)
        alias = field.validation_alias if field is not None else None
        if isinstance(alias, AliasChoices):
            name = str(alias.choices[0])
        elif head.upper().startswith(prefix) and prefix:
            name = head.upper()
        else:
            name = f"{prefix}{head}".upper()
        parts.append(f"{name}: {msg}")
    return "; ".join(parts)


class FeastProfile(BaseSettings):
    """Where Feast keeps its registry and online features (`RTML_FEAST_*`).

    One profile for the operator, the materialization CronJob, the runtime and `rtml serve`:
    a SQL registry (SQLite on one machine, PostgreSQL in a cluster) and an online store (SQLite
    or Redis). The Redis password and the registry URL are credentials: in a cluster they reach
    pods only through a `secretKeyRef` (`feast_env`).
    """

    model_config = SettingsConfigDict(
        env_prefix=FEAST_PREFIX, frozen=True, extra="forbid", populate_by_name=True
    )

    kind: Literal["sqlite", "redis"] = Field(
        default="sqlite",
        validation_alias=AliasChoices(ENV_FEAST_STORE, "kind"),
        description="the online store",
    )
    path: Path = Field(
        default=Path("feature_store"),
        description="folder of the SQLite registry and online store (and Feast's repo_path)",
    )
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0", description="the Redis online store (kind redis)"
    )
    redis_password: SecretStr | None = Field(
        default=None, description="Redis AUTH password (from a Secret in a cluster)"
    )
    registry: SecretStr | None = Field(
        default=None,
        description="SQLAlchemy URL of the SQL registry; default a SQLite file in `path`",
    )
    registry_cache_ttl_seconds: int = Field(
        default=60, ge=0, description="how long a reader trusts its copy of the registry"
    )

    @field_validator("redis_url")
    @classmethod
    def _redis_url_parses(cls, value: str) -> str:
        parse_redis_url(value)  # a bad URL fails at start-up, naming the variable
        return value

    @field_validator("redis_password")
    @classmethod
    def _password_fits_feast(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and "," in value.get_secret_value():
            # Feast splits its connection string on commas and has no escape for them.
            raise ValueError("Feast cannot take a comma in a Redis password")
        return value

    @property
    def registry_url(self) -> str:
        if self.registry is not None and self.registry.get_secret_value():
            return self.registry.get_secret_value()
        return f"sqlite:///{self.path.absolute() / 'registry.db'}"

    @property
    def redis_url_with_password(self) -> str:
        """`redis_url` with `redis_password` in it (a password already in the URL wins)."""
        parts = urllib.parse.urlsplit(self.redis_url)
        if self.redis_password is None or parts.password:
            return self.redis_url
        secret = urllib.parse.quote(self.redis_password.get_secret_value(), safe="")
        user = urllib.parse.quote(parts.username or "", safe="")
        host = parts.netloc.rsplit("@", 1)[-1]
        return parts._replace(netloc=f"{user}:{secret}@{host}").geturl()

    def described(self) -> str:
        online = (
            f"sqlite {self.path.absolute() / 'online.db'}"
            if self.kind == "sqlite"
            else f"redis {redacted(self.redis_url)}"
        )
        return f"registry {redacted(self.registry_url)}, online store {online}"


def parse_redis_url(url: str) -> urllib.parse.SplitResult:
    example = "such as redis://127.0.0.1:6379/0"
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ValueError(f"{redacted(url)!r} is not a Redis URL {example}")
    try:
        _ = parts.port
    except ValueError as e:
        raise ValueError(f"{redacted(url)!r} has an invalid port: {e}") from e
    db = parts.path.lstrip("/") or "0"
    if not db.isdigit():
        raise ValueError(f"{redacted(url)!r} names database {db!r}, not a number")
    if "," in urllib.parse.unquote(parts.netloc.rpartition("@")[0]):
        # Feast splits its connection string on commas and has no escape for them.
        raise ValueError(f"{redacted(url)!r}: Feast cannot take a comma in credentials")
    return parts


def redacted(url: str) -> str:
    """`url` with any password replaced by `***`, for logs and messages."""
    parts = urllib.parse.urlsplit(url)
    if not parts.password:
        return url
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")).geturl()


class RuntimeSettings(BaseSettings):
    """The runtime process's own settings (`RTML_*`); its Feast profile is a FeastProfile."""

    model_config = SettingsConfigDict(env_prefix=RUNTIME_PREFIX, frozen=True, populate_by_name=True)

    config: Path | None = Field(
        default=None, description="the resolved config (JSON) or a Model manifest (YAML)"
    )
    model: str | None = Field(default=None, description="the Model to serve from a manifest")
    register_features: bool = Field(
        default=False,
        validation_alias=AliasChoices("RTML_REGISTER", "register_features"),
        description="register and materialise the FeatureView before serving",
    )
    max_body_bytes: int = Field(default=1 << 20, gt=0)
    max_batch_rows: int = Field(default=256, gt=0)
    # 2 GiB: what one protobuf (a single-file ONNX model) can hold; the runtime reads the
    # whole artifact into memory to hash exactly the bytes it loads.
    max_artifact_bytes: int = Field(default=2 << 30, gt=0)
    cache_entries: int = Field(default=100_000, ge=0)
    cache_ttl_seconds: float = Field(default=1.0, ge=0)
    rank_cache_ttl_seconds: float = Field(
        default=0.0, ge=0, description="how long a ranking answer is reused; 0: no result cache"
    )
    rank_cache_entries: int = Field(default=1024, ge=0, description="ranking answers kept")
    artifact_dir: Path = Field(
        default=Path(ARTIFACT_DIR), description="where downloaded artifacts are kept"
    )
    pvc_root: Path = Field(
        default=Path("/mnt/pvc"), description="where pvc://CLAIM/path claims are mounted"
    )
    traffic: Path | None = Field(
        default=None, description="the traffic plan (rtml.api.traffic) to follow; none: champion"
    )
    traffic_poll_seconds: float = Field(
        default=1.0, gt=0, description="how often the traffic plan file is checked for a change"
    )
    shadow_queue: int = Field(
        default=1000, ge=1, description="shadow requests waiting to be scored before new ones drop"
    )
    push_token: SecretStr | None = Field(
        default=None,
        description="the bearer token POST /push/{view} requires; unset or empty: /push is off",
    )
    audit_redis_url: SecretStr | None = Field(
        default=None,
        description="the Redis that spec.audit's streams go to; unset: the online store's Redis "
        "(required with the sqlite profile)",
    )
    audit_queue: int = Field(
        default=10_000, ge=1, description="audit records waiting to be written before new ones drop"
    )


# --- credentials in pods --------------------------------------------------------------------------
class FeastSecretRef(BaseModel):
    """The Secret (the chart's `feast.existingSecret`) that pods read Feast credentials from.

    It must exist in every namespace whose Models or FeatureViews read features: a pod can only
    reference a Secret of its own namespace, and the operator never copies Secrets.
    """

    model_config = ConfigDict(frozen=True)

    name: str
    redis_password_key: str = "redis-password"  # noqa: S105 - a key's name, not a password
    registry_key: str = "registry"


def _secret_env(name: str, ref: FeastSecretRef, key: str) -> dict[str, Any]:
    return secret_key_env(name, ref.name, key)


def secret_key_env(name: str, secret: str, key: str) -> dict[str, Any]:
    """A container's env entry read from a Secret of the pod's namespace."""
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def feast_env(
    profile: FeastProfile, secret: FeastSecretRef | None, *, registry: bool
) -> list[dict[str, Any]]:
    """A container's `env` for the profile: where things are as values, credentials only as
    `secretKeyRef`s (never literal). `registry`: the container talks to the SQL registry
    (materialization, pushes); a reader of Redis alone does not need it.
    """
    env: list[dict[str, Any]] = [
        {"name": ENV_FEAST_STORE, "value": profile.kind},
        {"name": ENV_FEAST_PATH, "value": str(profile.path)},
        {"name": ENV_FEAST_REDIS_URL, "value": profile.redis_url},
    ]
    if secret is not None and profile.redis_password is not None:
        env.append(_secret_env(ENV_FEAST_REDIS_PASSWORD, secret, secret.redis_password_key))
    if registry and secret is not None and profile.registry is not None:
        env.append(_secret_env(ENV_FEAST_REGISTRY, secret, secret.registry_key))
    return env


def credentials_problem(profile: FeastProfile, secret: FeastSecretRef | None) -> str | None:
    """Why the operator cannot hand this profile to pods without writing a credential in
    clear, or None. The operator refuses to start with this message."""
    if urllib.parse.urlsplit(profile.redis_url).password:
        return (
            f"{ENV_FEAST_REDIS_URL} carries a password, which would be copied into every "
            f"predictor pod; put it in the Secret the chart names (feast.existingSecret) and "
            f"leave it out of the URL"
        )
    if secret is None and profile.redis_password is not None:
        return (
            f"{ENV_FEAST_REDIS_PASSWORD} is set but RTML_FEAST_SECRET (the Secret predictor "
            "pods read it from) is not; set feast.existingSecret in the chart"
        )
    if secret is None and profile.registry is not None:
        return (
            f"{ENV_FEAST_REGISTRY} is set but RTML_FEAST_SECRET (the Secret materialization "
            "jobs read it from) is not; set feast.existingSecret in the chart"
        )
    return None
