"""Throughput: our grade-class (full sandbox) against `nbgrader autograde` on the same class of notebook 01.

The class is ``benchmarks/grading_class.py``'s 40 submissions (10 exact copies of the solution, 10
with unscaled attention, 10 with a failing cell in the middle, 10 untouched student releases), as
students hand them in (``FAST = False``). Baseline: nbgrader 0.9.6's ``autograde`` in a real nbgrader
course directory (``source/`` from ``solutions/``, ``generate_assignment``, then ``submitted/``),
which executes each notebook as submitted, in the grader's own process tree, one after another,
with no sandbox. Value: ``grade-class`` with 2 workers, bubblewrap, a fresh uid and a cgroup per
run, FAST=True and hidden cases, each run's executor forked with its imports done into its fresh
sandbox (``autograder/zygote.py``). Throughput is submissions per minute; target: ours >= 2x
nbgrader's, and identical scores on the honest submissions. For comparison, the same class graded
by ``grade-class --cold`` (every executor and kernel started from scratch, importing torch and
transformers itself) in the same run.
"""
from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from autograder.classgrade import grade_class
from autograder.release import venv_env
from autograder.sandbox import Limits

from .common import ROOT
from .grading_class import _records, build

CONFIG = {"submissions": 40, "workers": 2, "nbgrader": "0.9.6 autograde, Execute.timeout=600", "target_ratio": 2.0,
          "start": "warm (autograder/zygote.py); cold measured beside it"}


def _nbgrader_course(base: Path, submitted: Path) -> Path:
    course = base / "course"
    (course / "source" / "01_attention").mkdir(parents=True)
    shutil.copyfile(ROOT / "solutions" / "01_attention.ipynb", course / "source" / "01_attention" / "01_attention.ipynb")
    shutil.copytree(submitted, course / "submitted")
    return course


def _nbgrader(course: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "nbgrader", *args, f"--CourseDirectory.root={course}",
               f"--CourseDirectory.db_url=sqlite:///{course}/gradebook.db", "--log-level=WARN"]
    return subprocess.run(command, cwd=course, capture_output=True, text=True, env=venv_env())


def _nbgrader_scores(course: Path) -> dict[str, float]:
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course}/gradebook.db") as gb:
        return {s.student_id: float(s.score) for s in gb.assignment_submissions("01_attention")}


def run() -> dict:
    os.environ.setdefault("AUTOGRADER_SECRET", secrets.token_hex(16))  # grade-class refuses the public one
    with tempfile.TemporaryDirectory(prefix="bench-vs-nbgrader-") as tmp:
        base = Path(tmp)
        build(base / "submitted")
        course = _nbgrader_course(base, base / "submitted")
        done = _nbgrader(course, "generate_assignment", "01_attention", "--force")
        if done.returncode != 0:
            raise RuntimeError(done.stdout[-2000:] + done.stderr[-2000:])
        start = time.perf_counter()
        done = _nbgrader(course, "autograde", "01_attention", "--force", "--Execute.timeout=600")
        theirs_seconds = time.perf_counter() - start
        theirs = _nbgrader_scores(course)
        start = time.perf_counter()
        grade_class(base / "submitted", "01_attention", base / "ours", workers=CONFIG["workers"], log=lambda line: None)
        ours_seconds = time.perf_counter() - start
        records = _records(base / "ours")
        ours = {student: record["score"] for student, record in records.items()}
        starts = sorted({str(record["sandbox"].get("start", "cold"))[:4] for record in records.values()})
        start = time.perf_counter()
        grade_class(base / "submitted", "01_attention", base / "cold", workers=CONFIG["workers"],
                    limits=Limits(warm=False), log=lambda line: None)
        cold_seconds = time.perf_counter() - start
        cold = {student: record["score"] for student, record in _records(base / "cold").items()}
    n = CONFIG["submissions"]
    ours_rate, theirs_rate = 60 * n / ours_seconds, 60 * n / theirs_seconds
    honest = sorted(s for s in ours if s.startswith("ref"))
    same_honest = bool(honest) and all(ours[s] == theirs.get(s) for s in honest)
    ratio = ours_rate / theirs_rate
    return {
        "metric": "submissions graded per minute, grade-class (sandboxed, 2 workers)", "unit": "submissions/min",
        "value": ours_rate, "baseline": "nbgrader autograde (no sandbox, sequential)", "baseline_value": theirs_rate,
        "config": CONFIG, "ours_seconds": round(ours_seconds, 1), "nbgrader_seconds": round(theirs_seconds, 1),
        "ours_starts": starts, "ours_cold_seconds": round(cold_seconds, 1),
        "cold_throughput_ratio": round(theirs_seconds / cold_seconds, 2), "cold_scores_same": cold == ours,
        "nbgrader_exit": done.returncode, "scores_ours": ours, "scores_nbgrader": theirs,
        "identical_scores_on_honest": same_honest,
        "targets": {"grading_vs_nbgrader.throughput_ratio": {"value": round(ratio, 2), "target": CONFIG["target_ratio"],
                                                             "met": ratio >= CONFIG["target_ratio"] and same_honest}},
    }
