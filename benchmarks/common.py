"""Helpers shared by benchmarks: timing, and the solution notebooks' code as a namespace."""
from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent


def median_seconds(fn: Callable[[], object], repeats: int = 20, warmup: int = 3) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def solution_code_cells(notebook: str) -> list[str]:
    """The parameters and imports cells, then the solution cells: "your" code, with no model or plots."""
    import nbformat

    nb = nbformat.read(ROOT / "solutions" / f"{notebook}.ipynb", as_version=4)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    chosen = code[:2] + [c for c in code[2:] if c.metadata.get("nbgrader", {}).get("solution")]
    return [cell.source for cell in chosen]


def solution_namespace(notebook: str) -> dict:
    """Execute a solution notebook's parameters, imports and solution cells (nothing else).

    This is "your" implementation for a benchmark: the code a learner writes, taken from the
    solution notebook itself rather than from a second copy.
    """
    namespace: dict = {"FAST": True}
    for number, source in enumerate(solution_code_cells(notebook)):
        exec(compile(source, f"{notebook}:cell{number}", "exec"), namespace)
    return namespace


def interleaved_median_seconds(fns: list[Callable[[], object]], repeats: int = 20, warmup: int = 2) -> list[float]:
    """Median wall time of each of ``fns``, timed in turn within every repeat (A, B, A, B, ...).

    On a shared machine the load drifts; interleaving gives both sides the same conditions, so
    their ratio is fairer than two back-to-back ``median_seconds``.
    """
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, bucket in zip(fns, times):
            start = time.perf_counter()
            fn()
            bucket.append(time.perf_counter() - start)
    return [statistics.median(bucket) for bucket in times]
