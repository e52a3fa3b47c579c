"""`make progress`: how far a learner is, notebook by exercise, graded as the instructor would.

    python -m autograder.progress [--notebooks notebooks] [--build build] [--force]

Each notebook of ``notebooks/`` is graded by :func:`autograder.grade.grade_notebook`, exactly as
`make grade` does (a fresh sandboxed kernel, ``FAST=True``, public and hidden cases). The result is
one table, notebook by exercise: the score, what is done, what fails and what to do next, printed
and written to ``build/progress.html``, followed by the one next thing to do.

Grading takes seconds per notebook, so a notebook whose bytes and grader are unchanged since its
last grade is not graded again: its record is kept in ``build/progress/cache.json`` with the time it
took, which is also how the command says, before it starts, how long it will take.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import textwrap
import time
from pathlib import Path

from . import manifests
from .grade import grade_notebook, where
from .report import MARK, html_page, points, table
from .spec import hidden_secret

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path("progress") / "cache.json"
# Seconds to grade one notebook on a 2-core laptop, until this machine has measured its own
# (the solutions grade in 10-15 s on an idle 2-core machine; a loaded one takes two to three times that).
ESTIMATE_S = {"00_setup": 20, "01_attention": 20, "02_transformer": 20, "03_tokenization": 25, "04_pretraining": 25}
DEFAULT_ESTIMATE_S = 30
WIDTH = 64  # characters of "what fails / next" in the terminal (build/progress.html has it all)
HEADERS = ["notebook", "exercise", "score", "status", "what fails / next"]


def grader_fingerprint() -> str:
    """What a grade depends on besides the notebook: the grader's and the course's code, the pins and
    the hidden-case secret. A course update (`git pull`, `make setup`) grades everything again."""
    digest = hashlib.sha256()
    for path in sorted([*(ROOT / "autograder").rglob("*.py"), *(ROOT / "utils").rglob("*.py"),
                        ROOT / "pyproject.toml", ROOT / "requirements-assets.txt"]):
        if path.is_file() and path != Path(__file__).resolve():  # this table's code changes no grade
            digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    digest.update(hashlib.sha256(hidden_secret().encode()).digest())
    digest.update(sys.version.encode())
    return digest.hexdigest()[:32]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) and isinstance(data.get("notebooks"), dict) else {"notebooks": {}}
    except (OSError, ValueError):
        return {"notebooks": {}}


def estimate(names: list[str], cache: dict) -> tuple[float, bool]:
    """Seconds to grade ``names``, and whether every figure was measured here before."""
    measured = {n: cache["notebooks"].get(n, {}).get("seconds") for n in names}
    total = sum(m if isinstance(m, (int, float)) else ESTIMATE_S.get(n, DEFAULT_ESTIMATE_S) for n, m in measured.items())
    return total, all(isinstance(m, (int, float)) for m in measured.values())


def duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def exercise_row(result: dict | None) -> tuple[str, str, str]:
    """(score, status, what fails / next) for one exercise's result in a record."""
    if result is None:
        return "", "? not graded", "the grader has no result for it"
    score = f"{points(result['score'])}/{points(result['max_score'])}"
    status, message = result["status"], " ".join(result.get("message", "").split())
    if status == "passed":
        return score, f"{MARK['passed']} done", ""
    if status == "missing" and message.startswith("not implemented"):
        return score, f"{MARK['missing']} not started", "replace `raise NotImplementedError()` with your code"
    counted = re.match(r"(\d+)/(\d+) cases passed\. ", message)
    label = f"{counted.group(1)}/{counted.group(2)} cases pass" if counted else status
    return score, f"{MARK.get(status, '?')} {label}", message[counted.end():] if counted else message


def rows_for(name: str, record: dict | None) -> list[list[str]]:
    """The table's rows for one notebook: a total row, then one row per exercise."""
    spec = manifests.assignment(name)
    if record is None:
        return [[name, "(notebook)", f"0/{points(spec.max_score)}", "· missing",
                 f"notebooks/{name}.ipynb is not there: `git checkout notebooks/{name}.ipynb` restores it"]]
    results = {e["id"]: e for e in record.get("exercises", [])}
    done = sum(1 for e in spec.exercises if results.get(e.id, {}).get("status") == "passed")
    total_note = "" if record["status"] == "graded" else f"not graded ({record['status']}): {record.get('message', '')}"
    if record["status"] == "graded" and record.get("cell_errors"):
        first = record["cell_errors"][0]
        total_note = f"a cell raised an error: {where(first)}: {first['error']}"
    rows = [[name, f"({done} of {len(spec.exercises)} done)", f"{points(record['score'])}/{points(record['max_score'])}",
             "", total_note]]
    for exercise in spec.exercises:
        rows.append(["", exercise.callable, *exercise_row(results.get(exercise.id))])
    return rows


