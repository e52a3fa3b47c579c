"""Run a submission in a sandboxed kernel and bring back its capture.

The sandbox, in order of what it protects against:

* a fresh temporary folder holding only a copy of the submission and the case inputs; the kernel
  starts there with ``HOME`` pointing to it;
* a scrubbed environment (no tokens or secrets of the grader's shell, ``HF_HUB_OFFLINE=1``);
* a network guard in the kernel (a Python audit hook installed from an IPython startup file)
  that refuses any connection or name look-up that is not on the loopback interface;
* resource limits inherited by the kernel: address space, file size, CPU seconds;
* a timeout per cell (the cell is interrupted, later cells still run) and a wall clock for the
  whole notebook (the whole process group is killed).

What runs in the kernel is untrusted: only the plain arrays it writes come back, and they are
checked by :mod:`autograder.compare`.
"""
from __future__ import annotations

import inspect
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import numpy as np

from . import harness, netguard
from .execute import CAPTURE_TAG, KERNEL_DIED
from .spec import Assignment

GIB = 1024 ** 3


@dataclass
class Limits:
    cell_timeout: int = 300          # seconds per cell before it is interrupted
    capture_timeout: int = 600       # seconds for the grader's cell that calls every exercise
    total_timeout: int = 900         # seconds for the whole notebook before the kernel is killed
    memory_bytes: int = 12 * GIB     # address space of the kernel (torch reserves a lot of it)
    file_bytes: int = 512 * 1024**2  # largest file the kernel may write


@dataclass
class Execution:
    status: str                      # completed | timeout | crashed
    seconds: float
    message: str = ""
    report: dict | None = None       # capture.json
    arrays: dict = field(default_factory=dict)
    notebook: nbformat.NotebookNode | None = None


def capture_cell_source(assignment: Assignment, keys: dict[str, dict[str, list[str]]], inputs_path: str,
                        out_prefix: str) -> str:
    """The cell appended to a submission: the harness source plus each exercise's ``call``.

    ``keys[exercise id][case name]`` lists the input arrays of that case (see :func:`write_inputs`).
    """
    spec = []
    for ex in assignment.exercises:
        spec.append({
            "id": ex.id,
            "callable": ex.callable,
            "call_source": textwrap.dedent(inspect.getsource(ex.call)),
            "call_name": ex.call.__name__,
            "cases": keys[ex.id],
        })
    return (
        "# Appended by the grader: calls your functions on the grading cases.\n"
        "def __course_capture(_source, _spec):\n"
        "    _scope = {}\n"
        "    exec(compile(_source, 'autograder_harness', 'exec'), _scope)\n"
        f"    _scope['capture'](_spec, globals(), {inputs_path!r}, {out_prefix!r})\n"
        f"__course_capture({inspect.getsource(harness)!r}, __import__('json').loads({json.dumps(spec)!r}))\n"
    )


def write_inputs(assignment: Assignment, path: Path) -> dict[str, dict[str, list[str]]]:
    """Save every case's inputs as ``<exercise>/<case>/<name>`` arrays; return the names per case."""
    arrays, keys = {}, {}
    for ex in assignment.exercises:
        keys[ex.id] = {}
        for case in ex.cases:
            inputs = ex.inputs(case)
            keys[ex.id][case.name] = sorted(inputs)
            arrays.update({f"{ex.id}/{case.name}/{key}": np.asarray(value) for key, value in inputs.items()})
    np.savez(path, **arrays)
    return keys


def _limit(limits: Limits):
    def apply():  # runs in the child between fork and exec
        for which, value in ((resource.RLIMIT_AS, limits.memory_bytes),
                             (resource.RLIMIT_FSIZE, limits.file_bytes),
                             (resource.RLIMIT_CPU, limits.total_timeout * 2),
                             (resource.RLIMIT_CORE, 0)):
            try:
                resource.setrlimit(which, (value, value))
            except (ValueError, OSError):
                pass
    return apply


