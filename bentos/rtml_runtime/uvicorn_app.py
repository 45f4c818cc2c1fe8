"""The runtime app for a plain ASGI server (`uvicorn rtml_runtime.uvicorn_app:app`)."""

from __future__ import annotations

from rtml.contract import FeastProfile, RuntimeSettings, load_settings
from rtml.logs import configure_logging
from rtml_runtime.bootstrap import build_app
from rtml_runtime.config import load_config

configure_logging()
SETTINGS = load_settings(RuntimeSettings)
app = build_app(
    load_config(SETTINGS, load_settings(FeastProfile)), register=SETTINGS.register_features
)
