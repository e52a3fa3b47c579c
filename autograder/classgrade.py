"""Grade a whole class: ``python -m autograder grade-class SUBMITTED_DIR --assignment NAME --out DIR``.

``SUBMITTED_DIR`` has nbgrader's layout, ``<student>/<assignment>/<notebook>.ipynb``. For each
student this writes ``DIR/students/<student>/<assignment>.json`` (the record of ``grade``, plus
``student`` and ``sha256``), ``.md`` and ``.html`` feedback beside it (per exercise: score and
message; hidden cases are never described), then ``DIR/grades.csv``, ``DIR/summary.json`` and the
scores in nbgrader's gradebook (``--gradebook``, default ``DIR/gradebook.db``) so that
``nbgrader export`` and formgrader show them.

* It refuses to start without the isolation of :mod:`autograder.sandbox` (bubblewrap, root, a
  cgroup) unless the instructor passes ``--insecure``, and with the public default
  ``AUTOGRADER_SECRET`` (students could compute the hidden cases).
* Each submission is graded in its own sandbox, started warm: each worker's zygote
  (:mod:`autograder.zygote`) has done the imports once and forks them into every fresh sandbox
  (``--cold`` turns this off). One bad submission only gets a bad record. A
  grader failure (a worker that died) becomes a ``crashed`` record too. Links are never followed:
  a student folder, assignment folder or notebook that is a link is not graded.
* Resume: a submission whose notebook bytes and grader fingerprint (the grader's code, the
  references, the pinned packages, the assets and the hidden-case secret) match what
  ``DIR/.resume.json`` says of its existing record is not graded again (``--force`` does). The
  fingerprint stays in that file, out of the records students may see: it is derived from the secret.
* Concurrency through a ``concurrent.futures.Executor``: a local process pool (``--workers N``), or
  a ``dask.distributed`` cluster (``--dask-scheduler ADDRESS``) whose workers run the same job
  function; records come back to this process, which alone writes files.
"""
from __future__ import annotations

import csv
import hashlib
import json
import multiprocessing
import os
import re
import stat
import sys
import time
import warnings
from concurrent.futures import Executor, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from pathlib import Path

from . import manifests
from .grade import _record, _zero, grade_notebook
from .report import csv_cell, feedback_html, feedback_markdown
from .sandbox import ROOT, Limits, isolation, threads_per_run
from .spec import DEFAULT_SECRET, hidden_secret

RESUME = ".resume.json"  # student -> {"sha256", "grader"} of the record in DIR (the instructor's, not the students')
CSV_FIELDS = ["student", "assignment", "status", "score", "max_score", "seconds", "submission", "message"]


@dataclass(frozen=True)
class Job:
    student: str
    assignment: str
    path: str          # the notebook to grade, "" when the student submitted none
    note: str          # e.g. "graded my_attention.ipynb (expected 01_attention.ipynb)"
    sha256: str        # of the notebook's bytes ("" when none)


def _regular(path: Path) -> bool:
    """A regular file or folder reached without any link (``lstat``: links are not followed)."""
    try:
        mode = path.lstat().st_mode
    except OSError:
        return False
    return stat.S_ISREG(mode) or stat.S_ISDIR(mode)


