"""A class of hostile and broken submissions (catalogue.py, beside this file) graded by `grade-class`.

One batch (two workers) grades the whole catalogue once for this file: every submission gets its
expected status, none earns more than the honest one, the batch completes with exit status 0, the
records, feedback, grades.csv and nbgrader gradebook all agree, nothing of one run is left on the
machine for the next, and no text of the feedback carries a hidden input or injected markup.

It needs the full sandbox (root and bubblewrap; .ci/run installs bubblewrap): without it the
catalogue would run unprotected on this machine, so the tests skip instead.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import catalogue
from autograder import manifests
from autograder.sandbox import UID_RANGE, isolation
from conftest import ROOT

pytestmark = pytest.mark.skipif(not isolation().complete,
                                reason="the hostile catalogue needs the full sandbox (root, bubblewrap, a cgroup): "
                                       + "; ".join(isolation().notes))

SECRET = "catalogue test secret"
PICKLE_MARKER = Path("/tmp/course-pickle-was-loaded")
HIDDEN = [case.name for ex in manifests.assignment("01_attention").exercises for case in ex.cases if case.hidden]


def _uids_alive(uids: set[int]) -> list[int]:
    """Processes of these uids still on the machine."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                uid = entry.stat().st_uid
            except OSError:
                continue
            if uid in uids:
                found.append(int(entry.name))
    return found


