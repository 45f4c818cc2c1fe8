"""The docs stand on their own and stay complete.

- Every relative Markdown link in README.md and docs/*.md names a file of this repository
  (and a heading of it, when the link has a #fragment); none leaves the checkout, which is all
  a user's clone has.
- Every reason string the operator code sets (condition reasons, Event reasons, pausedReason,
  the signature check's mismatch reasons) is explained in docs/troubleshooting.md, written as
  code (`Reason`). The reasons are read from the source with `ast`, so a new one without a
  line in the doc fails here.
"""

from __future__ import annotations

import ast
import re
import typing
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from rtml.api.experiment import Phase

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
MARKDOWN = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TROUBLESHOOTING = ROOT / "docs" / "troubleshooting.md"
# Where reasons are set: the operator, and the signature check whose mismatch reasons its
# FeaturesResolved message carries.
REASON_SOURCES = [
    *sorted((ROOT / "operator" / "rtml" / "operator").rglob("*.py")),
    ROOT / "operator" / "rtml" / "api" / "signature.py",
]


# -- links --------------------------------------------------------------------------------------

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
INLINE_LINK = re.compile(
    r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*(<[^>]*>|[^\s)]+)(?:\s+[\"'(][^)]*)?\)"
)
REFERENCE_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)")
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def prose_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) outside fenced code blocks, with inline code spans blanked."""
    fence: str | None = None
    for number, line in enumerate(text.splitlines(), 1):
        opened = FENCE.match(line)
        if fence is None and opened:
            fence = opened.group(1)[0] * 3
            continue
        if fence is not None:
            if line.strip().startswith(fence):
                fence = None
            continue
        yield number, CODE_SPAN.sub(lambda m: " " * len(m.group(0)), line)


def links(text: str) -> Iterator[tuple[int, str]]:
    for number, line in prose_lines(text):
        for m in INLINE_LINK.finditer(line):
            yield number, m.group(1).strip("<>")
        if definition := REFERENCE_DEFINITION.match(line):
            yield number, definition.group(1).strip("<>")


def github_anchors(text: str) -> set[str]:
    """The anchors GitHub gives a file's headings: lower case, punctuation dropped, spaces to
    hyphens, repeats numbered."""
    seen: dict[str, int] = {}
    anchors = set()
    for _, line in prose_lines(text.replace("`", "")):
        heading = re.match(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading is None:
            continue
        slug = re.sub(r"[^\w\- ]", "", heading.group(1).lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def link_problem(doc: Path, target: str) -> str | None:
    """Why `target`, written in `doc`, does not lead to a file of the repository (None: it does).
    Links with a scheme (https:, mailto:) are not ours to check, but file: leaves the clone."""
    if SCHEME.match(target) and not target.lower().startswith("file:"):
        return None
    if SCHEME.match(target):
        return "a file: URL points outside the repository"
    path_part, _, fragment = target.partition("#")
    path_part = path_part.split("?", 1)[0]
    if not path_part:
        where = doc
    elif path_part.startswith("/"):
        where = ROOT / path_part.lstrip("/")
    else:
        where = doc.parent / path_part
    where = where.resolve()
    if not where.is_relative_to(ROOT):
        return f"leaves the repository ({where})"
    if not where.exists():
        return f"{where.relative_to(ROOT)} does not exist"
    markdown = where.is_file() and where.suffix == ".md"
    if fragment and markdown and fragment not in github_anchors(where.read_text()):
        return f"{where.relative_to(ROOT)} has no heading with the anchor #{fragment}"
    return None


def test_the_markdown_files_are_found() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in MARKDOWN}
    assert {"README.md", "docs/api.md", "docs/troubleshooting.md"} <= names


@pytest.mark.parametrize("doc", MARKDOWN, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves_inside_the_repository(doc: Path) -> None:
    text = doc.read_text()
    problems = [
        f"{doc.relative_to(ROOT)}:{line}: ({target}) {problem}"
        for line, target in links(text)
        if (problem := link_problem(doc, target)) is not None
    ]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("doc", MARKDOWN, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_doc_points_at_the_folder_beside_the_checkout(doc: Path) -> None:
    text = doc.read_text()
    assert "../shared" not in text
    assert str(ROOT.parent / "shared") not in text  # nor by its absolute path on this machine


def test_the_link_checker_catches_a_link_that_leaves_or_is_missing() -> None:
    doc = ROOT / "README.md"
    outside = link_problem(doc, "../shared/API.md")
    missing = link_problem(doc, "docs/no-such-page.md")
    bad_anchor = link_problem(doc, "docs/api.md#no-such-heading")
    assert outside is not None
    assert "leaves the repository" in outside
    assert missing is not None
    assert bad_anchor is not None
    assert link_problem(doc, "docs/api.md") is None
    assert link_problem(doc, "https://example.com/x.md") is None
    found = list(links("a [b](c.md) `[d](e.md)`\n```\n[f](g.md)\n```\n[h]: i.md\n"))
    assert found == [(1, "c.md"), (5, "i.md")]


# -- reasons ------------------------------------------------------------------------------------

REASON_NAME = re.compile(r"^[A-Z][A-Za-z]+$")


@dataclass(frozen=True)
class Found:
    reason: str
    where: str


def _parameters(tree: ast.Module) -> Iterator[tuple[str, bool, list[str]]]:
    """(callable name, called as an attribute?, its positional parameter names) for every
    function, method and class (dataclass fields, or __init__'s parameters) in a module."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            init = next(
                (s for s in node.body if isinstance(s, ast.FunctionDef) and s.name == "__init__"),
                None,
            )
            if init is not None:
                fields = [a.arg for a in init.args.args[1:]]
            else:
                fields = [
                    s.target.id
                    for s in node.body
                    if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)
                ]
            yield node.name, False, fields
            for s in node.body:
                if isinstance(s, ast.FunctionDef) and s.name != "__init__":
                    yield s.name, True, [a.arg for a in s.args.args[1:]]
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            yield node.name, False, [a.arg for a in node.args.args]


