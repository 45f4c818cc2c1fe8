"""The servers under test: how each is started, where it answers, which body it is sent."""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from benchlib.fixture import REPO, Fixture
from benchlib.procs import Server, free_port

SERVERS_DIR = Path(__file__).resolve().parents[1] / "servers"
PYTHONPATH = os.pathsep.join([str(REPO / "operator"), str(REPO / "bentos")])


@dataclass(frozen=True)
class ServerConfig:
    key: str
    label: str
    family: str  # bare | floor | kserve | bentoml | rtml
    features: bool  # every request reads the entity's features from Redis
    host: str = "bentoml"  # rtml only: `rtml serve --server HOST` (bentoml | uvicorn)
    cached: bool = False  # rtml's L1 cache on (its defaults)
    # rtml following a traffic plan file (--traffic): "none" (a plan without an experiment),
    # "canary" (the candidate answers `percent` of requests) or "shadow" (it also scores
    # `percent` of them off the response path); None: no --traffic at all.
    traffic: str | None = None
    percent: int = 0

    @property
    def url_path(self) -> str:
        return "/v1/models/fraud:predict" if self.family == "kserve" else "/predict"

    @property
    def is_rtml(self) -> bool:
        return self.family == "rtml"

    def server(self, fixture: Fixture, port: int, log_dir: Path, kserve_python: Path) -> Server:
        env = {
            **os.environ,
            "PYTHONPATH": PYTHONPATH,
            "BENCH_MODEL": str(fixture.model_path),
            "PYTHONUNBUFFERED": "1",
        }
        if self.family == "floor":
            env |= {
                "BENCH_REDIS_URL": fixture.redis_url,
                "BENCH_FEAST_VIEW": fixture.view_name,
                "BENCH_FEAST_FEATURES": ",".join(fixture.feature_names),
                "BENCH_JOIN_KEY": fixture.join_key,
            }
        elif self.features and not self.is_rtml:
            assert fixture.feast_repo is not None
            env |= {
                "BENCH_FEAST_REPO": str(fixture.feast_repo),
                "BENCH_FEAST_VIEW": fixture.view_name,
                "BENCH_FEAST_FEATURES": ",".join(fixture.feature_names),
                "BENCH_JOIN_KEY": fixture.join_key,
            }
        marker = None
        py = sys.executable
        uvicorn = [py, "-m", "uvicorn", "--app-dir", str(SERVERS_DIR), "--port", str(port)]
        quiet = ["--no-access-log", "--log-level", "warning"]
        if self.family == "floor":
            argv = [*uvicorn, *quiet, "--lifespan=off", "floor_redis:app"]
        elif self.family == "bare":
            module = "starlette_feast:app" if self.features else "bare_asgi:app"
            argv = [*uvicorn, *quiet, module]
            if not self.features:
                argv.insert(-1, "--lifespan=off")
        elif self.family == "kserve":
            env.pop("PYTHONPATH")
            argv = [
                str(kserve_python),
                str(SERVERS_DIR / "kserve_server.py"),
                "--http_port",
                str(port),
                "--grpc_port",
                str(free_port()),
            ]
        elif self.family == "bentoml":
            argv = [
                py,
                "-m",
                "bentoml",
                "serve",
                "bentoml_default:Fraud",
                "--working-dir",
                str(SERVERS_DIR),
                "--port",
                str(port),
            ]
        else:
            manifest = fixture.manifest if self.features else fixture.plain_manifest
            # --no-register: the harness registered and materialised the view already, as the
            # operator does in a cluster; every server starts against the same ready store.
            argv = [py, "-m", "rtml.cli", "serve", str(manifest), "--port", str(port)]
            argv += ["--no-register", "--server", self.host]
            if self.features:
                argv += [
                    "--profile",
                    "redis",
                    "--redis-url",
                    fixture.redis_url,
                    "--store-path",
                    str(fixture.store_path),
                ]
            if self.traffic is not None:
                argv += ["--traffic", str(self.write_plan(fixture))]
            if not self.cached:
                env["RTML_CACHE_ENTRIES"] = "0"
            marker = r"^serving .* on http"  # the CLI hands over to the server it starts
        return Server(
            name=self.key,
            argv=argv,
            env=env,
            cwd=fixture.root,
            log_path=log_dir / f"{self.key}.log",
            marker=marker,
        )

    def write_plan(self, fixture: Fixture) -> Path:
        """The traffic plan file this server follows, as the operator renders it (plan_json):
        the example's candidate.onnx (same signature as model.onnx) as the challenger."""
        from rtml.api.traffic import CHAMPION_ONLY, TrafficPlan, plan_json

        plan = CHAMPION_ONLY
        if self.traffic in ("canary", "shadow"):
            candidate = fixture.candidate_path
            plan = TrafficPlan.model_validate(
                {
                    "experiment": f"bench-{self.traffic}",
                    "strategy": self.traffic,
                    "candidate": {
                        "version": "candidate",
                        "artifact": {
                            "uri": f"file://{candidate}",
                            "sha256": hashlib.sha256(candidate.read_bytes()).hexdigest(),
                        },
                    },
                    "weight": self.percent if self.traffic == "canary" else 0,
                    "shadowSampleRate": self.percent if self.traffic == "shadow" else 0,
                }
            )
        path = fixture.root / f"traffic-{self.key}.json"
        path.write_text(plan_json(plan))
        return path


