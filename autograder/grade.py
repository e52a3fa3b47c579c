"""Grade submissions: read, execute in the sandbox, score in this (trusted) process, report.

Every submission gets a record, whatever it contains::

    {"notebook": "01_attention", "submission": "<path>", "status": "graded|invalid|timeout|crashed",
     "score": 7.5, "max_score": 10, "seconds": 12.3, "message": "...",
     "exercises": [{"id": "attention.sdpa", "status": "passed|failed|error|missing",
                    "score": 2.5, "max_score": 3, "message": "..."}],
     "cell_errors": [{"cell": 7, "error": "NameError: name 'x' is not defined"}]}

Points come from the manifest in ``autograder/manifests``, never from the notebook's metadata.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import nbformat

from . import manifests
from .compare import ExerciseResult, clamp_score, grade_exercise
from .runner import Limits, cell_errors, run
from .spec import Assignment

FAST_PARAMETERS = {"FAST": True, "SEED": 0}
MAX_CELL_ERRORS = 20  # errors listed in a record (the feedback stays small whatever the notebook)


def identify(path: Path, assignment: str | None = None) -> Assignment:
    """Which notebook a submission answers: ``--assignment``, else its file name (``01_attention*.ipynb``)."""
    if assignment:
        return manifests.assignment(assignment)
    for name in sorted(manifests.ASSIGNMENTS, key=len, reverse=True):
        if path.stem == name or path.stem.startswith(name):
            return manifests.ASSIGNMENTS[name]
    known = ", ".join(sorted(manifests.ASSIGNMENTS))
    raise KeyError(f"cannot tell which notebook {path.name} answers: name it after one of {known}, "
                   "or pass --assignment NAME")


def read_notebook(path: Path) -> nbformat.NotebookNode:
    """A submission as an nbformat 4 notebook, or ``ValueError`` saying what is wrong with it."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read the file: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"the file is not UTF-8 text (byte {exc.start}): save it again from Jupyter") from None
    if not text.strip():
        raise ValueError("the file is empty: save the notebook from Jupyter and submit it again")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"the file is not valid notebook JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
                         "it may have been edited by hand or cut short") from None
    if not isinstance(data, dict) or "cells" not in data and "worksheets" not in data:
        raise ValueError("the file is JSON but not a Jupyter notebook (no cells)")
    major = data.get("nbformat")
    if major != 4:
        raise ValueError(f"the notebook is in format version {major}; the course needs version 4 "
                         "(open and save it in JupyterLab, or `jupyter nbconvert --to notebook`)")
    try:
        nb = nbformat.from_dict(data)
        nbformat.validate(nb)
    except Exception as exc:  # noqa: BLE001 - nbformat raises several kinds
        raise ValueError(f"the notebook does not follow the nbformat 4 schema: {str(exc).splitlines()[0][:300]}") from None
    if not any(cell.get("cell_type") == "code" for cell in nb.cells):
        raise ValueError("the notebook has no code cells")
    return nb


def _record(assignment_name: str, path: Path, status: str, seconds: float, message: str,
            exercises: list[ExerciseResult], max_score: float, errors: list | None = None) -> dict:
    score = clamp_score(sum(e.score for e in exercises), max_score)
    record = {
        "notebook": assignment_name,
        "submission": str(path),
        "status": status,
        "score": round(score, 4),
        "max_score": max_score,
        "seconds": round(seconds, 2),
        "message": message[:1000],
        "exercises": [e.public_dict() for e in exercises],
    }
    if errors:
        record["cell_errors"] = errors[:MAX_CELL_ERRORS]
        if len(errors) > MAX_CELL_ERRORS:
            record["cell_errors"].append({"cell": errors[MAX_CELL_ERRORS]["cell"],
                                          "error": f"... and {len(errors) - MAX_CELL_ERRORS} more errors"})
    return record


def _zero(assignment: Assignment, status: str, message: str) -> list[ExerciseResult]:
    return [ExerciseResult(ex.id, status, 0.0, float(ex.points), message) for ex in assignment.exercises]


def grade_notebook(path: str | Path, assignment: str | None = None, limits: Limits | None = None,
                   keep_executed: Path | None = None, parameters: dict | None = None) -> dict:
    """Grade one submission and return its record; never raises for anything the file contains."""
    path = Path(path)
    start = time.perf_counter()
    limits = limits or Limits()
    try:
        spec = identify(path, assignment)
    except KeyError as exc:
        return _record(assignment or path.stem, path, "invalid", time.perf_counter() - start, str(exc.args[0]), [], 0.0)
    try:
        nb = read_notebook(path)
    except ValueError as exc:
        message = str(exc)
        return _record(spec.notebook, path, "invalid", time.perf_counter() - start, message,
                       _zero(spec, "missing", "not graded: " + message), spec.max_score)

    try:
        execution = run(nb, spec, limits, parameters=FAST_PARAMETERS if parameters is None else parameters,
                        keep_executed=keep_executed)
    except Exception as exc:  # noqa: BLE001 - the grader's own failure must not end a batch either
        message = f"the grader could not run this submission ({type(exc).__name__}: {exc}); tell the instructor"
        return _record(spec.notebook, path, "crashed", time.perf_counter() - start, message,
                       _zero(spec, "error", "not graded: " + message), spec.max_score)
    errors = cell_errors(execution.notebook) if execution.notebook is not None else []
    seconds = time.perf_counter() - start
    if execution.status != "completed":
        message = execution.message
        if errors:
            message += f"; the first error was in code cell {errors[0]['cell']}: {errors[0]['error']}"
        status = "timeout" if execution.status == "timeout" else "crashed"
        return _record(spec.notebook, path, status, seconds, message,
                       _zero(spec, "error", "not graded: " + execution.message), spec.max_score, errors)

    results = [grade_exercise(ex, execution.report.get(ex.id), execution.arrays) for ex in spec.exercises]
    message = "" if not errors else (f"{len(errors)} cell(s) raised an error; the first was code cell "
                                     f"{errors[0]['cell']}: {errors[0]['error']}")
    return _record(spec.notebook, path, "graded", seconds, message, results, spec.max_score, errors)


def write_record(record: dict, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{Path(record['submission']).stem}.json"
    target.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return target