def _is_reason(name: str | None) -> bool:
    return name is not None and (name == "reason" or name.endswith("_reason"))


class ReasonFinder:
    """String constants that reach a `reason` in the operator's code.

    - an argument bound (by position or keyword) to a parameter named `reason` of a callable
      defined in the scanned code: `Cond(type, status, reason, message)`, `Event(...)`,
      `_resolved(...)`, `Mismatch(...)`, `client.event(...)`, any new helper taking a `reason`;
    - a keyword argument or dict entry named `reason`/`*_reason` (`paused_reason=...`);
    - a `(Reason, message)` pair: a two-tuple of a CamelCase constant and a message expression
      (how `_blocked` hands an Experiment's waiting reason to its Event).

    A value is a constant, either branch of `a if c else b`, an operand of `a or b`, or a local
    name, followed to the constants assigned to it in the same function. An f-string that starts
    with a CamelCase constant (`f"Canary{phase}"`) is a family of reasons, `Canary*`: the doc
    must name at least one of them.
    """

    def __init__(self, sources: Iterable[Path]) -> None:
        self.trees = {p: ast.parse(p.read_text(), str(p)) for p in sources}
        self.functions: dict[str, list[list[str]]] = {}
        self.methods: dict[str, list[list[str]]] = {}
        for tree in self.trees.values():
            for name, is_method, params in _parameters(tree):
                (self.methods if is_method else self.functions).setdefault(name, []).append(params)

    def find(self) -> list[Found]:
        found: list[Found] = []
        for path, tree in self.trees.items():
            where = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)
            for scope, node in self._nodes(tree):
                for value in self._reason_values(node):
                    for text in self._constants(value, scope):
                        found.append(Found(text, f"{where}:{getattr(node, 'lineno', 0)}"))
        return found

    def _nodes(self, tree: ast.Module) -> Iterator[tuple[ast.AST | None, ast.AST]]:
        """Every node with its innermost enclosing function (None at module level)."""

        def visit(node: ast.AST, scope: ast.AST | None) -> Iterator[tuple[ast.AST | None, ast.AST]]:
            for child in ast.iter_child_nodes(node):
                inner = (
                    child if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) else scope
                )
                yield inner, child
                yield from visit(child, inner)

        return visit(tree, None)

    def _signatures(self, call: ast.Call) -> list[list[str]]:
        if isinstance(call.func, ast.Name):
            return self.functions.get(call.func.id, [])
        if isinstance(call.func, ast.Attribute):
            return self.methods.get(call.func.attr, []) or self.functions.get(call.func.attr, [])
        return []

    def _reason_values(self, node: ast.AST) -> Iterator[ast.expr]:
        if isinstance(node, ast.Call):
            for params in self._signatures(node):
                for param, arg in zip(params, node.args, strict=False):
                    if _is_reason(param):
                        yield arg
            for kw in node.keywords:
                if _is_reason(kw.arg):
                    yield kw.value
        elif isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                name = key.value if isinstance(key, ast.Constant) else None
                if isinstance(name, str) and _is_reason(name):
                    yield value
        elif isinstance(node, ast.Tuple) and len(node.elts) == 2:
            first, second = node.elts
            if (
                isinstance(first, ast.Constant)
                and isinstance(first.value, str)
                and REASON_NAME.match(first.value)
                and isinstance(second, ast.JoinedStr | ast.Name)
            ):
                yield first

    def _constants(self, value: ast.expr, scope: ast.AST | None, depth: int = 0) -> Iterator[str]:
        if depth > 3:
            return
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            if REASON_NAME.match(value.value):
                yield value.value
        elif isinstance(value, ast.JoinedStr) and value.values:
            head = value.values[0]
            prefix = head.value if isinstance(head, ast.Constant) else None
            if isinstance(prefix, str) and REASON_NAME.match(prefix):
                yield f"{prefix}*"
        elif isinstance(value, ast.IfExp):
            yield from self._constants(value.body, scope, depth + 1)
            yield from self._constants(value.orelse, scope, depth + 1)
        elif isinstance(value, ast.BoolOp):
            for operand in value.values:
                yield from self._constants(operand, scope, depth + 1)
        elif isinstance(value, ast.Name) and scope is not None:
            for node in ast.walk(scope):
                if isinstance(node, ast.Assign) and any(
                    isinstance(t, ast.Name) and t.id == value.id for t in node.targets
                ):
                    yield from self._constants(node.value, scope, depth + 1)