def discover(submitted: Path, assignment: str) -> list[Job]:
    """One job per ``<student>/<assignment>/`` folder, sorted by student.

    A student folder, assignment folder or notebook that is a link (to the solutions, to a
    classmate's work) is never followed: its job says so and scores 0.
    """
    jobs = []
    root = submitted.resolve()
    for folder in sorted(p for p in submitted.iterdir() if not p.name.startswith(".")):
        if folder.is_symlink():
            jobs.append(Job(folder.name, assignment, "", "the student folder is a link: not graded", ""))
            continue
        if not folder.is_dir():
            continue
        work = folder / assignment
        if work.is_symlink():
            jobs.append(Job(folder.name, assignment, "", "the assignment folder is a link: not graded", ""))
            continue
        if not work.is_dir():
            continue
        expected = work / f"{assignment}.ipynb"
        found = sorted(p for p in work.glob("*.ipynb") if not p.name.startswith("."))
        note = ""
        if expected.is_symlink() or (not expected.exists() and len(found) == 1 and found[0].is_symlink()):
            jobs.append(Job(folder.name, assignment, "", "the notebook is a link, not a file: not graded", ""))
            continue
        if expected.is_file():
            path = expected
        elif len(found) == 1 and _regular(found[0]):
            path = found[0]
            note = f"graded {path.name} (expected {expected.name})"
        else:
            path = None
            note = (f"no {expected.name} in the submission" +
                    (f" (found {', '.join(p.name for p in found[:5])})" if found else ""))
        if path is not None and not path.resolve().is_relative_to(root):
            path, note = None, "the notebook resolves outside the submitted folder: not graded"
        try:
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if path else ""
        except OSError as exc:
            path, digest, note = None, "", f"the notebook cannot be read ({exc.strerror or exc})"
        jobs.append(Job(folder.name, assignment, str(path or ""), note, digest))
    return jobs


def fingerprint(assignment: str) -> str:
    """What a record depends on besides the notebook: the grader's code (manifests and oracles), the
    course's reference code, the pinned packages and their installed versions, the prepared assets
    (names and sizes) and the hidden-case secret."""
    import importlib.metadata

    from utils.assets import cache_dir

    digest = hashlib.sha256(assignment.encode())
    for path in sorted([*(ROOT / "autograder").rglob("*.py"), *(ROOT / "utils").rglob("*.py"),
                        ROOT / "pyproject.toml", ROOT / "requirements-assets.txt"]):
        if path.is_file():
            digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    for dist in sorted(importlib.metadata.distributions(), key=lambda d: d.metadata["Name"] or ""):
        digest.update(f"{dist.metadata['Name']}=={dist.version}\n".encode())
    cache = cache_dir()
    if cache.is_dir():
        for path in sorted(cache.rglob("*")):
            if path.is_file():
                digest.update(f"{path.relative_to(cache)}:{path.stat().st_size}\n".encode())
    digest.update(hashlib.sha256(hidden_secret().encode()).digest())
    return digest.hexdigest()[:32]


def grade_job(job: Job, limits: Limits) -> dict:
    """Grade one submission (runs in a worker: a process of the pool, or a dask worker)."""
    spec = manifests.assignment(job.assignment)
    if not job.path:
        record = _record(spec.notebook, Path(job.student) / job.assignment, "invalid", 0.0, job.note,
                         _zero(spec, "missing", "not graded: " + job.note), spec.max_score)
    else:
        record = grade_notebook(job.path, assignment=job.assignment, limits=limits)
        if job.note:
            record["message"] = job.note + ("; " + record["message"] if record["message"] else "")
    record.update(student=job.student, sha256=job.sha256)
    return record


def _failed(job: Job, why: str) -> dict:
    spec = manifests.assignment(job.assignment)
    message = f"the grader failed on this submission: {why[:300]}"
    return _record(spec.notebook, Path(job.path or job.student), "crashed", 0.0, message,
                   _zero(spec, "error", "not graded: " + message), spec.max_score) | {"student": job.student,
                                                                                     "sha256": job.sha256}


def _record_path(out: Path, job: Job) -> Path:
    return out / "students" / job.student / f"{job.assignment}.json"


def _write(out: Path, job: Job, record: dict) -> None:
    target = _record_path(out, job)
    target.parent.mkdir(parents=True, exist_ok=True)
    for suffix, text in ((".md", feedback_markdown(record)), (".html", feedback_html(record)),
                         (".json", json.dumps(record, indent=2) + "\n")):  # the record last: it marks "done"
        partial = target.with_suffix(suffix + ".partial")
        partial.write_text(text, encoding="utf-8")
        partial.replace(target.with_suffix(suffix))


