"""The image locks pin every dependency pyproject.toml names, so they cannot drift silently."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]
LOCKS = {"runtime": REPO / "bentos" / "requirements.lock",
         "operator": REPO / "operator" / "requirements.lock"}  # fmt: skip
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)$")


def _pins(lock: Path) -> dict[str, str]:
    pins: dict[str, str] = {}
    for number, raw in enumerate(lock.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _PIN.match(line)
        assert match, f"{lock.name}:{number}: {line!r} is not a `name==version` pin"
        pins[canonicalize_name(match[1])] = match[2]
    return pins


def _declared(extra: str) -> dict[str, Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = [Requirement(r) for r in project["dependencies"]]
    requirements += [Requirement(r) for r in project["optional-dependencies"][extra]]
    return {canonicalize_name(r.name): r for r in requirements}


@pytest.mark.parametrize("extra", sorted(LOCKS))
def test_every_declared_dependency_is_pinned_within_its_specifier(extra: str) -> None:
    pins = _pins(LOCKS[extra])
    missing = sorted(set(_declared(extra)) - set(pins))
    assert not missing, (
        f"{LOCKS[extra].relative_to(REPO)} lacks {missing}: regenerate it with the command in "
        "its header"
    )
    outside = {name: f"{pins[name]} not in {req.specifier}"
               for name, req in _declared(extra).items()
               if not req.specifier.contains(pins[name], prereleases=True)}  # fmt: skip
    assert not outside, f"{LOCKS[extra].relative_to(REPO)} is stale: {outside}"


@pytest.mark.parametrize("extra", sorted(LOCKS))
def test_lock_names_no_rtml_and_says_how_to_regenerate(extra: str) -> None:
    text = LOCKS[extra].read_text()
    assert "rtml" not in _pins(LOCKS[extra])
    assert f"pip install '.[{extra}]'" in text