def _shm_keys() -> set[int]:
    try:
        lines = Path("/proc/sysvipc/shm").read_text().splitlines()[1:]
    except OSError:
        return set()
    return {int(line.split()[0]) for line in lines if line.split()}


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    base = tmp_path_factory.mktemp("catalogue")
    PICKLE_MARKER.unlink(missing_ok=True)
    Path(catalogue.LOCK_FILE).unlink(missing_ok=True)
    shutil.rmtree(catalogue.BACKUP, ignore_errors=True)
    shutil.copytree(ROOT / "solutions", Path(catalogue.BACKUP) / "solutions")   # "another clone" of the course
    Path(catalogue.HOST_SOCKET).unlink(missing_ok=True)
    server = socket.socket(socket.AF_UNIX)
    server.bind(catalogue.HOST_SOCKET)
    server.listen(4)
    server.settimeout(0.5)
    connections = []

    def accept():
        while not getattr(server, "closed", False):
            try:
                connections.append(server.accept())
            except OSError:
                if server.fileno() < 0:
                    return

    watcher = threading.Thread(target=accept, daemon=True)
    watcher.start()
    entries = catalogue.build(base / "submitted")
    out = base / "out"
    limits = catalogue.LIMITS
    env = {**os.environ, "AUTOGRADER_SECRET": SECRET}
    try:
        result = subprocess.run(
            [sys.executable, "-m", "autograder", "grade-class", str(base / "submitted"), "--assignment", "01_attention",
             "--out", str(out), "--workers", "2", "--timeout", str(limits.total_timeout),
             "--cell-timeout", str(limits.cell_timeout), "--memory-gb", str(limits.memory_bytes / 1024**3)],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    finally:
        server.close()
        shutil.rmtree(catalogue.BACKUP, ignore_errors=True)
        Path(catalogue.HOST_SOCKET).unlink(missing_ok=True)
    records = {p.parent.name: json.loads(p.read_text()) for p in (out / "students").glob("*/01_attention.json")}
    return {"base": base, "out": out, "entries": entries, "result": result, "records": records,
            "connections": connections}


def test_the_batch_completes_and_exits_zero(graded):
    assert graded["result"].returncode == 0, graded["result"].stderr[-3000:]
    assert set(graded["records"]) == {e.student for e in graded["entries"]}


def test_every_submission_gets_its_status_and_no_more_than_honest_work(graded):
    rows = catalogue.check(graded["entries"], graded["records"])
    assert graded["records"]["honest"]["score"] == 10
    assert [r for r in rows if not r["ok"]] == []
    assert not any(r["above_honest"] for r in rows)


def test_nothing_of_a_run_is_left_on_the_machine(graded):
    assert not PICKLE_MARKER.exists(), "the grader unpickled a learner's file"
    uids = {r["sandbox"]["uid"] for r in graded["records"].values() if "uid" in r.get("sandbox", {})}
    assert len(uids) >= 20 and all(UID_RANGE[0] <= uid < UID_RANGE[1] for uid in uids)
    assert _uids_alive(uids) == [], "a process of a sandbox outlived its run"
    assert catalogue.SHM_KEY not in _shm_keys(), "a SysV segment of a run is still there for the next one"
    assert not Path(catalogue.LOCK_FILE).exists()
    assert graded["connections"] == [], "a run reached a Unix socket of the host"
    for record in graded["records"].values():
        if record["status"] in ("graded", "crashed", "timeout") and "sandbox" in record:
            assert record["sandbox"]["complete"], record["sandbox"]
    memory = graded["records"]["memory_split"]["sandbox"]
    assert memory["memory_peak_bytes"] <= catalogue.LIMITS.memory_bytes, memory


def test_the_catalogue_ran_warm(graded):
    """The statuses above hold for warm starts (autograder/zygote.py), what grade-class uses: every
    submission that ran did so forked into its own sandbox, none fell back to a cold start."""
    ran = {s: r["sandbox"] for s, r in graded["records"].items() if r["status"] != "invalid" and "sandbox" in r}
    assert len(ran) >= 20
    assert [s for s, box in ran.items() if "start" not in box] == [], ran


def test_feedback_is_small_and_never_shows_hidden_cases_or_inputs(graded):
    os.environ["AUTOGRADER_SECRET"] = SECRET
    try:
        sdpa = manifests.exercise("attention.sdpa")
        hidden_values = [repr(round(float(x), 5)) for case in sdpa.cases if case.hidden
                         for x in np.asarray(sdpa.inputs(case)["q"]).flatten()[:3]]
    finally:
        del os.environ["AUTOGRADER_SECRET"]
    assert hidden_values  # what leaky_exceptions tries to carry out
    for student in graded["records"]:
        for suffix in (".md", ".html", ".json"):
            path = graded["out"] / "students" / student / f"01_attention{suffix}"
            assert path.exists() and path.stat().st_size < 64 * 1024, path
            text = path.read_text(encoding="utf-8")
            assert SECRET not in text
            for case in HIDDEN:
                assert f"case '{case}'" not in text, (path, case)
            if student == "leaky_exceptions":
                assert not [v for v in hidden_values if v in text], path


def test_injected_markup_stays_text(graded):
    folder = graded["out"] / "students" / "injector"
    markdown = (folder / "01_attention.md").read_text(encoding="utf-8")
    assert [line for line in markdown.splitlines() if line.startswith("# ")] == [markdown.splitlines()[0]]
    assert "<script>" not in markdown and "](http" not in markdown
    assert len([line for line in markdown.splitlines() if line.startswith("| ")]) == 1 + 4   # header, 4 exercises
    assert "<script>" not in (folder / "01_attention.html").read_text(encoding="utf-8")
    with open(graded["out"] / "grades.csv", encoding="utf-8") as handle:
        cells = [cell for row in csv.reader(handle) for cell in row]
    assert not [cell for cell in cells if cell[:1] in ("=", "+", "@")], "a CSV cell starts a formula"


def test_grades_csv_and_the_nbgrader_gradebook_agree_with_the_records(graded, tmp_path):
    with open(graded["out"] / "grades.csv", encoding="utf-8") as handle:
        rows = {row["student"].lstrip("'"): row for row in csv.DictReader(handle)}
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
    record = json.loads((graded["out"] / "students" / "corrupt_json" / "01_attention.json").read_text())
    assert record["status"] == "invalid" and "version 3" in record["message"]
