"""grade-class machinery: discovery (no links followed), a dying worker, a dask cluster, refusing to
grade without isolation or with the public secret, resume and its fingerprint."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from autograder import classgrade, manifests
from autograder.compare import grade_exercise
from autograder.sandbox import Limits, isolation

from conftest import ROOT, solution_code_cells, tiny_notebook

SECRET = "classgrade test secret"


@pytest.fixture(autouse=True)
def instructor_secret(monkeypatch):
    monkeypatch.setenv("AUTOGRADER_SECRET", SECRET)


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


def test_discover_never_follows_a_link(tmp_path):
    """A notebook, an assignment folder or a student folder that is a link (to the solutions, to a
    classmate's work) is not graded: the grader reads it as root, outside the sandbox."""
    submitted = _class(tmp_path, {"ann": b"{}"})
    solutions = ROOT / "solutions" / "01_attention.ipynb"
    (submitted / "mal" / "01_attention").mkdir(parents=True)
    (submitted / "mal" / "01_attention" / "01_attention.ipynb").symlink_to(solutions)
    (submitted / "mel" / "01_attention").mkdir(parents=True)
    (submitted / "mel" / "01_attention" / "renamed.ipynb").symlink_to(submitted / "ann" / "01_attention" / "01_attention.ipynb")
    (submitted / "mia").mkdir()
    (submitted / "mia" / "01_attention").symlink_to(submitted / "ann" / "01_attention")
    (submitted / "moe").symlink_to(submitted / "ann")
    jobs = {job.student: job for job in classgrade.discover(submitted, "01_attention")}
    for student in ("mal", "mel", "mia", "moe"):
        assert jobs[student].path == "" and "link" in jobs[student].note, (student, jobs[student])
    record = classgrade.grade_job(jobs["mal"], Limits())
    assert record["status"] == "invalid" and record["score"] == 0


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
    # A student folder named like the grader's own outputs collides with nothing.
    shutil.copytree(submitted / "cid", submitted / "gradebook.db")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        summary = classgrade.grade_class(submitted, "01_attention", tmp_path / "out", dask_scheduler=cluster.scheduler_address,
                                         limits=Limits(total_timeout=240), log=lambda line: None)
    assert summary["statuses"] == {"graded": 1, "crashed": 1, "invalid": 2}
    records = {s: json.loads((tmp_path / "out" / "students" / s / "01_attention.json").read_text())
               for s in ("ann", "bob", "cid", "gradebook.db")}
    assert records["ann"]["score"] == 10 and records["bob"]["score"] == records["cid"]["score"] == 0
    assert (tmp_path / "out" / "grades.csv").exists() and (tmp_path / "out" / "gradebook.db").is_file()


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("bwrap") is None, reason="needs root and bubblewrap")
def test_this_machine_gives_the_full_sandbox():
    """CI runs as root with bubblewrap (.ci/run installs it): every promise of autograder.sandbox holds."""
    box = isolation()
    assert box.complete, box.notes
    described = box.describe()
    assert described["complete"] and "fresh unprivileged uid" in described["user"]


def test_the_kernels_file_view_leaves_out_the_references_and_the_trusted_side():
    from autograder.sandbox import course_files

    files = {str(p.relative_to(ROOT)) for p in course_files(("utils.gpt",))}
    assert "utils/gpt.py" not in files and "utils/models.py" in files and "utils/attention.py" in files
    assert not [f for f in files if f.startswith("autograder/oracles") or "__pycache__" in f or f.endswith(".pyc")]
    assert not [f for f in files if f.startswith(("solutions", "notebooks", "tests", "build", ".git"))]
    assert "autograder/execute.py" in files and "autograder/capture.py" in files


def test_grade_class_refuses_without_isolation_or_with_the_public_secret(tmp_path, monkeypatch):
    from autograder import sandbox

    submitted = _class(tmp_path, {"ann": b"{"})
    incomplete = sandbox.Isolation(None, True, "", ("bubblewrap is not installed",))
    monkeypatch.setattr(classgrade, "isolation", lambda: incomplete)
    with pytest.raises(classgrade.Refused, match="bubblewrap is not installed"):
        classgrade.grade_class(submitted, "01_attention", tmp_path / "out", log=lambda line: None)
    assert not (tmp_path / "out" / "students").exists()
    summary = classgrade.grade_class(submitted, "01_attention", tmp_path / "out", log=lambda line: None, insecure=True)
    assert summary["insecure"] is True
    monkeypatch.delenv("AUTOGRADER_SECRET")
    with pytest.raises(classgrade.Refused, match="AUTOGRADER_SECRET"):
        classgrade.grade_class(submitted, "01_attention", tmp_path / "out2", log=lambda line: None, insecure=True)


def test_hidden_case_errors_show_only_a_builtin_exception_name():
    exercise = manifests.exercise("attention.causal_mask")
    for name, shown in (("ValueError", "raised ValueError"), ("inputs were 33 x 33", "raised an exception")):
        report = {"cases": {case.name: {"status": "error", "exception": name,
                                        "message": f"{name}: inputs were {case.params}"} for case in exercise.cases}}
        result = grade_exercise(exercise, report, {})
        for case in result.cases:
            if case.hidden:
                assert case.message.endswith(shown) and "inputs were" not in case.message, case.message


