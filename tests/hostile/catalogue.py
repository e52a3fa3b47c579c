"""A catalogue of hostile and broken submissions of notebook 01, with what the grader must make of them.

Used by the test beside it (``test_hostile.py``) and by ``make bench`` (``benchmarks/grading_catalogue.py``):
:func:`build` writes them in nbgrader's layout (``<student>/01_attention/<notebook>.ipynb``), one
"student" per submission, and :func:`check` compares grade-class's records with the expectations.
Each attack the grader was once beaten by (issue 9) is here, with the status and the most points
it may get.

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
    link: str | None = None          # the notebook is a link to this path (relative to the class folder)
    flags: list[str] = field(default_factory=list)        # exercises the record must flag for the instructor


def _honest() -> list[str]:
    return solution_code_cells(ASSIGNMENT)


def _with(*extra: str, before: bool = False) -> list[str]:
    honest = _honest()
    return [*honest[:2], *extra, *honest[2:]] if before else [*honest, *extra]


SOLUTIONS = str(ROOT / "solutions" / f"{ASSIGNMENT}.ipynb")
BACKUP = "/tmp/course-catalogue-backup"            # another copy of the course, made by the test: invisible
HOST_SOCKET = "/tmp/course-catalogue-host.sock"    # a Unix socket on the host, made by the test: unreachable
SHM_KEY = 0x5EED1                                  # a SysV segment a run tries to leave for the next one
LOCK_FILE = "/run/lock/course-catalogue-lock"      # a file a run tries to leave for the next one

ENV_PROBES = [
    # (cell, the error it must raise)
    ("import sys\nsys.exit(0)  # leave early", None),
    ("def broken(:\n    pass", "SyntaxError"),
    (f"open({SOLUTIONS!r}).read()  # the solutions", "FileNotFoundError"),
    (f"open({BACKUP + '/solutions/01_attention.ipynb'!r}).read()  # another clone on the machine",
     "FileNotFoundError"),
    ("import os, sys\nfound = [os.path.join(d, f) for d, dirs, files in os.walk('/')\n"
     "         if not d.startswith(('/proc', '/sys', '/dev', '/usr', sys.prefix, sys.base_prefix))\n"
     "         for f in files if f.endswith('.ipynb')]\n"
     "raise FileNotFoundError(f'notebooks anywhere: {found}')  # solutions, classmates", "notebooks anywhere: []"),
    ("import glob, os\nfound = [p for d in (os.getcwd(), '/tmp', os.path.expanduser('~')) "
     "for p in glob.glob(d + '/**/*.npz', recursive=True)]\n"
     "open(found[0], 'rb').read() if found else (_ for _ in ()).throw(FileNotFoundError('no grader inputs on disk'))",
     "FileNotFoundError: no grader inputs"),
    ("import os\nos.environ['AUTOGRADER_SECRET']  # the hidden cases' secret", "KeyError"),
    ("import utils.attention  # the references of this notebook", "ModuleNotFoundError"),
    ("from autograder.oracles import ORACLES  # the grader's references and judges", "ModuleNotFoundError"),
    ("import os\nopen(f'/proc/{os.getppid()}/mem', 'rb').read(1)  # the executor holds the hidden inputs",
     "PermissionError"),
    ("import os\nos.listdir(f'/proc/{os.getppid()}/fd')  # and the pipe back to the grader", "PermissionError"),
    ("import subprocess, sys\nr = subprocess.run([sys.executable, '-c', 'import socket; "
     "socket.create_connection((\"1.1.1.1\", 80), timeout=3)'], capture_output=True, text=True)\n"
     "raise ConnectionError(r.stderr.strip().splitlines()[-1])  # a subprocess has no audit hook",
     "ConnectionError"),
    ("import urllib.request\nurllib.request.urlopen('http://example.com', timeout=3)", "network access is disabled"),
    (f"import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect({HOST_SOCKET!r})  # a host service", "FileNotFoundError"),
    (f"open({str(ROOT / 'autograder' / 'capture.py')!r}, 'a').write('# pwned')  # the grader's code",
     "PermissionError"),
    ("open('/etc/hostname', 'w').write('pwned')", "Read-only file system"),
    (f"open({LOCK_FILE!r}, 'w').write('x')  # for the next student", "FileNotFoundError"),
    ("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
     f"shm = libc.shmget({SHM_KEY}, 4096, 0o1666)  # IPC_CREAT: a segment for the next student\n"
     "raise OSError(f'shm segment {shm} made in this run only')", "made in this run only"),
    ("import pickle, os\n"
     "class Boom:\n    def __reduce__(self):\n        return (os.system, ('touch /tmp/course-pickle-was-loaded',))\n"
     "for name in ('capture.npz', 'capture.json', 'capture.pkl', 'grader/capture.npz'):\n"
     "    os.makedirs(os.path.dirname(name) or '.', exist_ok=True)\n"
     "    open(name, 'wb').write(pickle.dumps(Boom()))\n"
     "raise RuntimeError('pickles left for the grader')", "RuntimeError: pickles left"),
    ("import os, time\nif os.fork() == 0:\n    os.setsid()  # leaves the process group\n    time.sleep(600)\n"
     "    os._exit(0)\nraise RuntimeError('a daemon started')", "RuntimeError: a daemon"),
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
import json, re
def forge(lines):
    text = "".join(lines)
    found = re.search(r"_inputs, '([^']+)', '([0-9a-f]+)', (True|False)\)", text)
    if "__course_capture" not in text or not found:
        return lines
    path, nonce = found.group(1), found.group(2)
    cases = {c: {"status": "ok"} for c in ["2-D, like the seed", "batched heads, causal", "T_q != T_k, d_v != d",
                                           "padding mask (B,1,1,T)"]}
    header = json.dumps({"nonce": nonce, "report": {"attention.sdpa": {"cases": cases}},
                         "arrays": {f"attention.sdpa/{c}/output": ["float32", [1], 0] for c in cases}}).encode()
    forged = (f"import os\nos.makedirs(os.path.dirname({path!r}), exist_ok=True)\n"
              f"open({path!r}, 'wb').write({b'COURSE-CAPTURE-1' + bytes([10]) + len(header).to_bytes(8, 'little') + header + bytes(4)!r})\n")
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


USES_LIBRARY = """
def scaled_dot_product_attention(q, k, v, mask=None):
    weights = torch.softmax((q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).masked_fill(
        ~mask if mask is not None else torch.zeros((), dtype=torch.bool), float("-inf")), dim=-1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask), weights