def _resume_state(out: Path) -> dict:
    try:
        state = json.loads((out / RESUME).read_text(encoding="utf-8"))
        return state if isinstance(state, dict) else {}
    except (OSError, ValueError):
        return {}


def _up_to_date(out: Path, job: Job, grader: str, state: dict) -> dict | None:
    if state.get(job.student) != {"sha256": job.sha256, "grader": grader}:
        return None
    try:
        record = json.loads(_record_path(out, job).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("sha256") == job.sha256 else None


def make_executor(workers: int = 2, dask_scheduler: str | None = None) -> tuple[Executor, object]:
    """A process pool, or a dask cluster's executor (and its client, to close after)."""
    if dask_scheduler:
        from distributed import Client

        client = Client(dask_scheduler)
        return client.get_executor(pure=False), client
    # forkserver, not fork: this process has run torch (the references), and a child forked from a
    # process with a live OpenMP thread pool can hang in its first torch call.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["autograder.classgrade"])  # imported once, before any torch op
    return ProcessPoolExecutor(max_workers=max(1, workers), mp_context=context), None


def _run_round(jobs: list[Job], limits: Limits, workers: int, dask_scheduler: str | None, on_done, fn) -> list[Job]:
    """Grade ``jobs`` on one executor; returns the jobs lost because a worker process died."""
    executor, client = make_executor(workers, dask_scheduler)
    lost = []
    try:
        futures = {executor.submit(fn or grade_job, job, limits): job for job in jobs}
        for future in as_completed(futures):
            job = futures[future]
            try:
                record = future.result()
            except BrokenProcessPool:
                lost.append(job)
                continue
            except Exception as exc:  # noqa: BLE001 - a job's failure is that job's record
                record = _failed(job, f"{type(exc).__name__}: {exc}")
            on_done(job, record)
    finally:
        if isinstance(executor, ProcessPoolExecutor):
            executor.shutdown(wait=not lost, cancel_futures=True)
        else:
            executor.shutdown(wait=True)
        if client is not None:
            client.close()
    return lost


def run_jobs(jobs: list[Job], limits: Limits, workers: int, dask_scheduler: str | None, on_done, fn=None) -> None:
    """Grade ``jobs`` concurrently, calling ``on_done(job, record)`` as each finishes; never raises for a job.

    When a worker process dies (the OOM killer, a bug), the pool breaks and every job in it is lost:
    those are then tried again one at a time, each in a pool of its own, so that only the job that
    kills its worker again gets a ``crashed`` record.
    """
    for job in _run_round(jobs, limits, workers, dask_scheduler, on_done, fn):
        if _run_round([job], limits, 1, dask_scheduler, on_done, fn):
            on_done(job, _failed(job, "its worker process died (twice, the second time alone)"))


def _grade_one(kwargs: dict) -> dict:
    return grade_notebook(**kwargs)


def grade_many(jobs: list[dict], workers: int = 2, on_done=None) -> list[dict]:
    """Grade notebooks concurrently, each in its own sandbox; returns their records in the order given.

    ``jobs`` are keyword arguments of :func:`~autograder.grade.grade_notebook` (``path``, ``assignment``,
    ``limits``, ``keep_executed``, ``parameters``). A job whose worker died gets a ``crashed`` record.
    Two workers on two cores: while one kernel starts or waits, the other computes. ``on_done(record)``
    is called as each finishes.
    """
    records: list[dict | None] = [None] * len(jobs)
    on_done = on_done or (lambda record: None)
    if workers <= 1 or len(jobs) <= 1:
        for i, job in enumerate(jobs):
            records[i] = grade_notebook(**job)
            on_done(records[i])
        return records
    def shared_cores(limits: Limits | None) -> Limits:
        limits = limits or Limits()
        return limits if limits.threads else replace(limits, threads=threads_per_run(workers))

    jobs = [{**job, "limits": shared_cores(job.get("limits"))} for job in jobs]
    executor, _ = make_executor(workers)
    with executor:
        futures = {executor.submit(_grade_one, job): i for i, job in enumerate(jobs)}
        for future in as_completed(futures):
            i = futures[future]
            try:
                records[i] = future.result()
            except Exception as exc:  # noqa: BLE001 - a dead worker: this job's record, never the batch
                path = Path(jobs[i]["path"])
                spec = manifests.assignment(jobs[i].get("assignment") or path.stem)
                message = f"the grader could not grade this notebook ({type(exc).__name__}: {exc})"
                records[i] = _record(spec.notebook, path, "crashed", 0.0, message,
                                     _zero(spec, "error", "not graded: " + message), spec.max_score)
            on_done(records[i])
    return records


def course_jobs(names: list[str], limits: Limits | None = None, executed: Path | None = None) -> list[dict]:
    """What ``make course`` grades, for :func:`grade_many`: each solution (kept executed in ``executed``),
    then its release on its setup and exercise cells (:func:`~autograder.grade.exercise_cells`: the stubs
    raise whatever the demos do)."""
    jobs = []
    for name in names:
        jobs.append(dict(path=ROOT / "solutions" / f"{name}.ipynb", assignment=name, limits=limits,
                         keep_executed=executed / f"{name}.ipynb" if executed else None))
        jobs.append(dict(path=ROOT / "notebooks" / f"{name}.ipynb", assignment=name, limits=limits, exercises_only=True))
    return jobs


def write_csv(records: list[dict], path: Path, exercise_ids: list[str]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_FIELDS + exercise_ids)
        for r in records:
            scores = {e["id"]: e["score"] for e in r.get("exercises", [])}
            writer.writerow([csv_cell(r.get("student", "")), r["notebook"], r["status"], r["score"], r["max_score"],
                             r["seconds"], csv_cell(r["submission"]), csv_cell(r.get("message", "")[:200])]
                            + [scores.get(i, 0) for i in exercise_ids])


def grade_cell_names(assignment: str) -> dict[str, str]:
    """Exercise id -> the nbgrader ``grade_id`` of its test cell in the solution (``check("id", ...)``)."""
    names = {}
    try:
        nb = json.loads((ROOT / "solutions" / f"{assignment}.ipynb").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return names
    for cell in nb.get("cells", []):
        meta = cell.get("metadata", {}).get("nbgrader", {})
        found = re.search(r"""check\(\s*["']([\w.]+)["']""", "".join(cell.get("source", "")))
        if meta.get("grade") and meta.get("grade_id") and found:
            names.setdefault(found.group(1), meta["grade_id"])
    return names


def write_gradebook(records: list[dict], assignment: str, path: Path) -> None:
    """Store the scores in nbgrader's gradebook: one autograded cell per exercise (points from the manifest)."""
    from nbgrader.api import Gradebook, MissingEntry

    spec = manifests.assignment(assignment)
    cells = grade_cell_names(assignment)
    path.parent.mkdir(parents=True, exist_ok=True)
    bin_dir = str(Path(sys.executable).parent)  # nbgrader runs `alembic` from PATH: the venv's
    if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    with warnings.catch_warnings(), Gradebook(f"sqlite:///{path.resolve()}") as gb:
        warnings.simplefilter("ignore")  # nbgrader's own SQLAlchemy autoflush warnings
        gb.update_or_create_assignment(assignment)
        gb.update_or_create_notebook(spec.notebook, assignment)
        for ex in spec.exercises:
            gb.update_or_create_grade_cell(cells.get(ex.id, ex.id), spec.notebook, assignment,
                                           max_score=float(ex.points), cell_type="code")
        for record in records:
            student = record["student"]
            gb.update_or_create_student(student)
            try:
                gb.find_submission(assignment, student)
            except MissingEntry:
                gb.add_submission(assignment, student)
            scores = {e["id"]: float(e["score"]) for e in record.get("exercises", [])}
            for ex in spec.exercises:
                grade = gb.find_grade(cells.get(ex.id, ex.id), spec.notebook, assignment, student)
                grade.auto_score = min(max(scores.get(ex.id, 0.0), 0.0), float(ex.points))
            gb.db.commit()


class Refused(RuntimeError):
    """grade-class will not grade: the isolation it promises is missing, or the secret is the public one."""


def refusal(insecure: bool = False) -> str | None:
    """Why a class must not be graded here (``None`` when it may)."""
    box = isolation()
    if not box.complete and not insecure:
        return ("the sandbox is incomplete here, so one student's notebook could read or change what another's "
                "run sees:\n  " + "\n  ".join(box.notes or ["(no details)"]) +
                "\nRun as root with bubblewrap installed (`make setup` installs it), or pass --insecure to grade "
                "anyway, knowingly.")
    if hidden_secret() == DEFAULT_SECRET:
        return ("AUTOGRADER_SECRET is not set: the hidden cases would be the public default ones, which any "
                "student can compute from the course's code. Set a secret of your own, e.g.\n"
                "  export AUTOGRADER_SECRET=$(python3 -c 'import secrets; print(secrets.token_hex(16))')")
    return None


def grade_class(submitted: Path, assignment: str, out: Path, gradebook: Path | None = None, workers: int = 2,
                dask_scheduler: str | None = None, limits: Limits | None = None, force: bool = False,
                log=print, insecure: bool = False) -> dict:
    """Grade every submission of ``assignment`` under ``submitted``; returns the summary (also DIR/summary.json).

    Raises :class:`Refused` (before grading anything) when :func:`refusal` says why it must not.
    """
    why = refusal(insecure)
    if why:
        raise Refused(why)
    start = time.perf_counter()
    spec = manifests.assignment(assignment)
    out.mkdir(parents=True, exist_ok=True)
    gradebook = gradebook or out / "gradebook.db"
    limits = limits or Limits()
    if limits.threads is None and not dask_scheduler:   # a dask worker's machine has its own cores
        limits = replace(limits, threads=threads_per_run(workers))
    box = isolation()
    for note in box.notes:
        log(f"sandbox: {note}")
    grader = fingerprint(assignment)
    jobs = discover(submitted, assignment)
    records: dict[Job, dict] = {}
    todo = []
    state = _resume_state(out)
    for job in jobs:
        done = None if force else _up_to_date(out, job, grader, state)
        if done is not None:
            records[job] = done
        else:
            todo.append(job)
    log(f"{len(jobs)} submission(s) of {assignment}: {len(jobs) - len(todo)} unchanged since graded, "
        f"{len(todo)} to grade" + (f" on dask at {dask_scheduler}" if dask_scheduler else f" with {workers} worker(s)"))

    def on_done(job: Job, record: dict) -> None:
        _write(out, job, record)
        records[job] = record
        state[job.student] = {"sha256": job.sha256, "grader": grader}
        partial = out / (RESUME + ".partial")
        partial.write_text(json.dumps(state, indent=1), encoding="utf-8")
        partial.replace(out / RESUME)
        log(f"  {job.student}: {record['status']}, {record['score']:g}/{record['max_score']:g} "
            f"in {record['seconds']:.1f} s")

    run_jobs(todo, limits, workers, dask_scheduler, on_done)
    ordered = [records[job] for job in jobs]
    write_csv(ordered, out / "grades.csv", [ex.id for ex in spec.exercises])
    write_gradebook(ordered, assignment, gradebook)
    statuses: dict[str, int] = {}
    for record in ordered:
        statuses[record["status"]] = statuses.get(record["status"], 0) + 1
    summary = {"assignment": assignment, "submissions": len(jobs), "graded_now": len(todo),
               "skipped_unchanged": len(jobs) - len(todo), "statuses": statuses,
               "seconds": round(time.perf_counter() - start, 2), "workers": workers, "dask_scheduler": dask_scheduler,
               "gradebook": str(gradebook), "sandbox": box.describe(), "insecure": insecure and not box.complete}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


__all__ = ["Job", "Refused", "discover", "grade_class", "grade_job", "refusal", "run_jobs", "write_gradebook"]