def test_resume_skips_unchanged_submissions_and_keeps_the_fingerprint_out_of_records(tmp_path):
    submitted = _class(tmp_path, {"ann": b"{", "bob": b"[]"})
    out = tmp_path / "out"
    lines = []
    classgrade.grade_class(submitted, "01_attention", out, workers=1, log=lines.append)
    assert any("0 unchanged since graded, 2 to grade" in line for line in lines), lines
    record = json.loads((out / "students" / "ann" / "01_attention.json").read_text())
    assert "grader" not in record and record["sha256"]
    (submitted / "bob" / "01_attention" / "01_attention.ipynb").write_bytes(b"")
    lines.clear()
    classgrade.grade_class(submitted, "01_attention", out, workers=1, log=lines.append)
    assert any("1 unchanged since graded, 1 to grade" in line for line in lines), lines
    assert "empty" in json.loads((out / "students" / "bob" / "01_attention.json").read_text())["message"]
    lines.clear()
    classgrade.grade_class(submitted, "01_attention", out, workers=1, force=True, log=lines.append)
    assert any("0 unchanged since graded, 2 to grade" in line for line in lines), lines


def test_the_fingerprint_covers_references_packages_and_the_secret(tmp_path, monkeypatch):
    """Editing a reference in utils (or another secret, or another package version) grades again."""
    import importlib.metadata

    before = classgrade.fingerprint("01_attention")
    copy = tmp_path / "course"
    for part in ("autograder", "utils"):
        shutil.copytree(ROOT / part, copy / part, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "requirements-assets.txt"):
        shutil.copy(ROOT / name, copy / name)
    monkeypatch.setattr(classgrade, "ROOT", copy)
    assert classgrade.fingerprint("01_attention") == before
    (copy / "utils" / "bpe.py").write_text((copy / "utils" / "bpe.py").read_text() + "\n# edited\n")
    assert classgrade.fingerprint("01_attention") != before
    monkeypatch.setattr(classgrade, "ROOT", ROOT)
    monkeypatch.setenv("AUTOGRADER_SECRET", "another")
    assert classgrade.fingerprint("01_attention") != before
    monkeypatch.setenv("AUTOGRADER_SECRET", SECRET)
    real = importlib.metadata.distributions

    class Fake:
        metadata = {"Name": "torch"}
        version = "0.0.1"

    monkeypatch.setattr(importlib.metadata, "distributions", lambda: [*real(), Fake()])
    assert classgrade.fingerprint("01_attention") != before


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("bwrap") is None, reason="needs root and bubblewrap")
def test_nothing_of_one_students_run_is_visible_to_the_next(tmp_path):
    """ann leaves files wherever a kernel can write, tries the places it must not (the venv, the course,
    the assets, bob's submission), marks the torch module her kernel was forked with, and starts a
    detached process; bob, graded next by the same worker (so forked from the same zygote), looks for
    all of it. His only error must be the probe's own report of nothing seen."""
    token = "leak-7f3a9c"
    bob_notebook = tmp_path / "submitted" / "bob" / "01_attention" / "01_attention.ipynb"
    site_packages = next(p for p in sys.path if p.endswith("site-packages"))
    places = ["'.'", "os.path.expanduser('~')", "'/tmp'", "'/dev/shm'", repr(str(ROOT)), repr(site_packages),
              repr(str(bob_notebook.parent))]
    leave = (f"import os, subprocess\nfor place in [{', '.join(places)}]:\n"
             f"    try:\n        open(os.path.join(place, '{token}'), 'w').write('ann was here')\n"
             "    except OSError:\n        pass\n"
             f"try:\n    open(os.path.join({site_packages!r}, 'usercustomize.py'), 'w').write('raise SystemExit')\n"
             "except OSError:\n    pass\n"
             f"try:\n    open({str(bob_notebook)!r}, 'w').write('{{}}')\nexcept OSError:\n    pass\n"
             "subprocess.Popen(['sleep', '3133'], start_new_session=True)\n"
             f"import torch\ntorch.ann_was_here = '{token}'")
    look = (f"import glob, os, subprocess\nfound = [p for place in [{', '.join(places)}]\n"
            f"         for p in glob.glob(os.path.join(place, '{token}'))]\n"
            f"found += glob.glob(os.path.join({site_packages!r}, 'usercustomize.py'))\n"
            "found += [line for line in subprocess.run(['ps', '-eo', 'args'], capture_output=True, text=True).stdout.splitlines()\n"
            "          if 'sleep 3133' in line]\n"
            "import torch\nfound += [torch.ann_was_here] if hasattr(torch, 'ann_was_here') else []\n"
            "raise RuntimeError(f'seen {found}')")
    submitted = _class(tmp_path, {"ann": [leave], "bob": [look]})
    summary = classgrade.grade_class(submitted, "01_attention", tmp_path / "out", workers=1,
                                     limits=Limits(total_timeout=120), log=lambda line: None)
    assert summary["statuses"] == {"graded": 2}
    records = {s: json.loads((tmp_path / "out" / "students" / s / "01_attention.json").read_text()) for s in ("ann", "bob")}
    assert all("start" in record["sandbox"] for record in records.values())   # both warm, one zygote
    assert records["ann"].get("cell_errors", []) == [], records["ann"]["cell_errors"]
    assert [e["error"] for e in records["bob"].get("cell_errors", [])] == ["RuntimeError: seen []"], records["bob"]
    # and nothing of ann's run outlives it on the grader's side
    assert subprocess.run(["pgrep", "-f", "sleep 3133"], capture_output=True).returncode == 1
    assert not (ROOT / token).exists() and not os.path.exists(os.path.join(site_packages, "usercustomize.py"))
    assert not list(bob_notebook.parent.glob(token)) and not os.path.exists(f"/tmp/{token}")
    assert json.loads(bob_notebook.read_text())["cells"]          # bob's notebook is still his