def operator_reasons() -> dict[str, list[str]]:
    """Reason -> where the code sets it."""
    out: dict[str, list[str]] = {}
    for f in ReasonFinder(REASON_SOURCES).find():
        out.setdefault(f.reason, []).append(f.where)
    return out


def documented(reason: str, doc: str) -> bool:
    """Named as code in the doc; `Prefix*` by at least one `PrefixSomething`."""
    if reason.endswith("*"):
        return re.search(rf"`{re.escape(reason[:-1])}[A-Za-z]+`", doc) is not None
    return f"`{reason}`" in doc


def test_the_finder_sees_every_way_a_reason_is_set() -> None:
    """A canary for the finder itself: one reason of each shape the code uses today."""
    reasons = operator_reasons()
    expected = {
        "DeploymentMissing",  # Cond(...) in status.py
        "Settled",  # Cond(...) in featureview_status.py and status.py
        "SignatureMismatch",  # _resolved(...) in signature.py
        "NameTaken",  # _refused(...) in featureview.py
        "ApplyRejected",  # Cond(...) built in reconcile.py and featureview.py
        "InvalidSpec",  # status.py, featureview.py, experiment.py
        "Finished",  # `"Finished" if ... else phase` in experiment._conditions
        "Pending",  # `phase = status.phase or "Pending"`, followed from the name
        "ModelBusy",  # a (reason, message) pair in experiment._blocked
        "StepPassed",  # Event(...) in canary.py
        "CanarySuperseded",  # client.event(...) in reconcile.py
        "RegistryCleanupSkipped",  # client.event(...) in featureview.py
        "PausedByUser",  # paused_reason in a model_copy update
        "MissingFeature",  # Mismatch(...) in rtml/api/signature.py
        "Not*",  # f"Not{kserve_type}", mirrored from KServe, in status.py
        "Canary*",  # f"Canary{canary.ended}" in status.py
    }
    assert expected <= set(reasons), sorted(expected - set(reasons))
    # Words that are not reasons stay out: pods.py's local `reason` names a pod's state and is
    # never passed as one, and kind names in (apiVersion, kind) tuples are not reasons.
    assert not {"NotScheduled", "Waiting", "InferenceService", "Deployment"} & set(reasons)


def test_every_reason_the_operator_sets_is_in_troubleshooting() -> None:
    doc = TROUBLESHOOTING.read_text()
    missing = {r: w for r, w in operator_reasons().items() if not documented(r, doc)}
    assert not missing, (
        "reasons set in the code but not explained (as `Reason`) in docs/troubleshooting.md: "
        + "; ".join(f"{r} ({', '.join(w)})" for r, w in sorted(missing.items()))
    )


def test_every_experiment_phase_is_in_troubleshooting() -> None:
    """An Experiment's conditions take its phase as their reason (experiment._conditions)."""
    doc = TROUBLESHOOTING.read_text()
    assert not [p for p in typing.get_args(Phase) if not documented(p, doc)]


def test_a_new_reason_without_a_line_in_the_doc_is_caught(tmp_path: Path) -> None:
    """The check can fail: a module that sets a reason the doc does not name."""
    module = tmp_path / "new_reason.py"
    module.write_text(
        "from rtml.operator.conditions import Cond\n"
        "def f(ok: bool, what: str) -> list[Cond]:\n"
        "    reason = 'BrandNewReason' if ok else 'OtherNewReason'\n"
        "    return [Cond('Ready', 'False', reason, 'message'),\n"
        "            Cond('Stalled', 'True', f'Unheard{what}', 'message')]\n"
    )
    finder = ReasonFinder([*REASON_SOURCES, module])
    new = {f.reason for f in finder.find() if f.where.startswith(str(tmp_path))}
    assert new == {"BrandNewReason", "OtherNewReason", "Unheard*"}
    doc = TROUBLESHOOTING.read_text()
    assert not [r for r in new if documented(r, doc)]
    assert documented("Canary*", "`CanaryAborted`")
    assert not documented("Canary*", "`Canary`")
