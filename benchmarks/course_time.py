"""`make course` for every notebook (solution and release), and where the time goes.

Value: seconds for the whole course (what ``python -m autograder course`` does: grade each solution
and each release with FAST=True in the sandbox, two at a time, the releases on their setup and
exercise cells); baseline: the target, 300 s on 2 cores. Per
notebook: the seconds of each run and the grader's breakdown (``record["timing"]``: starting the
executor, starting the kernel, the notebook's first code cell (its imports), the other learner
cells, the grader's cells, the sandbox and transfers, the trusted comparison, and in each worker's
first run the zygote's imports: runs start warm, ``autograder/zygote.py``).
"""
from __future__ import annotations

import time

from autograder import manifests
from autograder.classgrade import course_jobs, grade_many

CONFIG = {"fast": True, "target_seconds": 300, "notebooks": "all", "workers": 2, "start": "warm (autograder/zygote.py)"}


def run() -> dict:
    start = time.perf_counter()
    per_notebook, totals = {}, {}
    names = sorted(manifests.ASSIGNMENTS)
    records = grade_many(course_jobs(names), workers=CONFIG["workers"])
    for name, solution, release in zip(names, records[0::2], records[1::2]):
        entry = {}
        for kind, record in (("solution", solution), ("release", release)):
            entry[kind] = {"seconds": record["seconds"], "score": record["score"], "status": record["status"],
                           "timing": record.get("timing", {})}
            for stage, seconds in record.get("timing", {}).items():
                totals[stage] = round(totals.get(stage, 0.0) + seconds, 2)
        per_notebook[name] = entry
    seconds = time.perf_counter() - start
    return {
        "metric": "seconds to grade every solution and release (make course)", "unit": "s", "value": seconds,
        "baseline": "target", "baseline_value": CONFIG["target_seconds"], "config": CONFIG,
        "targets": {"course_time.seconds": {"value": round(seconds, 1), "target": CONFIG["target_seconds"],
                                            "met": seconds <= CONFIG["target_seconds"]}},
        "per_notebook": per_notebook, "where_the_time_goes": totals,
    }
