"""Grade submissions: read, execute in the sandbox, score in this (trusted) process, report.

Every submission gets a record, whatever it contains, and grading never raises::

    {"notebook": "01_attention", "submission": "<path>", "status": "graded|invalid|timeout|crashed",
     "score": 7.5, "max_score": 10, "seconds": 12.3, "message": "...",
     "exercises": [{"id": "attention.sdpa", "status": "passed|failed|error|missing",
                    "score": 2.5, "max_score": 3, "message": "..."}],
     "cell_errors": [{"cell": 7, "first_line": "def causal_mask(T):", "error": "NameError: ..."}],
     "flags": [{"exercise": "attention.sdpa", "flag": "..."}],
     "sandbox": {...what isolation applied...}}

Points come from the manifest in ``autograder/manifests``, never from the notebook's metadata.
Everything in a record that came from the submission is untrusted text: :mod:`autograder.report`
escapes it wherever it is shown.
"""
from __future__ import annotations

import ast
import json
import os
import stat
import time
from pathlib import Path

import nbformat

from . import manifests
from .capture import read_capture
from .compare import ExerciseResult, clamp_score, grade_exercise
from .execute import run
from .sandbox import Limits
from .spec import Assignment

FAST_PARAMETERS = {"FAST": True, "SEED": 0}
MAX_CELL_ERRORS = 20            # errors listed in a record (the feedback stays small whatever the notebook)
MAX_SUBMISSION = 64 * 1024 ** 2  # bytes of a submitted notebook
MAX_CELLS = 5_000               # cells of a submitted notebook


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


def read_bytes(path: Path, limit: int = MAX_SUBMISSION) -> bytes:
    """A submitted file's bytes: a regular file, not a link, at most ``limit`` bytes (else ``ValueError``)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        if os.path.islink(path):
            raise ValueError("the submission is a link, not a file: submit the notebook itself") from None
        raise ValueError(f"cannot read the file: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError("the submission is not a regular file")
        if info.st_size > limit:
            raise ValueError(f"the file is {info.st_size / 1024 ** 2:.0f} MiB; a notebook may be at most "
                             f"{limit / 1024 ** 2:.0f} MiB (clear the outputs and save it again)")
        with os.fdopen(fd, "rb", closefd=False) as handle:
            return handle.read(limit + 1)[:limit]
    finally:
        os.close(fd)


def read_notebook(path: Path) -> nbformat.NotebookNode:
    """A submission as an nbformat 4 notebook, or ``ValueError`` saying what is wrong with it."""
    raw = read_bytes(Path(path))
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
    except RecursionError:
        raise ValueError("the file's JSON is nested far too deeply to be a notebook") from None
    if not isinstance(data, dict) or "cells" not in data and "worksheets" not in data:
        raise ValueError("the file is JSON but not a Jupyter notebook (no cells)")
    major = data.get("nbformat")
    if major != 4:
        raise ValueError(f"the notebook is in format version {str(major)[:20]}; the course needs version 4 "
                         "(open and save it in JupyterLab, or `jupyter nbconvert --to notebook`)")
    if not isinstance(data.get("cells"), list) or len(data["cells"]) > MAX_CELLS:
        raise ValueError(f"the notebook must have a list of at most {MAX_CELLS} cells")
    try:
        nb = nbformat.reads(text, as_version=4)   # joins the cells' lines, as Jupyter does
        nbformat.validate(nb)
    except RecursionError:
        raise ValueError("the notebook is nested far too deeply") from None
    except Exception as exc:  # noqa: BLE001 - nbformat raises several kinds
        raise ValueError(f"the notebook does not follow the nbformat 4 schema: {str(exc).splitlines()[0][:300]}") from None
    if not any(cell.get("cell_type") == "code" for cell in nb.cells):
        raise ValueError("the notebook has no code cells")
    return nb


# --------------------------------------------------------------------------- flags for the instructor


def _parse(source: str):
    """A code cell's syntax tree, IPython magics and shell lines blanked; ``None`` if it does not parse."""
    lines = ["" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines()]
    try:
        return ast.parse("\n".join(lines))
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None


