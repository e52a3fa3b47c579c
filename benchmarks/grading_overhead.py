"""Grading overhead per submission: grading notebook 01's solution vs executing it with papermill alone.

Baseline: papermill's command line on the same notebook (``-p FAST True``), without the sandbox, the
grader's cells or the comparison. Value: ``grade_notebook`` end to end (bubblewrap, a fresh uid and a
cgroup, the two capture phases, the trusted comparison). The difference is the overhead; target: at
most 3 s. (The graded run skips the notebook's self-check cells, which the grader replaces.)
"""
from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from autograder.grade import grade_notebook
from autograder.sandbox import isolation

from .common import ROOT

CONFIG = {"notebook": "solutions/01_attention.ipynb", "repeats": 2, "target_overhead_s": 3.0}


def _execute_only(path: Path) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "papermill", str(path), str(Path(tmp) / "out.ipynb"),
                        "-p", "FAST", "True", "-p", "SEED", "0", "--cwd", tmp, "--no-progress-bar"], cwd=ROOT,
                       check=True, stdin=subprocess.DEVNULL, capture_output=True)
        return time.perf_counter() - start


def run() -> dict:
    path = ROOT / CONFIG["notebook"]
    isolation()  # probed once per grader process: not part of a submission's cost
    executed, graded, scores = [], [], []
    for _ in range(CONFIG["repeats"]):  # interleaved, so that a busy moment hits both
        executed.append(_execute_only(path))
        start = time.perf_counter()
        record = grade_notebook(path)
        graded.append(time.perf_counter() - start)
        scores.append(record["score"])
    value, baseline = statistics.median(graded), statistics.median(executed)
    return {
        "metric": "seconds to grade notebook 01's solution", "unit": "s", "value": value,
        "baseline": "papermill execution alone", "baseline_value": baseline, "config": CONFIG,
        "overhead_s": round(value - baseline, 2), "within_target": value - baseline <= CONFIG["target_overhead_s"],
        "graded_s": [round(x, 2) for x in graded], "executed_s": [round(x, 2) for x in executed], "scores": scores,
        "sandbox": isolation().describe(),
    }
