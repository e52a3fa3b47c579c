"""Shared fixtures: the repository's paths, notebook variants, and a network guard."""
from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from autograder.netguard import install
from benchmarks.common import solution_code_cells  # noqa: F401  (tests build submissions from it)

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = ROOT / "solutions"
RELEASE = ROOT / "notebooks"


@pytest.fixture(autouse=True, scope="session")
def no_network():
    """Every test runs offline: a connection to anything but loopback raises PermissionError.

    The same guard as in a graded kernel (autograder.netguard); it stays for the whole session.
    """
    install()
    yield


def cell_by_grade_id(nb, grade_id):
    for cell in nb.cells:
        if cell.metadata.get("nbgrader", {}).get("grade_id") == grade_id:
            return cell
    raise KeyError(grade_id)


def make_variant(tmp_path: Path, name: str, replace: dict[str, str] | None = None,
                 insert_after: dict[str, str] | None = None, source: Path | None = None) -> Path:
    """A copy of a solution notebook with some solution cells' code replaced (by grade_id), or
    extra code cells inserted after them, saved as ``tmp_path/<name>.ipynb``."""
    nb = nbformat.read(source or SOLUTIONS / f"{name.split('__')[0]}.ipynb", as_version=4)
    for grade_id, code in (replace or {}).items():
        cell_by_grade_id(nb, grade_id).source = code
    for grade_id, code in (insert_after or {}).items():
        index = nb.cells.index(cell_by_grade_id(nb, grade_id))
        nb.cells.insert(index + 1, nbformat.v4.new_code_cell(code))
    path = tmp_path / f"{name}.ipynb"
    nbformat.write(nb, path)
    return path


def tiny_notebook(tmp_path: Path, name: str, *sources: str) -> Path:
    """A small notebook (no torch, no model) to test how the grader handles a hostile kernel."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / f"{name}.ipynb"
    path.write_text(json.dumps(nb), encoding="utf-8")
    return path


def outcomes(ex, fn, public_only: bool = False) -> list[tuple[str, bool, str]]:
    """``(case name, passed, message)`` of ``fn`` on every case of exercise ``ex`` (hidden ones too, unless
    ``public_only``: what the self-check shows), judged as the grader judges, without a kernel."""
    from autograder.capture import run_case
    from autograder.compare import diagnose

    results = []
    for case in ex.public_cases() if public_only else ex.cases:
        inputs = ex.inputs(case)
        outputs, report = run_case(fn, ex.call, inputs)
        if report["status"] != "ok":
            results.append((case.name, False, report["message"]))
            continue
        passed, reason, hint = diagnose(ex, inputs, outputs)
        results.append((case.name, passed, f"{reason}. Hint: {hint}"))
    return results
