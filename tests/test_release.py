"""The student release is generated from solutions/ by nbgrader, and matches the manifests."""
from __future__ import annotations

import json
import re

import nbformat
import pytest

from autograder import manifests
from autograder.release import generate, leaks

from conftest import RELEASE, ROOT, SOLUTIONS

NAMES = sorted(manifests.ASSIGNMENTS)


@pytest.fixture(scope="module")
def fresh_release():
    return generate()


def test_every_graded_notebook_has_a_solution_and_a_release():
    assert sorted(p.stem for p in SOLUTIONS.glob("[0-9][0-9]_*.ipynb")) == NAMES
    assert sorted(p.stem for p in RELEASE.glob("[0-9][0-9]_*.ipynb")) == NAMES


def test_release_is_in_sync_with_solutions(fresh_release):
    stale = [name for name, text in fresh_release.items() if (RELEASE / name).read_text(encoding="utf-8") != text]
    assert not stale, f"notebooks/ differs from a fresh release for {stale}: run `make release`"


def test_release_contains_no_solution_code(fresh_release):
    for name, text in fresh_release.items():
        assert not leaks(text), name
        nb = nbformat.reads(text, as_version=4)
        for cell in nb.cells:
            meta = cell.metadata.get("nbgrader", {})
            if meta.get("solution"):
                assert "raise NotImplementedError()" in cell.source, (name, meta["grade_id"])
        solution_nb = nbformat.read(SOLUTIONS / name, as_version=4)
        for cell in solution_nb.cells:
            for block in re.findall(r"### BEGIN SOLUTION\n(.*?)### END SOLUTION", cell.source, flags=re.S):
                for line in block.strip().splitlines():
                    if len(line.strip()) > 25:  # a distinctive solution line must not survive
                        assert line not in text, (name, line)


@pytest.mark.parametrize("name", NAMES)
def test_notebook_structure_matches_manifest(name):
    nb = nbformat.read(SOLUTIONS / f"{name}.ipynb", as_version=4)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", []), "the first code cell must be the parameters cell"
    assert "FAST = False" in code[0].source and "SEED = 0" in code[0].source
    assert nb.metadata["kernelspec"]["name"] == "python3"
    grade_ids = [c.metadata["nbgrader"]["grade_id"] for c in nb.cells if "nbgrader" in c.metadata]
    assert len(grade_ids) == len(set(grade_ids)), "duplicate nbgrader grade_id"
    checks = {c.metadata["nbgrader"]["grade_id"]: c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade")}
    for exercise in manifests.assignment(name).exercises:
        matching = [c for c in checks.values() if f'check("{exercise.id}", {exercise.callable})' in c.source]
        assert len(matching) == 1, f"{name}: needs one self-check cell for {exercise.id}"
        assert matching[0].metadata["nbgrader"]["points"] == exercise.points, f"{exercise.id}: points differ from the manifest"
        defined = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("solution")
                   and re.search(rf"^(def|class) {exercise.callable}\b", c.source, flags=re.M)]
        assert len(defined) == 1, f"{name}: needs one solution cell defining {exercise.callable}"


@pytest.mark.parametrize("path", sorted(SOLUTIONS.glob("*.ipynb")) + sorted(RELEASE.glob("*.ipynb")), ids=lambda p: p.name)
def test_committed_notebooks_have_no_outputs(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    for cell in nb["cells"]:
        assert not cell.get("outputs") and not cell.get("execution_count"), f"{path.relative_to(ROOT)} has outputs"


@pytest.mark.parametrize("name", NAMES)
def test_docstring_examples_of_the_solutions_are_true(name):
    """Each exercise's docstring has a tiny worked example; with the solution it must hold."""
    import doctest

    from benchmarks.common import solution_namespace

    namespace = solution_namespace(name)
    for exercise in manifests.assignment(name).exercises:
        obj = namespace[exercise.callable]
        assert obj.__doc__ and ">>>" in obj.__doc__, f"{exercise.callable} needs a worked example"
        runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
        for test in doctest.DocTestFinder(recurse=False).find(obj, exercise.callable, globs=dict(namespace)):
            runner.run(test)
        assert runner.failures == 0, f"the example in {exercise.callable}'s docstring is wrong"
