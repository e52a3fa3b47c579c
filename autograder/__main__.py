"""Command line of the grader.

    python -m autograder grade PATH... --out DIR     grade submissions, one JSON record each
    python -m autograder grade-class SUBMITTED_DIR --assignment NAME --out DIR [--workers N]
                                                     grade a class (nbgrader layout) into DIR and a gradebook
    python -m autograder course [NAME...]            run and grade every solution and student notebook
    python -m autograder release [--check]           build notebooks/ from solutions/ (nbgrader)
"""
from __future__ import annotations

import argparse
import os
import sys
import textwrap
import time
from pathlib import Path

from . import manifests
from .classgrade import course_jobs, grade_many
from .grade import grade_notebook, record_names, where, write_record
from .report import MARK, SUMMARY_HEADERS, html_page, markdown_table, points, summary_rows, table
from .sandbox import Limits, isolation

ROOT = Path(__file__).resolve().parent.parent


def _limits(args) -> Limits:
    return Limits(cell_timeout=args.cell_timeout, total_timeout=args.timeout,
                  memory_bytes=int(args.memory_gb * 1024**3), warm=not args.cold)


def cmd_grade(args) -> int:
    records = []
    for note in isolation().notes:
        print(f"sandbox: {note}", flush=True)
    paths = [Path(raw) for raw in args.paths]
    names = record_names(paths)
    for path in paths:
        record = grade_notebook(path, assignment=args.assignment, limits=_limits(args))
        target = write_record(record, Path(args.out), names[path])
        records.append(record)
        print(f"{path}: {record['status']}, {points(record['score'])}/{points(record['max_score'])} "
              f"in {record['seconds']:.1f} s -> {target}", flush=True)
        for exercise in record["exercises"]:
            score = f"{points(exercise['score'])}/{points(exercise['max_score'])}"
            print(f"  {MARK.get(exercise['status'], '?')} {exercise['id']:<26} {score:>7}  {exercise['status']}")
            print(textwrap.fill(exercise["message"], width=100, initial_indent=" " * 6, subsequent_indent=" " * 6))
        if record.get("message"):
            print(textwrap.fill("note: " + record["message"], width=100, initial_indent="  ", subsequent_indent="  "))
        for error in record.get("cell_errors", [])[1:4]:
            print(textwrap.fill(f"also: {where(error)}: {error['error']}", width=100, initial_indent="  ",
                                subsequent_indent="  "))
        for flag in record.get("flags", []):
            print(textwrap.fill("flag: " + flag["flag"], width=100, initial_indent="  ", subsequent_indent="  "))
    print()
    print(table(SUMMARY_HEADERS, summary_rows(records)))
    return 0  # grading completed: the scores are in the records, not in the exit status


def cmd_grade_class(args) -> int:
    from .classgrade import Refused, grade_class

    limits = _limits(args)
    try:
        summary = grade_class(Path(args.submitted), args.assignment, Path(args.out),
                              gradebook=Path(args.gradebook) if args.gradebook else None, workers=args.workers,
                              dask_scheduler=args.dask_scheduler, limits=limits, force=args.force,
                              log=lambda line: print(line, flush=True), insecure=args.insecure)
    except Refused as exc:
        print(f"grade-class refuses to grade: {exc}", file=sys.stderr)
        return 2
    print(f"done: {summary['submissions']} submission(s) {summary['statuses']} in {summary['seconds']:.1f} s; "
          f"wrote {args.out}/grades.csv, {args.out}/students/<student>/{args.assignment}.json|.md|.html "
          f"and {summary['gradebook']}")
    return 0  # the batch completed: the scores are in the records, not in the exit status


