"""POST /push/{view} takes rows only with the bearer token in RTML_PUSH_TOKEN: 403 with no token
configured (pushing is off), 401 with a missing or wrong one, checked before the body is read."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from rtml.api.model import Model
from rtml.contract import RuntimeSettings
from rtml_runtime.app import RuntimeApp
from rtml_runtime.config import RuntimeConfig
from rtml_runtime.engine import Runtime
from rtml_runtime.errors import RequestError
from rtml_runtime.push import authorize_push
from tests.unit.runtime.test_engine import VIEW

pytestmark = pytest.mark.unit
TOKEN = "s3cret-push-token"


@pytest.mark.parametrize(
    ("token", "header", "status", "code"),
    [
        (None, None, 403, "push_disabled"),
        (None, f"Bearer {TOKEN}".encode(), 403, "push_disabled"),
        ("", f"Bearer {TOKEN}".encode(), 403, "push_disabled"),
        (TOKEN, None, 401, "unauthorized"),
        (TOKEN, b"Bearer wrong", 401, "unauthorized"),
        (TOKEN, b"Bearer ", 401, "unauthorized"),
        (TOKEN, TOKEN.encode(), 401, "unauthorized"),  # no scheme
        (TOKEN, f"Basic {TOKEN}".encode(), 401, "unauthorized"),
        (TOKEN, f"Bearer {TOKEN}x".encode(), 401, "unauthorized"),
    ],
)
def test_a_push_without_the_token_is_refused(
    token: str | None, header: bytes | None, status: int, code: str
) -> None:
    with pytest.raises(RequestError) as caught:
        authorize_push(SecretStr(token) if token is not None else None, header)
    assert (caught.value.status, caught.value.code) == (status, code)
    assert "RTML_PUSH_TOKEN" in caught.value.message
    assert caught.value.body()["error"]["field"] is None
    www = dict(caught.value.headers).get(b"www-authenticate", b"")
    assert www.startswith(b"Bearer") == (status == 401)


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_the_right_token_passes(scheme: str) -> None:
    authorize_push(SecretStr(TOKEN), f"{scheme} {TOKEN}".encode())


def call(app: RuntimeApp, path: str, headers: list[tuple[bytes, bytes]]) -> tuple[int, Any, dict]:
    """One POST through the ASGI app, as a server would make it."""
    sent: list[dict[str, Any]] = []
    body = json.dumps({"rows": []}).encode()

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "headers": headers}
    asyncio.run(app(scope, receive, send))
    start, answer = sent
    return start["status"], json.loads(answer["body"]), dict(start["headers"])


def app_with(tmp_path: Path, token: str | None) -> RuntimeApp:
    model = Model.model_validate(
        {
            "metadata": {"name": "fraud"},
            "spec": {
                "version": "v1",
                # Never loaded: authorization is decided before the model is.
                "artifact": {"uri": f"file://{tmp_path / 'm.onnx'}", "sha256": "a" * 64},
                "features": {"featureViewRef": "cards"},
            },
        }
    )
    settings = RuntimeSettings.model_construct(
        push_token=SecretStr(token) if token is not None else None
    )
    config = RuntimeConfig(model=model, feature_view=VIEW, base_dir=tmp_path, settings=settings)
    return RuntimeApp(Runtime(config))


def test_the_app_answers_403_when_pushing_is_off(tmp_path: Path) -> None:
    status, body, _ = call(app_with(tmp_path, None), "/push/cards", [])
    assert status == 403
    assert body["error"]["code"] == "push_disabled"
    assert set(body["error"]) == {"code", "message", "field"}


def test_the_app_answers_401_with_www_authenticate(tmp_path: Path) -> None:
    app = app_with(tmp_path, TOKEN)
    status, body, headers = call(app, "/push/cards", [(b"authorization", b"Bearer nope")])
    assert status == 401
    assert body["error"]["code"] == "unauthorized"
    assert headers[b"www-authenticate"].startswith(b"Bearer")


def test_the_app_lets_the_token_through_to_the_push(tmp_path: Path) -> None:
    """Past the check, the push itself answers: here a view this runtime does not read (404),
    so no feature store is opened."""
    app = app_with(tmp_path, TOKEN)
    auth = [(b"authorization", f"Bearer {TOKEN}".encode())]
    status, body, _ = call(app, "/push/other-view", auth)
    assert (status, body["error"]["code"], body["error"]["field"]) == (404, "not_found", "view")
