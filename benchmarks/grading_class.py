"""A class of 40 submissions of notebook 01 graded by grade-class: 2 local workers vs a dask LocalCluster.

The class: 10 exact copies of the reference solution, 10 with unscaled attention, 10 with a failing
cell in the middle, 10 untouched student releases; full notebooks (they load SmolLM2). Value: wall
time with a process pool of 2 workers; baseline: the same batch on a dask ``LocalCluster`` of 2
single-threaded workers. Also: whether the 10 copies of the reference got identical records (in both
runs), whether both runs gave every student the same score, and the largest feedback file.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
import time
from pathlib import Path

import nbformat

from autograder.classgrade import grade_class

from .common import ROOT
from .grading_catalogue import largest_feedback

CONFIG = {"submissions": 40, "workers": 2, "dask": "LocalCluster(n_workers=2, threads_per_worker=1)"}

UNSCALED = '''def scaled_dot_product_attention(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    return weights @ v, weights
'''


def build(submitted: Path) -> None:
    solution = nbformat.read(ROOT / "solutions" / "01_attention.ipynb", as_version=4)
    unscaled = nbformat.from_dict(json.loads(json.dumps(solution)))
    next(c for c in unscaled.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "sdpa").source = UNSCALED
    partial = nbformat.from_dict(json.loads(json.dumps(solution)))
    index = next(i for i, c in enumerate(partial.cells) if c.metadata.get("nbgrader", {}).get("grade_id") == "padding_mask")
    partial.cells.insert(index, nbformat.v4.new_code_cell("undefined_name + 1"))
    variants = {"ref": solution, "unscaled": unscaled, "partial": partial}
    for number in range(CONFIG["submissions"]):
        kind = ("ref", "unscaled", "partial", "release")[number // 10]
        folder = submitted / f"{kind}{number % 10:02d}" / "01_attention"
        folder.mkdir(parents=True)
        if kind == "release":
            shutil.copyfile(ROOT / "notebooks" / "01_attention.ipynb", folder / "01_attention.ipynb")
        else:
            nbformat.write(variants[kind], folder / "01_attention.ipynb")


def _records(out: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in out.glob("students/*/01_attention.json")}


def _identical_refs(records: dict[str, dict]) -> bool:
    keep = ("status", "score", "exercises", "message")
    refs = [json.dumps({k: r.get(k) for k in keep}, sort_keys=True) for s, r in records.items() if s.startswith("ref")]
    return len(refs) == 10 and len(set(refs)) == 1


def run() -> dict:
    os.environ.setdefault("AUTOGRADER_SECRET", secrets.token_hex(16))  # grade-class refuses the public one
    from distributed import LocalCluster

    with tempfile.TemporaryDirectory(prefix="bench-class-") as tmp:
        base = Path(tmp)
        build(base / "submitted")
        start = time.perf_counter()
        pool = grade_class(base / "submitted", "01_attention", base / "pool", workers=CONFIG["workers"],
                           log=lambda line: None)
        pool_s = time.perf_counter() - start
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
            start = time.perf_counter()
            dask = grade_class(base / "submitted", "01_attention", base / "dask", dask_scheduler=cluster.scheduler_address,
                               log=lambda line: None)
            dask_s = time.perf_counter() - start
        pool_records, dask_records = _records(base / "pool"), _records(base / "dask")
        size, name = max(largest_feedback(base / "pool"), largest_feedback(base / "dask"))
    scores = {s: r["score"] for s, r in pool_records.items()}
    return {
        "metric": "wall time to grade 40 submissions of notebook 01, 2 local workers", "unit": "s", "value": pool_s,
        "baseline": "the same on a dask LocalCluster (2 workers)", "baseline_value": dask_s, "config": CONFIG,
        "per_submission_s": round(pool_s / CONFIG["submissions"], 2), "statuses": pool["statuses"],
        "dask_statuses": dask["statuses"], "reference_10_copies_identical": _identical_refs(pool_records)
        and _identical_refs(dask_records), "reference_score": scores.get("ref00"),
        "same_scores_pool_and_dask": scores == {s: r["score"] for s, r in dask_records.items()},
        "scores_by_kind": {kind: sorted({v for s, v in scores.items() if s.startswith(kind)})
                           for kind in ("ref", "unscaled", "partial", "release")},
        "largest_feedback_bytes": size, "largest_feedback_file": name,
    }