def sandbox_env(workdir: Path) -> dict[str, str]:
    """A minimal environment for the kernel: nothing of the grader's shell leaks in."""
    from utils.assets import cache_dir

    ipython_dir = workdir / ".ipython"
    startup = ipython_dir / "profile_default" / "startup"
    startup.mkdir(parents=True, exist_ok=True)
    guard = inspect.getsource(netguard) + "\ninstall()\n"
    (startup / "00-no-network.py").write_text(guard, encoding="utf-8")
    bin_dir = str(Path(sys.executable).parent)
    return {
        "PATH": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(workdir),
        "TMPDIR": str(workdir / "tmp"),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "IPYTHONDIR": str(ipython_dir),
        "JUPYTER_RUNTIME_DIR": str(workdir / ".jupyter-runtime"),
        "MPLCONFIGDIR": str(workdir / ".matplotlib"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",
        "LLM_COURSE_CACHE": str(cache_dir()),
        "LLM_COURSE_GRADING": "1",
    }


def cell_errors(nb: nbformat.NotebookNode) -> list[dict]:
    """``[{"cell": n, "error": "NameError: ..."}]`` for each code cell that raised.

    ``n`` counts the learner's code cells from 1, as they see them in Jupyter.
    """
    found = []
    number = 0
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        if cell.cell_type != "code" or "injected-parameters" in tags or CAPTURE_TAG in tags:
            continue  # papermill's FAST/SEED cell and the grader's cell are not the learner's
        number += 1
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                text = f"{output.get('ename', 'Error')}: {output.get('evalue', '')}"
                found.append({"cell": number, "error": text[:300]})
    return found


def run(nb: nbformat.NotebookNode, assignment: Assignment, limits: Limits, parameters: dict | None = None,
        keep_executed: Path | None = None) -> Execution:
    """Execute ``nb`` (already validated) with the capture cell appended; never raises for its content."""
    start = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="course-grade-"))
    try:
        (workdir / "tmp").mkdir()
        grader_dir = workdir / "grader"
        grader_dir.mkdir()
        inputs_path = grader_dir / "inputs.npz"
        keys = write_inputs(assignment, inputs_path)
        out_prefix = str(grader_dir / "capture")
        nb = nbformat.from_dict(json.loads(json.dumps(nb)))  # a copy we may change
        capture = nbformat.v4.new_code_cell(capture_cell_source(assignment, keys, str(inputs_path), out_prefix))
        capture.metadata["tags"] = [CAPTURE_TAG]
        nb.cells.append(capture)
        source, executed = workdir / "submission.ipynb", workdir / "executed.ipynb"
        nbformat.write(nb, source)
        command = [sys.executable, "-m", "autograder.execute", str(source), str(executed),
                   "--cell-timeout", str(limits.cell_timeout), "--capture-timeout", str(limits.capture_timeout),
                   "--cwd", str(workdir)]
        for name, value in (parameters or {}).items():
            command += ["-p", name, repr(value)]
        env = sandbox_env(workdir)
        env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)  # autograder.execute itself
        process = subprocess.Popen(command, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_limit(limits))
        try:
            _, stderr = process.communicate(timeout=limits.total_timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            _, stderr = process.communicate()
            timed_out = True
        finally:
            try:
                os.killpg(process.pid, signal.SIGKILL)  # the kernel and anything it started
            except ProcessLookupError:
                pass
        seconds = time.perf_counter() - start
        executed_nb = None
        if executed.exists():
            try:
                executed_nb = nbformat.read(executed, as_version=4)
                if keep_executed is not None:
                    keep_executed.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(executed, keep_executed)
            except Exception:  # noqa: BLE001 - a damaged output notebook only loses detail
                executed_nb = None
        tail = stderr.decode("utf-8", "replace").strip().splitlines()[-1:] if stderr else []
        if timed_out:
            return Execution("timeout", seconds, f"the notebook ran longer than {limits.total_timeout} s and was stopped",
                             notebook=executed_nb)
        report, arrays = _read_capture(Path(out_prefix))
        if report is None:
            if process.returncode == KERNEL_DIED:
                why = "the kernel died (a crash, os._exit, or running out of memory)"
            elif process.returncode and process.returncode < 0:
                why = f"the notebook process was killed by signal {-process.returncode}"
            else:
                why = "the grader's cell did not run to the end" + (f" ({tail[0][:300]})" if tail else "")
            return Execution("crashed", seconds, why, notebook=executed_nb)
        return Execution("completed", seconds, "", report, arrays, executed_nb)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _read_capture(prefix: Path) -> tuple[dict | None, dict]:
    """capture.json and capture.npz as untrusted data: no pickles, arrays of numbers only."""
    try:
        report = json.loads(prefix.with_suffix(".json").read_text(encoding="utf-8"))
        if not isinstance(report, dict):
            return None, {}
        arrays = {}
        with np.load(prefix.with_suffix(".npz"), allow_pickle=False) as stored:
            for key in stored.files:
                value = stored[key]
                if type(value) is np.ndarray and value.dtype.kind in "biuf":
                    arrays[key] = value
        return report, arrays
    except Exception:  # noqa: BLE001 - missing or forged files mean no capture
        return None, {}