def flags(nb: nbformat.NotebookNode, assignment: Assignment) -> list[dict]:
    """What an instructor should look at, found in the submitted source (nothing here changes a score):
    an exercise whose definition calls the library it is checked against (``F.scaled_dot_product_attention``
    inside ``scaled_dot_product_attention``). The learner may have let the library do the exercise;
    the instructor decides. (Importing the course's answers needs no flag: the sandbox leaves them out.)
    """
    trees = [tree for cell in nb.cells if cell.cell_type == "code" for tree in [_parse(cell.source)] if tree]
    imported = {(alias.asname or alias.name).split(".")[0] for tree in trees for node in ast.walk(tree)
                if isinstance(node, (ast.Import, ast.ImportFrom)) for alias in node.names}
    found = []
    for ex in assignment.exercises:
        if not ex.library:
            continue
        for tree in trees:
            for node in ast.walk(tree):
                if not isinstance(node, (ast.FunctionDef, ast.ClassDef)) or node.name != ex.callable:
                    continue
                used = sorted({n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute) and n.attr in ex.library}
                              | {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and n.id in ex.library
                                 and n.id in imported})
                if used:
                    found.append({"exercise": ex.id, "flag": f"`{ex.callable}` calls {', '.join(used)}, what the "
                                  "grader checks it against: the library may be doing the exercise"})
    unique = []
    for item in found:
        if item not in unique:
            unique.append(item)
    return unique[:20]


# --------------------------------------------------------------------------- records


def _record(assignment_name: str, path: Path, status: str, seconds: float, message: str,
            exercises: list[ExerciseResult], max_score: float, errors: list | None = None,
            more_errors: int = 0, found_flags: list | None = None, sandbox: dict | None = None,
            timing: dict | None = None) -> dict:
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
        more = more_errors + max(0, len(errors) - MAX_CELL_ERRORS)
        if more:
            record["cell_errors"].append({"cell": 0, "first_line": "", "error": f"... and {more} more errors"})
    if found_flags:
        record["flags"] = found_flags
    if sandbox:
        record["sandbox"] = sandbox
    if timing:
        record["timing"] = timing
    return record


def _zero(assignment: Assignment, status: str, message: str) -> list[ExerciseResult]:
    return [ExerciseResult(ex.id, status, 0.0, float(ex.points), message) for ex in assignment.exercises]


def _clean_errors(errors) -> list[dict]:
    """The executor's list of the learner's cell errors, with types and lengths checked."""
    clean = []
    for item in errors if isinstance(errors, list) else []:
        if isinstance(item, dict) and type(item.get("cell")) is int:
            clean.append({"cell": item["cell"], "first_line": str(item.get("first_line", ""))[:80],
                          "error": str(item.get("error", ""))[:300]})
    return clean[:MAX_CELL_ERRORS]


def where(error: dict) -> str:
    """A learner's failing cell, as they can find it: ``In [7] (`def causal_mask(T):`)``."""
    line = f" (`{error['first_line']}`)" if error.get("first_line") else ""
    return f"In [{error['cell']}]{line}"


def _merge(exercise, public: dict | None, hidden: dict | None) -> dict | None:
    """One exercise's report from the two phases' captures."""
    parts = [p.get(exercise.id) for p in (public, hidden) if isinstance(p, dict)]
    parts = [p for p in parts if isinstance(p, dict)]
    if not parts:
        return None
    if any(p.get("status") == "missing" for p in parts):
        return {"status": "missing"}
    cases = {}
    for part in parts:
        cases.update(part.get("cases", {}))
    return {"cases": cases}


def grade_notebook(path: str | Path, assignment: str | None = None, limits: Limits | None = None,
                   keep_executed: Path | None = None, parameters: dict | None = None,
                   exercises_only: bool = False) -> dict:
    """Grade one submission and return its record; never raises.

    ``exercises_only`` runs the setup cells and the exercise cells only (:func:`exercise_cells`): for the
    course's own stubs, never for a learner's work.
    """
    path = Path(path)
    start = time.perf_counter()
    try:
        return _grade(path, assignment, limits or Limits(), keep_executed, parameters, start, exercises_only)
    except Exception as exc:  # noqa: BLE001 - the grader's own failure must not end a batch either
        name = assignment or path.stem
        message = f"the grader could not grade this submission ({type(exc).__name__}: {str(exc)[:300]}); tell the instructor"
        try:
            spec = identify(path, assignment)
            return _record(spec.notebook, path, "crashed", time.perf_counter() - start, message,
                           _zero(spec, "error", "not graded: " + message), spec.max_score)
        except Exception:  # noqa: BLE001
            return _record(name, path, "crashed", time.perf_counter() - start, message, [], 0.0)


