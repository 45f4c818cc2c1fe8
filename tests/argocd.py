"""Run the chart's Argo CD health checks (charts/rtml/argocd/*.lua) under a real Lua 5.1.

Argo CD runs a health check as Lua 5.1 (gopher-lua) with the global `obj` set to the object
and only the base, table and package libraries open (plus a safe `os`) unless an admin sets
`resource.customizations.useOpenLibs` (docs/operator-manual/health.md, util/lua/lua.go in
argoproj/argo-cd). The script here runs in the same kind of environment: no `string`, `math`,
`io`, `debug` or `coroutine`, and no string methods, so a script that works here needs nothing
Argo CD would not give it.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
HEALTH_DIR = REPO / "charts" / "rtml" / "argocd"
STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing"}
KEY_PREFIX = "resource.customizations.health."

DRIVER = """
local path = arg[1]
local chunk = assert(loadfile(path))
local env = {}
local closed = {string = true, math = true, io = true, debug = true, coroutine = true, os = true}
for name, value in pairs(_G) do
  if not closed[name] then
    env[name] = value
  end
end
env._G = env
env.obj = OBJ
getmetatable("").__index = nil  -- no ("x"):sub(...): Argo CD opens no string library
setfenv(chunk, env)
local hs = chunk()
if type(hs) ~= "table" then
  error("the script returned " .. type(hs) .. ", not a table")
end
io.write(tostring(hs.status), "\\n", tostring(hs.message))
"""


def lua() -> str:
    """The lua5.1 binary: a missing one fails the test (.ci/env.sh installs Debian's)."""
    found = shutil.which("lua5.1")
    if found is None:
        pytest.fail("lua5.1 is not installed: apt-get install lua5.1 (.ci/env.sh does it)")
    return found


def scripts() -> dict[str, Path]:
    """Each health check by its argocd-cm key suffix (`rtml.dev_Model`): the file's stem."""
    return {p.stem: p for p in sorted(HEALTH_DIR.glob("*.lua"))}


def script_for(obj: dict[str, Any]) -> Path:
    group = obj["apiVersion"].split("/")[0]
    return scripts()[f"{group}_{obj['kind']}"]


def lua_literal(value: Any) -> str:
    """A JSON-like value as a Lua table constructor (null fields become absent, as in Argo CD)."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{value} has no JSON form")
        return repr(value)
    if isinstance(value, str):
        out = []
        for byte in value.encode():
            char = chr(byte)
            if char.isalnum() or char in " .,:;-_/()[]%<>=+*'!?@#&|~^{}$":
                out.append(char)
            else:
                out.append(f"\\{byte:03d}")
        return '"' + "".join(out) + '"'
    if isinstance(value, list):
        return "{" + ", ".join(lua_literal(v) for v in value) + "}"
    if isinstance(value, dict):
        fields = (f"[{lua_literal(str(k))}] = {lua_literal(v)}" for k, v in value.items())
        return "{" + ", ".join(fields) + "}"
    raise TypeError(f"{type(value).__name__} has no JSON form")


def health(obj: dict[str, Any], script: Path | None = None) -> tuple[str, str]:
    """(hs.status, hs.message) of the object's health check, run by lua5.1."""
    driver = DRIVER.replace("OBJ", lua_literal(obj))
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as f:
        f.write(driver)
        f.flush()
        done = subprocess.run(
            [lua(), f.name, str(script or script_for(obj))],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    assert done.returncode == 0, f"lua5.1 failed: {done.stderr}"
    status, _, message = done.stdout.partition("\n")
    assert status in STATUSES, f"hs.status {status!r} is not one Argo CD knows"
    return status, message
