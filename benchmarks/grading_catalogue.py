"""The hostile catalogue (tests/hostile/catalogue.py) graded by grade-class with 2 workers.

Value: submissions that got their expected status without scoring above the honest one; baseline:
all submissions (ratio 1.0 is the target). Also: statuses, how many scored above honest (must be
0), whether the batch finished, the largest feedback file.
"""
from __future__ import annotations

import json
import os
import secrets
import sys
import tempfile
from pathlib import Path

from autograder.classgrade import grade_class

from .common import ROOT

sys.path.insert(0, str(ROOT / "tests"))  # the catalogue is test data (tests/hostile)
from hostile import catalogue  # noqa: E402

CONFIG = {"workers": 2, "cell_timeout": catalogue.LIMITS.cell_timeout, "total_timeout": catalogue.LIMITS.total_timeout,
          "memory_gib": catalogue.LIMITS.memory_bytes / 1024**3}


def largest_feedback(out: Path) -> tuple[int, str]:
    sizes = [(p.stat().st_size, str(p.relative_to(out))) for p in out.glob("students/*/*")
             if p.suffix in (".md", ".html", ".json")]
    return max(sizes) if sizes else (0, "")


def run() -> dict:
    os.environ.setdefault("AUTOGRADER_SECRET", secrets.token_hex(16))  # grade-class refuses the public one
    with tempfile.TemporaryDirectory(prefix="bench-catalogue-") as tmp:
        base = Path(tmp)
        entries = catalogue.build(base / "submitted")
        summary = grade_class(base / "submitted", catalogue.ASSIGNMENT, base / "out", workers=CONFIG["workers"],
                              limits=catalogue.LIMITS, log=lambda line: None)
        records = {p.parent.name: json.loads(p.read_text()) for p in (base / "out").glob("students/*/01_attention.json")}
        rows = catalogue.check(entries, records)
        size, name = largest_feedback(base / "out")
    ok = sum(r["ok"] for r in rows)
    return {
        "metric": "submissions with their expected status, none above honest", "unit": "submissions", "value": ok,
        "baseline": "all submissions", "baseline_value": len(rows), "config": CONFIG,
        "submissions": len(rows), "behaviours": sum(len(e.behaviours) for e in entries),
        "scored_above_honest": sum(r["above_honest"] for r in rows), "batch_finished": len(records) == len(rows),
        "seconds": summary["seconds"], "statuses": summary["statuses"],
        "largest_feedback_bytes": size, "largest_feedback_file": name,
        "rows": [{k: r[k] for k in ("student", "status", "score", "expected_status", "ok", "problems", "behaviours")}
                 for r in rows],
        "sandbox": summary["sandbox"],
    }
