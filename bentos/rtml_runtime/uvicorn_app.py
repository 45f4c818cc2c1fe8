"""The runtime app for a plain ASGI server (`uvicorn rtml_runtime.uvicorn_app:app`)."""

from __future__ import annotations

import os

from rtml.logs import configure_logging
from rtml_runtime.bootstrap import build_app
from rtml_runtime.config import load_config

configure_logging()
app = build_app(load_config(), register=os.environ.get("RTML_REGISTER") == "1")