def exercise_cells(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The notebook cut to its setup (every cell before the first exercise) and its exercise cells.

    Why this is enough to grade the released stubs: nbgrader replaced each exercise body with
    ``raise NotImplementedError()``, so a graded callable raises on its first call whatever the demos
    between exercises computed, and the grader's cases come from the manifest, not the notebook. The
    demos then only cost time (models loaded, training run). That the cut release still defines every
    callable, and that each raises NotImplementedError, is what ``tests/test_notebooks.py`` checks; that
    the whole release runs top to bottom is checked by the Run All tests.
    """
    cells = nb.cells
    exercises = [i for i, cell in enumerate(cells) if cell.get("metadata", {}).get("nbgrader", {}).get("solution")]
    if not exercises:
        return nb
    cut = nbformat.from_dict(nb)
    cut.cells = [cell for i, cell in enumerate(cells)
                 if cell.get("cell_type") == "code" and (i < exercises[0] or i in exercises)]
    return cut


def _grade(path: Path, assignment: str | None, limits: Limits, keep_executed: Path | None, parameters: dict | None,
           start: float, exercises_only: bool = False) -> dict:
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
    found_flags = flags(nb, spec)
    if exercises_only:
        nb = exercise_cells(nb)
    execution = run(nb, spec, limits, parameters=FAST_PARAMETERS if parameters is None else parameters,
                    keep_executed=keep_executed)
    errors = _clean_errors(execution.errors)
    seconds = time.perf_counter() - start
    if execution.status != "completed":
        message = execution.message
        if errors:
            message += f"; the first error was in {where(errors[0])}: {errors[0]['error']}"
        status = "timeout" if execution.status == "timeout" else "crashed"
        return _record(spec.notebook, path, status, seconds, message,
                       _zero(spec, "error", "not graded: " + execution.message), spec.max_score, errors,
                       execution.more_errors, found_flags, execution.sandbox)

    phases = {}
    for phase, hidden in (("public", False), ("hidden", True)):
        expected = {ex.id: {c.name for c in ex.cases if c.hidden == hidden} for ex in spec.exercises}
        phases[phase] = read_capture(execution.captures.get(phase), execution.nonce, expected)
    if phases["public"][0] is None:
        message = ("the grader's cell for the public cases left no readable result (the notebook changed how "
                   "cells run, or wrote over the grader's file)")
        return _record(spec.notebook, path, "crashed", seconds, message, _zero(spec, "error", "not graded: " + message),
                       spec.max_score, errors, execution.more_errors, found_flags, execution.sandbox)
    report = {ex.id: _merge(ex, phases["public"][0], phases["hidden"][0]) for ex in spec.exercises}
    arrays = {**phases["public"][1], **phases["hidden"][1]}
    compare_start = time.perf_counter()
    results = [grade_exercise(ex, report.get(ex.id), arrays) for ex in spec.exercises]
    timing = {**execution.timing, "comparison": round(time.perf_counter() - compare_start, 2)}
    failing = {r.id for r in results if r.status != "passed"}
    callables = {ex.id: ex.callable for ex in spec.exercises}
    for ex, result in zip(spec.exercises, results):
        earlier = [callables[i] for i in ex.builds_on if i in failing]
        if result.status in ("failed", "error") and earlier:
            result.message += (f" Note: `{ex.callable}` runs your {', '.join(f'`{c}`' for c in earlier)}, which "
                               "fail(s) its own cases: fix that first, this may then pass too.")
        for flag in found_flags:
            if flag["exercise"] == ex.id:
                result.message += f" Flagged for the instructor: {flag['flag']}."
    message = "" if not errors else (f"{len(errors) + execution.more_errors} cell(s) raised an error; the first was "
                                     f"{where(errors[0])}: {errors[0]['error']}")
    return _record(spec.notebook, path, "graded", time.perf_counter() - start, message, results, spec.max_score,
                   errors, execution.more_errors, found_flags, execution.sandbox, timing)


def record_names(paths: list[Path]) -> dict[Path, str]:
    """A distinct file name for each submission's record: its stem, or, when stems collide
    (``alice/01_attention.ipynb`` and ``bob/01_attention.ipynb``), its path below the common folder.

    >>> sorted(record_names([Path("s/alice/01_attention.ipynb"), Path("s/bob/01_attention.ipynb")]).values())
    ['alice__01_attention', 'bob__01_attention']
    """
    stems = [p.stem for p in paths]
    if len(set(stems)) == len(stems):
        return {p: p.stem for p in paths}
    absolute = [p.absolute() for p in paths]
    common = Path(os.path.commonpath([str(p.parent) for p in absolute]))
    names = {}
    for original, full in zip(paths, absolute):
        relative = full.relative_to(common).with_suffix("")
        names[original] = "__".join(part for part in relative.parts if part not in ("", ".", ".."))
    seen: dict[str, int] = {}
    for original in paths:  # the same file given twice
        base = names[original]
        seen[base] = seen.get(base, 0) + 1
        if seen[base] > 1:
            names[original] = f"{base}__{seen[base]}"
    return names


def write_record(record: dict, out_dir: Path, name: str | None = None) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{name or Path(record['submission']).stem}.json"
    target.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return target