def next_step(names: list[str], records: dict[str, dict | None]) -> str:
    """The one next thing to do: the first exercise, in course order, that is not done."""
    for name in names:
        record = records.get(name)
        if record is None:
            return f"{name}: restore the notebook (`git checkout notebooks/{name}.ipynb`)."
        if record["status"] != "graded":
            return f"{name}: the grader could not run it ({record['status']}): {record.get('message', '')}"
        results = {e["id"]: e for e in record.get("exercises", [])}
        for exercise in manifests.assignment(name).exercises:
            result = results.get(exercise.id)
            if result and result["status"] != "passed":
                verb = "write" if exercise_row(result)[1].endswith("not started") else "fix"
                return f"{name}: {verb} `{exercise.callable}`: {exercise_row(result)[2]}"
    return "every exercise passes, hidden cases included. Compare with solutions/ and read the Going further sections."


def terse(text: str, width: int = WIDTH) -> str:
    """A "what fails / next" for the terminal: the hint when there is one (it says the most), on one line."""
    text = " ".join(text.split())
    if "Hint: " in text:
        text = text[text.index("Hint: "):]
    return text if len(text) <= width else text[: width - 1] + "…"


def progress(notebooks: Path, build: Path, force: bool = False, log=print) -> dict[str, dict | None]:
    """Grade what changed, print the table, write ``build/progress.html``; returns the records."""
    names = sorted(manifests.ASSIGNMENTS)
    cache_path = build / CACHE
    cache = load_cache(cache_path)
    grader = grader_fingerprint()
    todo, records = [], {}
    for name in names:
        path = notebooks / f"{name}.ipynb"
        if not path.is_file():
            records[name] = None
            continue
        entry = cache["notebooks"].get(name, {})
        if not force and entry.get("sha256") == sha256(path) and entry.get("grader") == grader and entry.get("record"):
            records[name] = entry["record"]
        else:
            todo.append(name)
    kept = [n for n in names if n not in todo and records.get(n) is not None]
    if todo:
        seconds, measured = estimate(todo, cache)
        log(f"Grading {len(todo)} notebook(s) as the instructor would (fresh kernel, FAST=True, hidden cases): "
            f"{', '.join(todo)}. This takes about {duration(seconds)} "
            f"({'as measured here last time' if measured else 'an estimate: this machine has not graded them yet'}).")
    if kept:
        log(f"Unchanged since their last grade, not graded again: {', '.join(kept)}.")
    for name in todo:
        path = notebooks / f"{name}.ipynb"
        digest = sha256(path)
        start = time.perf_counter()
        record = grade_notebook(path, assignment=name)
        log(f"  {name}: {points(record['score'])}/{points(record['max_score'])} in {time.perf_counter() - start:.0f} s")
        records[name] = record
        cache["notebooks"][name] = {"sha256": digest, "grader": grader, "seconds": record["seconds"], "record": record}
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        cache_path.write_text(json.dumps(cache, indent=1), encoding="utf-8")  # after each: an interrupted run keeps them

    rows = [row for name in names for row in rows_for(name, records.get(name))]
    log("")
    log(table(HEADERS, [[*row[:4], terse(row[4])] for row in rows]))
    total = sum(r["score"] for r in records.values() if r)
    maximum = sum(manifests.assignment(n).max_score for n in names)
    step = next_step(names, records)
    log("")
    log(f"Total: {points(total)}/{points(maximum)}.")
    log(textwrap.fill(f"Next: {step}", width=100, subsequent_indent="      "))
    build.mkdir(parents=True, exist_ok=True)
    page = html_page("Your progress", [("h1", "Your progress"), ("table", (HEADERS, rows)),
                                       ("p", f"Total: {points(total)}/{points(maximum)}."), ("p", f"Next: {step}")])
    (build / "progress.html").write_text(page, encoding="utf-8")
    log(f"(also in {build / 'progress.html'})")
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autograder.progress", description=__doc__.split("\n\n")[0])
    parser.add_argument("--notebooks", default=str(ROOT / "notebooks"), help="your notebooks (default notebooks/)")
    parser.add_argument("--build", default=str(ROOT / "build"), help="where the table and the cache go (default build/)")
    parser.add_argument("--force", action="store_true", help="grade every notebook again, changed or not")
    args = parser.parse_args(argv)
    progress(Path(args.notebooks), Path(args.build), force=args.force)
    return 0  # grading completed: the scores are in the table, not in the exit status


if __name__ == "__main__":
    sys.exit(main())
