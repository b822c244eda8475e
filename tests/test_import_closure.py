"""Each stage's DVC deps list exactly the ``layerwise`` modules its script imports.

DVC reruns a stage only when one of its deps changes, so a module a stage imports but does not
list lets results go stale, and a module it lists but no longer imports reruns it for nothing.
The closure is computed from the source (every ``import`` statement, in functions too, except
those under ``if TYPE_CHECKING:``, which never run). A package ``__init__.py`` counts only when
a name is imported from it directly; the test checks the others hold nothing but a docstring.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml
from conftest import REPO_ROOT

SRC = REPO_ROOT / "src"
PACKAGE = SRC / "layerwise"


def module_file(dotted: str) -> Path | None:
    """The file of a ``layerwise`` module or package (its ``__init__.py``), if it exists."""
    base = SRC.joinpath(*dotted.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _runtime_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Import statements outside ``if TYPE_CHECKING:`` blocks."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def imported_files(path: Path) -> set[Path]:
    """``layerwise`` files one file imports directly."""
    out: set[Path] = set()
    for node in _runtime_imports(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.split(".")[0] == "layerwise"]
            out |= {f for f in map(module_file, names) if f and f.name != "__init__.py"}
            continue
        if node.level or not (node.module or "").startswith("layerwise"):
            continue
        for alias in node.names:
            sub = module_file(f"{node.module}.{alias.name}")
            out.add(sub if sub is not None else module_file(node.module))
    return {f for f in out if f is not None}


def closure(script: Path) -> set[Path]:
    """Every ``layerwise`` file a script runs, transitively."""
    seen: set[Path] = set()
    todo = [script]
    while todo:
        for found in imported_files(todo.pop()) - seen:
            seen.add(found)
            todo.append(found)
    return seen


def stage_scripts() -> dict[str, tuple[Path, set[Path]]]:
    """Stage name -> (its script, the ``src/layerwise`` files in its deps, dirs expanded)."""
    dvc = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())
    out = {}
    for name, stage in dvc["stages"].items():
        body = stage.get("do", stage)
        script = REPO_ROOT / re.search(r"stages/\w+\.py", body["cmd"]).group(0)
        listed: set[Path] = set()
        for dep in body.get("deps", []):
            path = REPO_ROOT / (dep if isinstance(dep, str) else next(iter(dep)))
            if PACKAGE in path.parents or path == PACKAGE:
                listed |= set(path.rglob("*.py")) if path.is_dir() else {path}
        out[name] = (script, listed)
    return out


@pytest.mark.parametrize("stage", sorted(stage_scripts()))
def test_stage_deps_are_its_import_closure(stage: str) -> None:
    script, listed = stage_scripts()[stage]
    used = closure(script)
    rel = lambda paths: sorted(str(p.relative_to(REPO_ROOT)) for p in paths)  # noqa: E731
    assert not used - listed, f"{stage}: imported but not in deps: {rel(used - listed)}"
    assert not listed - used, f"{stage}: in deps but never imported: {rel(listed - used)}"


def test_package_inits_that_do_not_count_are_docstrings_only() -> None:
    """``__init__.py`` files only count as deps when imported from, so the others must not
    hold code that could change a stage's behaviour."""
    for init in PACKAGE.rglob("__init__.py"):
        body = ast.parse(init.read_text()).body
        code = [
            n for n in body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))
        ]
        if init.parent == PACKAGE:
            code = [n for n in code if "__version__" not in ast.unparse(n)]
        assert not code, f"{init.relative_to(REPO_ROOT)} holds code: keep package inits empty"


def test_closure_follows_function_level_imports(tmp_path: Path) -> None:
    """The closure sees imports inside functions and skips TYPE_CHECKING-only ones."""
    script = tmp_path / "s.py"
    script.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from layerwise import plots\n"
        "def main():\n    from layerwise.schema import STAGES\n    return STAGES\n"
    )
    assert closure(script) == {PACKAGE / "schema.py"}
