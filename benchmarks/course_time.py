"""`make course` for every notebook (solution and release), and where the time goes.

Value: seconds for the whole course (what ``python -m autograder course`` does: grade each solution
and each release with FAST=True in the sandbox); baseline: the target, 300 s on 2 cores. Per
notebook: the seconds of each run and the grader's breakdown (``record["timing"]``: starting the
executor, starting the kernel, the notebook's first code cell (its imports), the other learner
cells, the grader's cells, the sandbox and transfers, the trusted comparison).
"""
from __future__ import annotations

import time

from autograder import manifests
from autograder.grade import grade_notebook

from .common import ROOT

CONFIG = {"fast": True, "target_seconds": 300, "notebooks": "all"}


def run() -> dict:
    start = time.perf_counter()
    per_notebook, totals = {}, {}
    for name in sorted(manifests.ASSIGNMENTS):
        entry = {}
        for kind, folder in (("solution", "solutions"), ("release", "notebooks")):
            record = grade_notebook(ROOT / folder / f"{name}.ipynb", assignment=name)
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
