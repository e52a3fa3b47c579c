"""The answers stay where the sandbox can leave them out.

While notebook NN is graded, the sandbox hides its reference modules (``Assignment.references``) and
``autograder/oracles``. That protects the answers only if (1) no other module of ``utils`` defines
an exercise's callable, (2) no shared module imports a reference module when it is imported, and
(3) nothing a kernel sees imports the oracles. These are checked on the source, so a new notebook
that forgets them fails here, not in front of a class.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from autograder import manifests

from conftest import ROOT

ASSIGNMENTS = list(manifests.ASSIGNMENTS.values())
REFERENCE_MODULES = {module for a in ASSIGNMENTS for module in a.references}


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _top_level_definitions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return names


def _imports_at_import_time(path: Path) -> set[str]:
    """Modules imported when ``path`` is imported (not those imported inside functions), made absolute."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = _module_name(path).rsplit(".", 1)[0]
    found = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return found


UTILS = sorted((ROOT / "utils").rglob("*.py"))


def test_every_reference_module_exists_and_belongs_to_one_notebook():
    seen = {}
    for assignment in ASSIGNMENTS:
        for module in assignment.references:
            assert (ROOT / (module.replace(".", "/") + ".py")).is_file(), module
            assert module not in seen, f"{module} is the reference of both {seen.get(module)} and {assignment.notebook}"
            seen[module] = assignment.notebook


@pytest.mark.parametrize("assignment", ASSIGNMENTS, ids=lambda a: a.notebook)
def test_no_shared_module_defines_an_exercise(assignment):
    """A shared module that defines ``GPT`` would hand 02's answer to a kernel grading 02."""
    for ex in assignment.exercises:
        holders = [_module_name(p) for p in UTILS if ex.callable in _top_level_definitions(p)]
        outside = [m for m in holders if m not in assignment.references]
        assert not outside, f"{ex.callable} ({ex.id}) is defined in {outside}, outside {assignment.references}"
        if ex.reference_impl:
            module, name = ex.reference_impl.split(":")
            assert module in assignment.references and name in _top_level_definitions(
                ROOT / (module.replace(".", "/") + ".py")), ex.reference_impl


@pytest.mark.parametrize("path", UTILS, ids=lambda p: p.name)
def test_shared_modules_do_not_import_a_reference_module(path):
    module = _module_name(path)
    if module in REFERENCE_MODULES:
        return
    imported = _imports_at_import_time(path)
    assert not imported & REFERENCE_MODULES, f"{module} imports {imported & REFERENCE_MODULES} when it is imported"
    assert not [m for m in imported if m.startswith("autograder.oracles")]


def test_nothing_a_kernel_sees_imports_the_oracles():
    from autograder.sandbox import course_files

    for path in course_files(()):
        if path.suffix == ".py":
            imported = _imports_at_import_time(path)
            assert not [m for m in imported if "oracles" in m], path
