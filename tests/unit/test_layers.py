"""The two planes import each other only through shared code, and never behind a function.

import-linter (`lint-imports`, run by .ci/test) checks the module graph; it cannot see why an
import sits inside a function. A function-local import of the other plane is how the old cycle
hid (72 of them), so this reads every module's syntax tree for one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]
# For each package: the modules it must never import from inside a function.
OTHER_PLANE = {
    REPO / "operator" / "rtml": ("rtml_runtime",),
    REPO / "bentos" / "rtml_runtime": ("rtml.operator", "rtml.dev", "rtml.cli", "kopf"),
}


def _local_imports(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for fn in ast.walk(tree):
        if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for node in ast.walk(fn):
            if isinstance(node, ast.Import):
                found += [(node.lineno, a.name) for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.append((node.lineno, node.module))
    return found


def _offenders(root: Path, forbidden: tuple[str, ...]) -> list[str]:
    out = []
    for path in sorted(root.rglob("*.py")):
        for line, module in _local_imports(ast.parse(path.read_text())):
            if any(module == f or module.startswith(f + ".") for f in forbidden):
                out.append(f"{path.relative_to(root.parent)}:{line} imports {module}")
    return out


@pytest.mark.parametrize("root", list(OTHER_PLANE), ids=lambda p: p.name)
def test_no_function_local_import_of_the_other_plane(root: Path) -> None:
    assert _offenders(root, OTHER_PLANE[root]) == []


def test_the_check_finds_a_hidden_import(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text(
        "import rtml_runtime\n\ndef f():\n    from rtml_runtime.engine import Runtime\n"
    )
    assert _offenders(tmp_path, ("rtml_runtime",)) == [
        f"{tmp_path.name}/m.py:4 imports rtml_runtime.engine"
    ]


def test_the_contract_module_imports_neither_plane_nor_their_frameworks() -> None:
    tree = ast.parse((REPO / "operator" / "rtml" / "contract.py").read_text())
    modules = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    modules |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert modules <= {"__future__", "urllib.parse", "pathlib", "typing", "pydantic",
                       "pydantic_settings", "rtml"}  # fmt: skip
