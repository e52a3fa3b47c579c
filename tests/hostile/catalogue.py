"""A catalogue of hostile and broken submissions of notebook 01, with what the grader must make of them.

Used by the tests (``tests/test_hostile.py``) and by ``make bench`` (``benchmarks/catalogue.py``):
:func:`build` writes them in nbgrader's layout (``<student>/01_attention/<notebook>.ipynb``), one
"student" per submission, and :func:`check` compares grade-class's records with the expectations.

Every submission must get its expected status and never more points than ``honest``, the same
solution code without tricks. To keep the number of kernels small (each costs seconds), behaviours
that leave the status alone share a submission, one cell each, and each is checked through the
error its own cell must raise (``cell_errors``); the others get a submission of their own.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from autograder.sandbox import GIB, Limits
from conftest import solution_code_cells

ROOT = Path(__file__).resolve().parents[2]
ASSIGNMENT = "01_attention"
# Limits for the catalogue: short, so the endless submissions cost little; 4 GiB of address space.
LIMITS = Limits(cell_timeout=20, total_timeout=75, memory_bytes=4 * GIB)


def _stub(name: str) -> str:
    released = nbformat.read(ROOT / "notebooks" / f"{ASSIGNMENT}.ipynb", as_version=4)
    for cell in released.cells:
        if cell.metadata.get("nbgrader", {}).get("grade_id") == name:
            return cell.source
    raise KeyError(name)


@dataclass
class Entry:
    student: str
    behaviours: list[str]            # what it tries, one line each
    status: str                      # the status its record must have ("a|b": either)
    cells: list[str] | None = None   # code cells; None when ``raw`` holds the file
    raw: bytes | None = None
    filename: str = f"{ASSIGNMENT}.ipynb"
    max_points: float | None = None  # the most it may earn (default: what honest earns)
    exercise_status: dict[str, str] = field(default_factory=dict)
    cell_errors: list[str] = field(default_factory=list)  # a fragment per expected error, in cell order
    message: str = ""                # a fragment of the record's message


def _honest() -> list[str]:
    return solution_code_cells(ASSIGNMENT)


def _with(*extra: str, before: bool = False) -> list[str]:
    honest = _honest()
    return [*honest[:2], *extra, *honest[2:]] if before else [*honest, *extra]


SOLUTIONS = str(ROOT / "solutions" / f"{ASSIGNMENT}.ipynb")
LEFTOVER = "/tmp/course-catalogue-leftover"        # must be gone after grading
DAEMON = "/tmp/course-catalogue-daemon-survived"  # must never appear (the daemon is killed)

ENV_PROBES = [
    # (cell, the error it must raise)
    ("import sys\nsys.exit(0)  # leave early", None),
    ("def broken(:\n    pass", "SyntaxError"),
    (f"open({SOLUTIONS!r}).read()  # the solutions", "PermissionError"),
    ("import glob, os\nfound = [p for d in (os.getcwd(), '/tmp', os.path.expanduser('~')) "
     "for p in glob.glob(d + '/**/*.npz', recursive=True)]\n"
     "open(found[0], 'rb').read() if found else (_ for _ in ()).throw(FileNotFoundError('no grader inputs on disk'))",
     "FileNotFoundError: no grader inputs"),
    ("import os\nos.environ['AUTOGRADER_SECRET']  # the hidden cases' secret", "KeyError"),
    ("import subprocess, sys\nr = subprocess.run([sys.executable, '-c', 'import socket; "
     "socket.create_connection((\"1.1.1.1\", 80), timeout=3)'], capture_output=True, text=True)\n"
     "raise ConnectionError(r.stderr.strip().splitlines()[-1])  # a subprocess has no audit hook",
     "ConnectionError"),
    ("import urllib.request\nurllib.request.urlopen('http://example.com', timeout=3)", "network access is disabled"),
    (f"open({str(ROOT / 'autograder' / 'harness.py')!r}, 'a').write('# pwned')  # the grader's code",
     "PermissionError"),
    ("open('/etc/hostname', 'w').write('pwned')", "PermissionError"),
    ("import pickle, os\n"
     "class Boom:\n    def __reduce__(self):\n        return (os.system, ('touch /tmp/course-pickle-was-loaded',))\n"
     "for name in ('capture.npz', 'capture.json', 'capture.pkl', 'grader/capture.npz'):\n"
     "    os.makedirs(os.path.dirname(name) or '.', exist_ok=True)\n"
     "    open(name, 'wb').write(pickle.dumps(Boom()))\n"
     "raise RuntimeError('pickles left for the grader')", "RuntimeError: pickles left"),
    (f"open({LEFTOVER!r}, 'w').write('x')\nraise RuntimeError('a file left in /tmp')", "RuntimeError: a file left"),
    ("import os, time\nif os.fork() == 0:\n    os.setsid()  # leaves the process group\n    time.sleep(20)\n"
     f"    open({DAEMON!r}, 'w').write('x')\n    os._exit(0)\nraise RuntimeError('a daemon started')",
     "RuntimeError: a daemon"),
    ("hog = bytearray(64 * 2**30)  # 64 GiB at once", "MemoryError"),
    ("hog = []\nwhile True:\n    hog.append(bytearray(2**28))  # 256 MiB at a time", "MemoryError"),
    ("del hog\nwhile True:\n    pass  # an endless loop: the cell is interrupted", "KeyboardInterrupt"),
    ("import socket\nraise OSError(str([n for _, n in socket.if_nameindex()]))  # only lo", "OSError: ['lo']"),
]

PATCHES = """\
import numpy, numpy.testing, torch
torch.allclose = lambda *a, **k: True
torch.equal = lambda *a, **k: True
numpy.allclose = lambda *a, **k: True
numpy.testing.assert_allclose = lambda *a, **k: None
numpy.array_equal = lambda *a, **k: True
torch.Tensor.__eq__ = lambda self, other: torch.ones_like(self, dtype=torch.bool)
def scaled_dot_product_attention(q, k, v, mask=None):
    return torch.zeros_like(q), torch.zeros(q.shape[:-1] + (k.shape[-2],))
