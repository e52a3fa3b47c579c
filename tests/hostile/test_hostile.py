"""A class of hostile and broken submissions (autograder.catalogue) graded by `grade-class`.

One batch (two workers) grades the whole catalogue once for this file: every submission gets its
expected status, none earns more than the honest one, the batch completes with exit status 0, and
the records, feedback, grades.csv and nbgrader gradebook all agree.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from autograder import manifests

import catalogue

from conftest import ROOT

SECRET = "catalogue test secret"
PICKLE_MARKER = Path("/tmp/course-pickle-was-loaded")
HIDDEN = [case.name for ex in manifests.assignment("01_attention").exercises for case in ex.cases if case.hidden]


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    base = tmp_path_factory.mktemp("catalogue")
    for marker in (PICKLE_MARKER, Path(catalogue.LEFTOVER), Path(catalogue.DAEMON)):
        marker.unlink(missing_ok=True)
    entries = catalogue.build(base / "submitted")
    out = base / "out"
    limits = catalogue.LIMITS
    env = {**os.environ, "AUTOGRADER_SECRET": SECRET}
    result = subprocess.run(
        [sys.executable, "-m", "autograder", "grade-class", str(base / "submitted"), "--assignment", "01_attention",
         "--out", str(out), "--workers", "2", "--timeout", str(limits.total_timeout),
         "--cell-timeout", str(limits.cell_timeout), "--memory-gb", str(limits.memory_bytes / 1024**3)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    records = {p.parent.name: json.loads(p.read_text()) for p in out.glob("*/01_attention.json")}
    return {"base": base, "out": out, "entries": entries, "result": result, "records": records}


def test_the_batch_completes_and_exits_zero(graded):
    assert graded["result"].returncode == 0, graded["result"].stderr[-3000:]
    assert set(graded["records"]) == {e.student for e in graded["entries"]}


def test_every_submission_gets_its_status_and_no_more_than_honest_work(graded):
    rows = catalogue.check(graded["entries"], graded["records"])
    assert graded["records"]["honest"]["score"] == 10
    assert [r for r in rows if not r["ok"]] == []
    assert not any(r["above_honest"] for r in rows)
    assert not PICKLE_MARKER.exists(), "the grader unpickled a learner's file"
    assert not Path(catalogue.LEFTOVER).exists(), "a file the sandbox left in /tmp was not removed"
    assert not Path(catalogue.DAEMON).exists(), "a process of the sandbox outlived its notebook"


def test_feedback_is_small_and_never_shows_hidden_cases(graded):
    for student in graded["records"]:
        for suffix in (".md", ".html", ".json"):
            path = graded["out"] / student / f"01_attention{suffix}"
            assert path.exists() and path.stat().st_size < 64 * 1024, path
            text = path.read_text(encoding="utf-8")
            assert SECRET not in text
            for case in HIDDEN:
                assert f"case '{case}'" not in text, (path, case)


def test_grades_csv_and_the_nbgrader_gradebook_agree_with_the_records(graded, tmp_path):
    with open(graded["out"] / "grades.csv", encoding="utf-8") as handle:
        rows = {row["student"]: row for row in csv.DictReader(handle)}
    assert {s: float(r["score"]) for s, r in rows.items()} == {s: r["score"] for s, r in graded["records"].items()}
    exported = tmp_path / "export.csv"
    bin_dir = str(Path(sys.executable).parent)
    result = subprocess.run([str(Path(bin_dir) / "nbgrader"), "export", f"--db=sqlite:///{graded['out'] / 'gradebook.db'}",
                             f"--to={exported}"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")})
    assert result.returncode == 0, result.stderr[-2000:]
    with open(exported, encoding="utf-8") as handle:
        scores = {row["student_id"]: (float(row["score"]), float(row["max_score"])) for row in csv.DictReader(handle)}
    assert scores == {s: (r["score"], 10.0) for s, r in graded["records"].items()}


def test_a_second_run_resumes_and_regrades_only_what_changed(graded):
    changed = graded["base"] / "submitted" / "corrupt_json" / "01_attention" / "01_attention.ipynb"
    changed.write_bytes(b'{"nbformat": 3, "nbformat_minor": 0, "metadata": {}, "worksheets": []}')
    result = subprocess.run(
        [sys.executable, "-m", "autograder", "grade-class", str(graded["base"] / "submitted"), "--assignment",
         "01_attention", "--out", str(graded["out"])], cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "AUTOGRADER_SECRET": SECRET})
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"{len(graded['entries']) - 1} unchanged since graded, 1 to grade" in result.stdout
    record = json.loads((graded["out"] / "corrupt_json" / "01_attention.json").read_text())
    assert record["status"] == "invalid" and "version 3" in record["message"]