"""

LEAKY_EXCEPTIONS = """
def scaled_dot_product_attention(q, k, v, mask=None):
    values = " ".join(repr(round(float(x), 5)) for x in q.flatten()[:3])
    raise type("LEAK " + values, (Exception,), {})("LEAK " + values)
"""

LATE_WRITER = """
import glob, threading, time
def _forge():
    while True:
        for path in glob.glob('/home/student/.grader-*/*.bin'):
            try:
                data = open(path, 'rb').read()
                open(path, 'wb').write(data.replace(b'"status": "error"', b'"status": "ok"   '))
            except OSError:
                pass
        time.sleep(0.001)
threading.Thread(target=_forge, daemon=True).start()
"""

HEADER_BOMB = """
import json
_dumps = json.dumps
def _lie(obj, *a, **k):
    if isinstance(obj, dict) and "nonce" in obj and "arrays" in obj:
        obj = {**obj, "arrays": {key: [meta[0], [1 << 40], meta[2]] for key, meta in obj["arrays"].items()}}
    return _dumps(obj, *a, **k)
json.dumps = _lie
"""

SIZE_BOMB = """
import json
_dumps = json.dumps
json.dumps = lambda obj, *a, **k: _dumps(obj, *a, **k) + (" " * (300 * 2**20) if isinstance(obj, dict) and "nonce" in obj else "")
"""

KILL_EXECUTOR = """
import os
def _kill(lines):
    if "__course_capture" in "".join(lines):
        open("executed.ipynb", "w").write('{"cells": [' + ",".join(['{"cell_type": "code", "source": "", '
            '"metadata": {}, "outputs": [{"output_type": "error", "ename": "E", "evalue": "x", "traceback": []}]}']
            * 230_000) + ']}')
        os.kill(os.getppid(), 9)
    return lines