"""

INPUT_TRANSFORMER = r"""
import re
def forge(lines):
    text = "".join(lines)
    if "__course_capture" not in text:
        return lines
    prefix = re.search(r"_inputs, '([^']+)', '([0-9a-f]+)'\)", text)
    forged = (
        "import json, os, numpy as np\n"
        f"os.makedirs(os.path.dirname({prefix.group(1)!r}), exist_ok=True)\n"
        "cases = {c: {'status': 'ok'} for c in ['2-D', 'batched heads', 'causal', 'padding']}\n"
        f"json.dump({{'__nonce__': {prefix.group(2)!r}, 'attention.sdpa': {{'cases': cases}}}}, "
        f"open({prefix.group(1)!r} + '.json', 'w'))\n"
        f"np.savez({prefix.group(1)!r} + '.npz', x=np.zeros(1))\n"
    )
    return [forged]
get_ipython().input_transformers_post.append(forge)
"""

AST_TRANSFORMER = """
import ast
class Sabotage(ast.NodeTransformer):
    def visit_Module(self, node):
        if any(isinstance(n, ast.FunctionDef) and n.name == "__course_capture" for n in node.body):
            return ast.Module(body=[ast.Pass()], type_ignores=[])
        return node
get_ipython().ast_transformers.append(Sabotage())
"""

FORGED_FILES = """
import json, os, numpy as np
report = {ex: {"cases": {}} for ex in ["attention.sdpa", "attention.causal_mask", "attention.padding_mask", "attention.mha"]}
for folder in (".", "grader", ".capture", os.path.expanduser("~")):
    os.makedirs(folder, exist_ok=True)
    json.dump(report, open(os.path.join(folder, "capture.json"), "w"))
    np.savez(os.path.join(folder, "capture.npz"), x=np.zeros(3))
"""

LIARS = """
import numpy as np, torch
class Liar:
    shape = (2, 2)
    def __eq__(self, other): return True
    def __float__(self): return 1.0
    def __array__(self, *a, **k): return np.zeros((2, 2), np.float32)
    def __len__(self): return 2
def scaled_dot_product_attention(q, k, v, mask=None):
    return Liar(), Liar()
class Sneaky(torch.Tensor):
    def __eq__(self, other): return torch.ones(self.shape, dtype=torch.bool)
def causal_mask(T):
    return torch.ones(T, T).tril().bool().as_subclass(Sneaky)