CONFIGS = [
    ServerConfig("bare", "bare ASGI + ONNX Runtime", "bare", features=False),
    ServerConfig("bare-feast", "Starlette + Feast SDK (async) + ORT", "bare", features=True),
    ServerConfig(
        "floor-redis", "floor: raw ASGI + one HMGET (hiredis) + ORT", "floor", features=True
    ),
    ServerConfig("kserve", "KServe 0.21 Python server, v1", "kserve", features=False),
    ServerConfig("kserve-feast", "KServe 0.21 + Feast SDK (async)", "kserve", features=True),
    ServerConfig("bentoml", "BentoML 1.4 default service", "bentoml", features=False),
    ServerConfig("bentoml-feast", "BentoML 1.4 default + Feast SDK", "bentoml", features=True),
    ServerConfig("rtml", "rtml runtime (no features)", "rtml", features=False),
    ServerConfig("rtml-redis", "rtml runtime + Redis read, cache off", "rtml", features=True),
    ServerConfig(
        "rtml-cached", "rtml runtime + Redis, L1 cache on (cached)", "rtml", True, cached=True
    ),
    # The same runtime app without BentoML around it (`rtml serve --server uvicorn`): what the
    # BentoML host costs, beside the floors.
    ServerConfig(
        "rtml-uvicorn",
        "rtml runtime under plain uvicorn (no features)",
        "rtml",
        False,
        host="uvicorn",
    ),
    ServerConfig(
        "rtml-redis-uvicorn",
        "rtml runtime under plain uvicorn + Redis read, cache off",
        "rtml",
        True,
        host="uvicorn",
    ),
]
# `--suite experiments`: the example's Model + FeatureView as `rtml-redis` (a Redis read per
# request, L1 cache off, a random one of the materialised cards per request: the entity id is
# the sticky key), each following a traffic plan file.
EXPERIMENT_CONFIGS = [
    ServerConfig(
        "rtml-plan-none", "rtml + Redis, plan without an experiment", "rtml", True, traffic="none"
    ),
    ServerConfig(
        "rtml-canary-50",
        "rtml + Redis, canary: candidate answers 50%",
        "rtml",
        True,
        traffic="canary",
        percent=50,
    ),
    ServerConfig(
        "rtml-shadow-100",
        "rtml + Redis, shadow: candidate also scores 100%",
        "rtml",
        True,
        traffic="shadow",
        percent=100,
    ),
]
# `--suite floors`: the floors and rtml on the same work, hosted by BentoML and by plain uvicorn
# (issue 13's ratios); the same configs as the main suite's, so the same Lua, cards and pinning.
FLOOR_KEYS = ("bare", "floor-redis", "rtml", "rtml-redis", "rtml-uvicorn", "rtml-redis-uvicorn")
FLOOR_CONFIGS = [c for c in CONFIGS if c.key in FLOOR_KEYS]
SUITES = {"main": CONFIGS, "experiments": EXPERIMENT_CONFIGS, "floors": FLOOR_CONFIGS}
BY_KEY = {c.key: c for c in CONFIGS + EXPERIMENT_CONFIGS}