get_ipython().input_transformers_post.append(_kill)
"""

MEMORY_SPLIT = """
import subprocess, sys
hog = "b = bytearray(1536 * 2**20); b[::4096] = bytes(len(b[::4096])); import time; time.sleep(8)"
for name in ("hog1", "hog2"):  # 600 MiB in /dev/shm (each file under the per-file size limit)
    open(f"/dev/shm/{name}", "wb").write(bytes(300 * 2**20))
children = [subprocess.Popen([sys.executable, "-c", hog]) for _ in range(3)]
raise RuntimeError(f"children ended with {[c.wait() for c in children]}")
"""

INJECTION = """
def scaled_dot_product_attention(q, k, v, mask=None):
    raise ValueError("\\n# 01_attention: 10 / 10\\n| ✓ attention.mha | passed | 4/4 | |\\n"
                     "<script>alert(1)</script> [click](http://evil.example) =HYPERLINK(\\"http://x\\")")
"""


def nested(depth: int) -> bytes:
    return b'{"nbformat": 4, "cells": ' + b"[" * depth + b"]" * depth + b"}"


def entries() -> list[Entry]:
    honest_statuses = {e: "passed" for e in ("attention.sdpa", "attention.causal_mask", "attention.padding_mask",
                                             "attention.mha")}
    empty_nb = json.dumps({"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": []}).encode()
    nb3 = json.dumps({"nbformat": 3, "nbformat_minor": 0, "metadata": {}, "worksheets": []}).encode()
    return [
        Entry("honest", ["the solution's code, no tricks"], "graded", _honest(), exercise_status=honest_statuses),
        Entry("env_probe", ["sys.exit(0) early", "a syntax error", "reading the solutions from disk",
                            "reading another clone of the course", "searching the whole disk for notebooks",
                            "looking for hidden inputs on disk", "reading the secret from the environment",
                            "importing this notebook's references", "importing the grader's oracles",
                            "reading the executor's memory", "reading the executor's file descriptors",
                            "a network connection from a subprocess", "a network connection from the kernel",
                            "a Unix socket of the host", "writing the grader's code", "writing outside the work folder",
                            "a file in /run/lock for the next student", "a SysV shared-memory segment for the next one",
                            "pickles left for the grader", "a daemon that outlives the notebook",
                            "a 64 GiB allocation", "a memory hog that grows",
                            "an infinite loop", "network interfaces (only lo)",
                            "edited metadata: points 1000, a duplicated grade_id, test cells deleted"],
              "graded", _with(*[c for c, _ in ENV_PROBES[:14]], before=True),
              exercise_status=honest_statuses, cell_errors=[e for _, e in ENV_PROBES[:14] if e]),
        Entry("env_probe_2", ["(the rest of env_probe: a record lists 20 cell errors at most)"],
              "graded", _with(*[c for c, _ in ENV_PROBES[14:]], before=True),
              exercise_status=honest_statuses, cell_errors=[e for _, e in ENV_PROBES[14:] if e]),
        Entry("uses_library", ["attention computed by F.scaled_dot_product_attention, the grader's oracle"], "graded",
              _with(USES_LIBRARY), exercise_status=honest_statuses, flags=["attention.sdpa"]),
        Entry("leaky_exceptions", ["exception classes named after the inputs, to carry hidden inputs into feedback"],
              "graded", _with(LEAKY_EXCEPTIONS), max_points=7, exercise_status={"attention.sdpa": "error"}),
        Entry("late_writer", ["a thread that rewrites the capture files after the grader's cells"], "graded",
              _with(LATE_WRITER)),
        Entry("header_bomb", ["a capture whose header declares arrays of 2**40 numbers"], "graded",
              _with(HEADER_BOMB), max_points=0),
        Entry("size_bomb", ["a 300 MiB capture file (the limit is 64 MiB)"], "crashed", _with(SIZE_BOMB), max_points=0,
              message="no readable result"),
        Entry("kill_executor", ["a 230,000-cell executed.ipynb, then the executor killed"], "crashed",
              _with(KILL_EXECUTOR), max_points=0, message="killed"),
        Entry("tagged_capture", ["a learner cell tagged as the grader's, running past the cell limit"], "graded",
              _with("import time\ntime.sleep(600)  # tagged course-capture", before=True),
              exercise_status=honest_statuses, cell_errors=["KeyboardInterrupt"]),
        Entry("memory_split", ["three children of 1.5 GiB and 600 MiB in /dev/shm under a 4 GiB limit"],
              "graded|crashed", _with(MEMORY_SPLIT, before=True)),
        Entry("injector", ["Markdown, HTML and a CSV formula in an error message"], "graded", _with(INJECTION),
              max_points=7, exercise_status={"attention.sdpa": "error"}),
        Entry("=cmd|' -C calc'!A0", ["a student folder named like a spreadsheet formula"], "invalid",
              raw=b"{", max_points=0),
        Entry("gradebook.db", ["a student folder named like the gradebook"], "invalid", raw=b"{", max_points=0),
        Entry("link_solutions", ["the notebook is a link to the solutions"], "invalid", link=SOLUTIONS, max_points=0,
              message="link"),
        Entry("link_classmate", ["the notebook is a link to a classmate's"], "invalid",
              link="honest/01_attention/01_attention.ipynb", max_points=0, message="link"),
        Entry("nested_json", ["JSON nested 100,000 levels deep"], "invalid", raw=nested(100_000), max_points=0,
              message="nested"),
        Entry("big_output", ["a 100 MB print", "one giant line of 100 MB"], "graded",
              _with("for _ in range(200_000):\n    print('x' * 499)", "print('y' * 100_000_000)"),
              exercise_status=honest_statuses),
        Entry("stubborn_loop", ["an infinite loop that ignores interrupts"], "timeout",
              _with("while True:\n    try:\n        while True:\n            pass\n    except KeyboardInterrupt:\n"
                    "        pass", before=True), max_points=0, message="ran longer"),
        # The bomb's copies of the kernel hold the run's process slots (its pids cgroup) until the run ends, so
        # whether the executor can still start a thread for the grader's cells is a race: graded, crashed, or
        # (on a loaded machine) out of time. Contained in every case.
        Entry("fork_bomb", ["a fork bomb"], "graded|crashed|timeout",
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
              _with(AST_TRANSFORMER), max_points=0, message="no readable result"),
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
    for cell in nb.cells:
        if "# tagged course-capture" in cell.source:
            cell.metadata["tags"] = ["course-capture"]
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
        if entry.link is not None:
            target = Path(entry.link) if entry.link.startswith("/") else submitted / entry.link
            (folder / entry.filename).symlink_to(target)
        elif entry.cells is not None:
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
        flagged = sorted({f["exercise"] for f in record.get("flags", []) if f["exercise"]})
        if flagged != sorted(entry.flags):
            problems.append(f"flags {flagged}, expected {entry.flags}")
        if entry.message and entry.message not in record.get("message", ""):
            problems.append(f"message {record.get('message', '')[:200]!r} lacks {entry.message!r}")
        rows.append({"student": entry.student, "behaviours": entry.behaviours, "status": record["status"],
                     "score": record["score"], "expected_status": entry.status,
                     "above_honest": record["score"] > honest + 1e-9, "ok": not problems, "problems": problems})
    return rows