def cmd_course(args) -> int:
    names = args.names or sorted(manifests.ASSIGNMENTS)
    build = Path(args.build)
    rows, problems = [], []
    start = time.perf_counter()
    print(f"Executing and grading {len(names)} notebook(s) with FAST=True, {args.workers} at a time ...", flush=True)
    jobs = course_jobs(names, _limits(args), build / "executed")

    def progress(record):
        print(f"  {record['notebook']} ({Path(record['submission']).parent.name}): "
              f"{points(record['score'])}/{points(record['max_score'])} {record['status']} in {record['seconds']:.1f} s", flush=True)

    records = grade_many(jobs, workers=args.workers, on_done=progress)
    for name, solution, student in zip(names, records[0::2], records[1::2]):
        write_record(solution, build / "grades" / "solutions")
        write_record(student, build / "grades" / "release")
        row = [name, f"{points(solution['score'])}/{points(solution['max_score'])}", f"{points(student['score'])}/{points(student['max_score'])}",
               f"{solution['seconds']:.1f}", f"{student['seconds']:.1f}"]
        rows.append(row)
        if solution["status"] != "graded" or solution["score"] != solution["max_score"]:
            problems.append(f"{name}: the solution scored {points(solution['score'])}/{points(solution['max_score'])} "
                            f"({solution['status']}) {solution.get('message', '')}")
            problems += [f"    {e['id']}: {e['message']}" for e in solution["exercises"] if e["status"] != "passed"]
        if student["status"] != "graded" or student["score"] != 0:
            problems.append(f"{name}: the student release scored {points(student['score'])} ({student['status']}); expected 0")
    total = time.perf_counter() - start
    headers = ["notebook", "solution score", "release score", "solution s", "release s"]
    print()
    print(table(headers, rows))
    print(f"\ntotal: {total:.1f} s")
    build.mkdir(parents=True, exist_ok=True)
    (build / "report.md").write_text(
        "# Course report\n\n" + markdown_table(headers, rows) + f"\n\nTotal: {total:.1f} s\n"
        + ("\n## Problems\n\n" + "\n".join(f"- {p}" for p in problems) + "\n" if problems else ""),
        encoding="utf-8")
    blocks = [("h1", "Course report"), ("table", (headers, rows)), ("p", f"Total: {total:.1f} s")]
    blocks += [("p", p) for p in problems]
    (build / "report.html").write_text(html_page("Course report", blocks), encoding="utf-8")
    print(f"wrote {build / 'report.md'} and {build / 'report.html'}")
    for problem in problems:
        print("PROBLEM:", problem)
    return 1 if problems else 0


def cmd_release(args) -> int:
    from .release import generate, leaks, release

    if not args.check:
        for path in release():
            print(f"wrote {path.relative_to(ROOT)}")
        return 0
    stale = []
    for name, text in generate().items():
        path = ROOT / "notebooks" / name
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            stale.append(name)
        if leaks(path.read_text(encoding="utf-8")) if path.exists() else False:
            stale.append(f"{name} (contains solution markers)")
    if stale:
        print("notebooks/ is out of date with solutions/: " + ", ".join(stale) + ". Run `make release`.")
        return 1
    print("notebooks/ matches a fresh release of solutions/")
    return 0


def main(argv: list[str] | None = None) -> int:
    # The oracles load models in this process: no progress bars between the grader's lines.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    parser = argparse.ArgumentParser(prog="python -m autograder", description="Grade the course's notebooks.")
    sub = parser.add_subparsers(dest="command", required=True)

    def add_limits(p):
        p.add_argument("--timeout", type=int, default=900, help="seconds for a whole notebook (default 900)")
        p.add_argument("--cell-timeout", type=int, default=300, help="seconds for one cell (default 300)")
        p.add_argument("--memory-gb", type=float, default=12, help="memory of the whole run (cgroup) and of each process, GiB (default 12)")
        p.add_argument("--cold", action="store_true",
                       help="start each run's executor and kernel from scratch, not forked with the imports done")

    grade = sub.add_parser("grade", help="grade submissions; writes DIR/<name>.json for each")
    grade.add_argument("paths", nargs="+", metavar="PATH")
    grade.add_argument("--out", required=True, metavar="DIR")
    grade.add_argument("--assignment", help="which notebook they answer (default: from the file name)")
    add_limits(grade)
    grade.set_defaults(func=cmd_grade)

    klass = sub.add_parser("grade-class", help="grade SUBMITTED_DIR/<student>/<assignment>/*.ipynb")
    klass.add_argument("submitted", metavar="SUBMITTED_DIR")
    klass.add_argument("--assignment", required=True, help="the notebook, e.g. 01_attention")
    klass.add_argument("--out", required=True, metavar="DIR")
    klass.add_argument("--gradebook", metavar="PATH", help="nbgrader gradebook (default DIR/gradebook.db)")
    klass.add_argument("--workers", type=int, default=2, help="local processes grading at once (default 2)")
    klass.add_argument("--dask-scheduler", metavar="ADDRESS", help="grade on a dask.distributed cluster instead")
    klass.add_argument("--force", action="store_true", help="grade again submissions already graded and unchanged")
    klass.add_argument("--insecure", action="store_true",
                       help="grade even where the sandbox is incomplete (not root, no bubblewrap, no cgroup)")
    add_limits(klass)
    klass.set_defaults(func=cmd_grade_class)

    course = sub.add_parser("course", help="execute and grade every solution and student notebook")
    course.add_argument("names", nargs="*", help="notebooks (default: all)")
    course.add_argument("--build", default=str(ROOT / "build"))
    course.add_argument("--workers", type=int, default=2, help="notebooks graded at once (default 2)")
    add_limits(course)
    course.set_defaults(func=cmd_course)

    rel = sub.add_parser("release", help="build notebooks/ from solutions/ with nbgrader")
    rel.add_argument("--check", action="store_true", help="only check that notebooks/ is up to date")
    rel.set_defaults(func=cmd_release)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
