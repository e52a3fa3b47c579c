"""grade-class machinery: discovery, a dying worker, a dask cluster, the sandbox's own guards."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from autograder import classgrade, manifests
from autograder.compare import grade_exercise
from autograder.runner import Limits, _read_capture, hidden_paths, sandbox

from conftest import ROOT, solution_code_cells, tiny_notebook


def _class(tmp_path, students: dict[str, list[str] | bytes]):
    for student, content in students.items():
        folder = tmp_path / "submitted" / student / "01_attention"
        folder.mkdir(parents=True)
        if isinstance(content, bytes):
            (folder / "01_attention.ipynb").write_bytes(content)
        else:
            tiny_notebook(folder, "01_attention", *content)
    return tmp_path / "submitted"


def test_discover_reads_nbgrader_layout(tmp_path):
    submitted = _class(tmp_path, {"ann": b"{}", "bob": b"{}"})
    (submitted / "carl" / "01_attention").mkdir(parents=True)
    (submitted / "carl" / "01_attention" / "mine.ipynb").write_text("{}")
    (submitted / "dora" / "01_attention").mkdir(parents=True)
    (submitted / "eve" / "00_setup").mkdir(parents=True)  # another assignment: not this batch
    jobs = {job.student: job for job in classgrade.discover(submitted, "01_attention")}
    assert sorted(jobs) == ["ann", "bob", "carl", "dora"]
    assert jobs["carl"].path.endswith("mine.ipynb") and "expected 01_attention.ipynb" in jobs["carl"].note
    assert jobs["dora"].path == "" and "no 01_attention.ipynb" in jobs["dora"].note
    assert jobs["ann"].sha256 == jobs["bob"].sha256 != ""


def _dies_on_bob(job, limits):
    if job.student == "bob":
        os._exit(9)  # the worker process dies, as under the OOM killer
    return classgrade.grade_job(job, limits)


def test_a_dying_worker_costs_only_its_own_submission(tmp_path):
    submitted = _class(tmp_path, {"ann": b"{", "bob": b"{", "cid": b"[]"})
    done = {}
    classgrade.run_jobs(classgrade.discover(submitted, "01_attention"), Limits(), 2, None,
                        lambda job, record: done.__setitem__(job.student, record), fn=_dies_on_bob)
    assert done["ann"]["status"] == done["cid"]["status"] == "invalid"
    assert done["bob"]["status"] == "crashed" and "worker process died" in done["bob"]["message"]


def test_grade_class_on_a_dask_local_cluster(tmp_path):
    distributed = pytest.importorskip("distributed")
    honest = solution_code_cells("01_attention")
    submitted = _class(tmp_path, {"ann": honest, "bob": ["import os\nos._exit(1)"], "cid": b"not json"})
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        summary = classgrade.grade_class(submitted, "01_attention", tmp_path / "out", dask_scheduler=cluster.scheduler_address,
                                         limits=Limits(total_timeout=240), log=lambda line: None)
    assert summary["statuses"] == {"graded": 1, "crashed": 1, "invalid": 1}
    records = {s: json.loads((tmp_path / "out" / s / "01_attention.json").read_text()) for s in ("ann", "bob", "cid")}
    assert records["ann"]["score"] == 10 and records["bob"]["score"] == records["cid"]["score"] == 0
    assert (tmp_path / "out" / "grades.csv").exists() and (tmp_path / "out" / "gradebook.db").exists()


def test_the_sandbox_reports_what_it_uses():
    box = sandbox()
    described = box.describe()
    assert set(described) == {"user", "network", "files", "fallbacks"}
    if os.geteuid() == 0 and box.mount_namespace:
        hidden = hidden_paths(("/some/class",))
        assert str(ROOT / "solutions") in hidden and str(ROOT) not in hidden


def test_capture_files_need_this_runs_nonce_and_no_links(tmp_path):
    prefix = tmp_path / "capture"
    (tmp_path / "capture.json").write_text(json.dumps({"__nonce__": "abc", "attention.causal_mask": {"cases": {}}}))
    np.savez(tmp_path / "capture.npz", x=np.zeros(2))
    assert _read_capture(prefix, "abc")[0] == {"attention.causal_mask": {"cases": {}}}
    assert _read_capture(prefix, "other")[0] is None  # a file a learner's cell left behind
    np.savez(tmp_path / "capture.npz", x=np.array([{"a": 1}], dtype=object))
    assert _read_capture(prefix, "abc")[0] is None  # object arrays would need unpickling: refused
    (tmp_path / "capture.json").unlink()
    (tmp_path / "capture.json").symlink_to("/etc/hostname")
    assert _read_capture(prefix, "abc")[0] is None


def test_hidden_case_errors_show_only_the_exception_type():
    exercise = manifests.exercise("attention.causal_mask")
    report = {"cases": {case.name: {"status": "error", "message": f"ValueError: inputs were {case.params}"}
                        for case in exercise.cases}}
    result = grade_exercise(exercise, report, {})
    for case in result.cases:
        if case.hidden:
            assert case.message.endswith("raised ValueError") and "inputs were" not in case.message


def test_resume_skips_unchanged_submissions_and_keeps_the_fingerprint_out_of_records(tmp_path):
    submitted = _class(tmp_path, {"ann": b"{", "bob": b"[]"})
    out = tmp_path / "out"
    lines = []
    classgrade.grade_class(submitted, "01_attention", out, workers=1, log=lines.append)
    assert any("0 unchanged since graded, 2 to grade" in l for l in lines), lines
    record = json.loads((out / "ann" / "01_attention.json").read_text())
    assert "grader" not in record and record["sha256"]
    (submitted / "bob" / "01_attention" / "01_attention.ipynb").write_bytes(b"")
    lines.clear()
    classgrade.grade_class(submitted, "01_attention", out, workers=1, log=lines.append)
    assert any("1 unchanged since graded, 1 to grade" in l for l in lines), lines
    assert "empty" in json.loads((out / "bob" / "01_attention.json").read_text())["message"]
    lines.clear()
    classgrade.grade_class(submitted, "01_attention", out, workers=1, force=True, log=lines.append)
    assert any("0 unchanged since graded, 2 to grade" in l for l in lines), lines