def padding_mask(lengths):  # the wrong signature
    return lengths
"""

NAN_HUGE = """
def scaled_dot_product_attention(q, k, v, mask=None):
    out = torch.full_like(q, float("nan"))
    return out, torch.full(q.shape[:-1] + (k.shape[-2],), float("inf"))
def causal_mask(T):
    return torch.ones(40_000, 1_000, dtype=torch.bool)  # 40 M entries
"""


def entries() -> list[Entry]:
    honest_statuses = {e: "passed" for e in ("attention.sdpa", "attention.causal_mask", "attention.padding_mask",
                                             "attention.mha")}
    empty_nb = json.dumps({"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": []}).encode()
    nb3 = json.dumps({"nbformat": 3, "nbformat_minor": 0, "metadata": {}, "worksheets": []}).encode()
    return [
        Entry("honest", ["the solution's code, no tricks"], "graded", _honest(), exercise_status=honest_statuses),
        Entry("env_probe", ["sys.exit(0) early", "a syntax error", "reading the solutions from disk",
                            "looking for hidden inputs on disk", "reading the secret from the environment",
                            "a network connection from a subprocess", "a network connection from the kernel",
                            "writing the grader's code", "writing outside the work folder",
                            "pickles left for the grader", "a file left in /tmp", "a daemon that outlives the notebook",
                            "a 64 GiB allocation", "a memory hog that grows",
                            "an infinite loop", "network interfaces (only lo)",
                            "edited metadata: points 1000, a duplicated grade_id, test cells deleted"],
              "graded", _with(*[c for c, _ in ENV_PROBES], before=True),
              exercise_status=honest_statuses, cell_errors=[e for _, e in ENV_PROBES if e]),
        Entry("big_output", ["a 100 MB print", "one giant line of 100 MB"], "graded",
              _with("for _ in range(200_000):\n    print('x' * 499)", "print('y' * 100_000_000)"),
              exercise_status=honest_statuses),
        Entry("stubborn_loop", ["an infinite loop that ignores interrupts"], "timeout",
              _with("while True:\n    try:\n        while True:\n            pass\n    except KeyboardInterrupt:\n"
                    "        pass", before=True), max_points=0, message="ran longer"),
        # The bomb's copies of the kernel hold the uid's process slots until the run ends, so whether
        # the executor can still start a thread for the grader's cell is a race: graded or crashed.
        Entry("fork_bomb", ["a fork bomb"], "graded|crashed",
              _with("import os\nwhile True:\n    os.fork()", before=True)),
        Entry("os_exit", ["os._exit in a cell"], "crashed", ["import os\nos._exit(0)"], max_points=0,
              message="kernel died"),
        Entry("segfault", ["a segmentation fault"], "crashed", ["import ctypes\nctypes.string_at(0)"], max_points=0,
              message="kernel died"),
        Entry("patched_checks", ["a monkeypatched torch.allclose, numpy.testing, Tensor.__eq__",
                                 "with a wrong scaled_dot_product_attention"], "graded", _with(PATCHES),
              max_points=7, exercise_status={"attention.sdpa": "failed"}),
        Entry("input_transformer", ["an IPython input transformer that forges the grader's capture"], "graded",
              _with(INPUT_TRANSFORMER), max_points=0,
              exercise_status={"attention.sdpa": "failed", "attention.mha": "missing"}),
        Entry("ast_transformer", ["an IPython AST transformer that removes the grader's cell"], "crashed",
              _with(AST_TRANSFORMER), max_points=0, message="did not run to the end"),
        Entry("forged_files", ["forged capture files", "with the released stubs"], "graded",
              [*_honest()[:2], FORGED_FILES, *(_stub(n) for n in ("sdpa", "causal_mask", "padding_mask", "mha"))],
              max_points=0),
        Entry("liars", ["objects whose __eq__/__float__ lie", "a tensor subclass", "a wrong signature",
                        "a missing function"], "graded", [*_honest()[:2], LIARS], max_points=0,
              exercise_status={"attention.sdpa": "error", "attention.causal_mask": "error",
                               "attention.padding_mask": "error", "attention.mha": "missing"}),
        Entry("nan_huge", ["NaN and Inf outputs", "a huge tensor"], "graded", _with(NAN_HUGE), max_points=6,
              exercise_status={"attention.sdpa": "failed", "attention.causal_mask": "error"}),
        Entry("renamed_slow", ["a renamed notebook", "a very slow but correct solution"], "graded",
              _with("import time\n_fast = scaled_dot_product_attention\n"
                    "def scaled_dot_product_attention(q, k, v, mask=None):\n    time.sleep(1)\n"
                    "    return _fast(q, k, v, mask)"),
              filename="my attention (final).ipynb", exercise_status=honest_statuses, message="graded my attention"),
        Entry("corrupt_json", ["corrupt JSON"], "invalid", raw=b'{"cells": [', max_points=0, message="not valid"),
        Entry("nbformat3", ["nbformat 3"], "invalid", raw=nb3, max_points=0, message="version 3"),
        Entry("non_utf8", ["non-UTF-8 bytes"], "invalid", raw=b'{"cells": "\xff\xfe"}', max_points=0,
              message="not UTF-8"),
        Entry("empty_notebook", ["an empty notebook"], "invalid", raw=empty_nb, max_points=0, message="no code cells"),
        Entry("nothing_submitted", ["an empty submission folder"], "invalid", raw=None, cells=None, max_points=0,
              message="no 01_attention.ipynb"),
    ]


def _notebook(entry: Entry) -> str:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in entry.cells])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells[0].metadata["tags"] = ["parameters"]
    if entry.student == "env_probe":  # metadata a student could edit: none of it is trusted
        nb.metadata["nbgrader"] = {"total_points": 1000}
        for cell in nb.cells[2:]:
            cell.metadata["nbgrader"] = {"grade": True, "grade_id": "check_sdpa", "points": 1000,
                                         "solution": False, "locked": False, "schema_version": 3}
    return nbformat.writes(nb)


def build(submitted: Path) -> list[Entry]:
    """Write every entry as ``submitted/<student>/01_attention/<file>``; returns the entries."""
    found = entries()
    for entry in found:
        folder = submitted / entry.student / ASSIGNMENT
        folder.mkdir(parents=True, exist_ok=True)
        if entry.cells is not None:
            (folder / entry.filename).write_text(_notebook(entry), encoding="utf-8")
        elif entry.raw is not None:
            (folder / entry.filename).write_bytes(entry.raw)
    return found


def check(found: list[Entry], records: dict[str, dict]) -> list[dict]:
    """One row per entry: its status, score, whether it met the expectations, and why not."""
    honest = records["honest"]["score"]
    rows = []
    for entry in found:
        record = records.get(entry.student)
        problems = []
        if record is None:
            rows.append({"student": entry.student, "behaviours": entry.behaviours, "status": None, "score": None,
                         "expected_status": entry.status, "above_honest": False, "ok": False,
                         "problems": ["no record"]})
            continue
        limit = honest if entry.max_points is None else min(honest, entry.max_points)
        if record["status"] not in entry.status.split("|"):
            problems.append(f"status {record['status']}, expected {entry.status}: {record.get('message', '')[:200]}")
        if record["score"] > limit + 1e-9:
            problems.append(f"score {record['score']} above {limit}")
        by_id = {e["id"]: e for e in record["exercises"]}
        for exercise, status in entry.exercise_status.items():
            if by_id.get(exercise, {}).get("status") != status:
                problems.append(f"{exercise}: {by_id.get(exercise, {}).get('status')}, expected {status} "
                                f"({by_id.get(exercise, {}).get('message', '')[:150]})")
        errors = [e["error"] for e in record.get("cell_errors", [])]
        position = 0
        for fragment in entry.cell_errors:
            hit = next((i for i in range(position, len(errors)) if fragment in errors[i]), None)
            if hit is None:
                problems.append(f"no cell error with {fragment!r} (after #{position}) in {errors}")
            else:
                position = hit + 1
        if entry.message and entry.message not in record.get("message", ""):
            problems.append(f"message {record.get('message', '')[:200]!r} lacks {entry.message!r}")
        rows.append({"student": entry.student, "behaviours": entry.behaviours, "status": record["status"],
                     "score": record["score"], "expected_status": entry.status,
                     "above_honest": record["score"] > honest + 1e-9, "ok": not problems, "problems": problems})
    return rows
