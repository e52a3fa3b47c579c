"""Execute a submission in the sandbox: the executor inside it, and the launcher that starts it.

**Inside the sandbox** (``python -m autograder.execute --result-fd N < payload``), the executor:

1. makes itself non-dumpable *before* it reads anything, so that no process of its uid (the
   learner's kernel and its children) can read its memory, its file descriptors or trace it;
2. reads the payload from stdin: the submission, the parameters (``FAST=True``) and the
   grader's two cells (public cases, then hidden cases), each with an id made for this run;
3. runs the learner's cells with papermill (per-cell time limit, interrupts, going on past
   errors, outputs capped), then the grader's cells, which only it can identify;
4. streams frames to the trusted side on file descriptor ``N``, which the kernel never inherits:
   ``learner`` (the errors of the learner's cells, taken before the grader's first cell starts),
   ``notebook`` (optional: the executed learner cells), ``public`` and ``hidden`` (each capture
   file, copied as soon as its cell ends, with a size limit), and ``end``.

So the trusted side never reads a file the kernel can write, and what it shows of the learner
(error messages) was produced before any hidden input entered the kernel.

**Trusted side**: :func:`run` builds the payload, starts the executor under
:mod:`autograder.sandbox` (bubblewrap, a fresh uid, a cgroup), feeds it, and reads the frames
with a size limit and a wall clock; it never raises for anything the submission does.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import select
import signal
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

FRAME_NAME = 16                   # bytes of a frame's name, then 8 bytes of length, then the data
MAX_CAPTURE = 64 * 1024 ** 2      # bytes of one capture file (the largest of any exercise is a few MB)
MAX_NOTEBOOK = 64 * 1024 ** 2     # bytes of the executed notebook sent back
MAX_LEARNER = 256 * 1024          # bytes of the learner frame (cell errors)
MAX_ERRORS = 20                   # cell errors listed in a record
CAPTURE_TIMEOUT = 120             # seconds, at least, for each of the grader's cells
KERNEL_DIED = "the kernel died (a crash, os._exit, or running out of memory)"


# =========================================================================== inside the sandbox


def _not_dumpable() -> None:
    """PR_SET_DUMPABLE = 0: /proc/<pid>/mem, fd/ and environ of this process become unreadable to its
    own uid, and ptrace is refused (the learner's kernel runs as the same uid)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(4, 0, 0, 0, 0) != 0:  # PR_SET_DUMPABLE
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0) failed")


def send(fd: int, name: str, data: bytes) -> None:
    header = name.encode("ascii").ljust(FRAME_NAME, b" ") + len(data).to_bytes(8, "little")
    view = memoryview(header + data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def read_untrusted(path: str, limit: int) -> bytes | None:
    """A regular file the kernel wrote, read without following links, or ``None`` (missing, too big, odd)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > limit:
            return None
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read(limit + 1)
        return data if len(data) <= limit else None
    finally:
        os.close(fd)


def first_line(source: str) -> str:
    """The first line of a cell that is not blank or a comment, shortened: how a learner finds it."""
    for line in source.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            return line.strip()[:80]
    return source.strip().splitlines()[0][:80] if source.strip() else ""


def cell_errors(cells) -> list[dict]:
    """``[{"cell": n, "first_line": "...", "error": "NameError: ..."}]`` for each learner code cell that raised.

    ``n`` counts the learner's code cells from 1 (papermill's injected parameters cell is not theirs):
    it is the ``In [n]`` JupyterLab shows after Restart and Run All.
    """
    found, number = [], 0
    for cell in cells:
        if cell.cell_type != "code" or "injected-parameters" in cell.metadata.get("tags", []):
            continue
        number += 1
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                text = f"{output.get('ename', 'Error')}: {output.get('evalue', '')}"
                found.append({"cell": number, "first_line": first_line(cell.source), "error": text[:300]})
    return found


def _cap_outputs(limit: int) -> None:
    """Keep at most ``limit`` bytes of outputs in the notebook; note once that the rest was dropped."""
    from nbclient import NotebookClient
    from nbformat.v4 import new_output

    original = NotebookClient.output

    def output(self, outs, msg, display_id, cell_index):
        content = msg.get("content", {})
        size = len(str(content.get("text", ""))) + sum(len(str(v)) for v in content.get("data", {}).values()) \
            + sum(len(str(v)) for v in content.get("traceback", []))
        used = getattr(self, "_course_output_bytes", 0)
        self._course_output_bytes = used + size
        if used + size <= limit:
            return original(self, outs, msg, display_id, cell_index)
        if not getattr(self, "_course_output_noted", False):
            self._course_output_noted = True
            outs.append(new_output("stream", name="stdout",
                                   text=f"\n[the grader dropped the outputs after the first {limit} bytes]\n"))
        if msg.get("msg_type") == "error":  # keep the error itself, without its traceback
            out = new_output("error", ename=str(content.get("ename", ""))[:200],
                             evalue=str(content.get("evalue", ""))[:300], traceback=[])
            outs.append(out)
            return out
        return None

    NotebookClient.output = output


class Recorder:
    """nbclient hooks: what the executor takes out of the run, and when."""

    def __init__(self, fd: int, n_learner: int, captures: dict[str, tuple[str, str]], keep_notebook: bool,
                 started: float):
        self.fd, self.n_learner, self.captures, self.keep_notebook = fd, n_learner, captures, keep_notebook
        self.nb = None
        self.sent: set[str] = set()
        self.clock = {"start": started}              # where the time goes (benchmarks/course_time.py)
        self.cell_seconds: dict[int, float] = {}

    def on_notebook_start(self, notebook=None, **_):
        self.nb = notebook
        self.clock["notebook"] = time.monotonic()   # the kernel is started next

    def on_cell_start(self, cell=None, cell_index=None, **_):
        self.clock.setdefault("first_cell", time.monotonic())
        self.clock["cell"] = time.monotonic()
        if cell is not None and cell.get("id") in self.captures:
            self.learner_done()  # before the grader's first cell: nothing of it is in the kernel yet

    def on_cell_executed(self, cell=None, cell_index=None, **_):
        if cell_index is not None and "cell" in self.clock:
            self.cell_seconds[cell_index] = time.monotonic() - self.clock["cell"]
        if cell is not None and cell.get("id") in self.captures:
            self.take(cell.get("id"))

    def timing(self) -> dict:
        """Seconds spent: starting the executor, starting the kernel, the learner's first code cell (the
        imports), their other cells, the grader's cells."""
        clock, cells = self.clock, self.cell_seconds
        learner = [cells[i] for i in sorted(cells) if i < self.n_learner]
        code = [i for i in sorted(cells) if i < self.n_learner and self.nb is not None
                and "injected-parameters" not in self.nb.cells[i].metadata.get("tags", [])
                and "parameters" not in self.nb.cells[i].metadata.get("tags", [])]
        first = cells[code[0]] if code else 0.0
        kernel = clock.get("kernel", clock["start"])
        return {"executor_start": round(kernel - clock["start"], 2),
                "kernel_start": round(clock.get("first_cell", kernel) - kernel, 2),
                "imports_cell": round(first, 2), "learner_cells": round(sum(learner) - first, 2),
                "grader_cells": round(sum(v for i, v in cells.items() if i >= self.n_learner), 2)}

    def learner_done(self) -> None:
        if "learner" in self.sent or self.nb is None:
            return
        self.sent.add("learner")
        cells = self.nb.cells[:self.n_learner]
        errors = cell_errors(cells)
        data = {"cells": sum(c.cell_type == "code" for c in cells), "errors": errors[:MAX_ERRORS],
                "more_errors": max(0, len(errors) - MAX_ERRORS)}
        send(self.fd, "learner", json.dumps(data).encode())
        if self.keep_notebook:
            import copy

            import nbformat

            nb = copy.deepcopy(self.nb)
            nb.cells = nb.cells[:self.n_learner]
            text = nbformat.writes(nb).encode()
            if len(text) <= MAX_NOTEBOOK:
                send(self.fd, "notebook", text)

    def take(self, cell_id: str) -> None:
        phase, path = self.captures[cell_id]
        if phase in self.sent:
            return
        self.sent.add(phase)
        send(self.fd, phase, read_untrusted(path, MAX_CAPTURE) or b"")


class PreforkedKernel:
    """The learner's kernel in a warm run (:mod:`autograder.zygote`), forked from the zygote's child
    *before* the executor exists, so that nothing of the hidden cases was ever in its memory. It
    waits until :meth:`launch` gives it a connection file, then becomes an IPython kernel, as ``python
    -m ipykernel_launcher -f FILE`` would, with torch and transformers already imported.

    The process that forked it then execs the executor (a fresh address layout, not the kernel's),
    which adopts it as its child: ``PreforkedKernel(pid, fd)``. For jupyter_client it is the kernel's
    process (``poll``, ``wait``, ``send_signal``, ``kill``).
    """

    stdin = stdout = stderr = None

    def __init__(self, pid: int, go_fd: int):
        self.pid, self._go, self.returncode = pid, go_fd, None

    @classmethod
    def fork(cls, result_fd: int) -> "PreforkedKernel":
        read_end, go = os.pipe()
        pid = os.fork()
        if pid:
            os.close(read_end)
            return cls(pid, go)
        code = 1
        try:
            os.close(go)
            null = os.open("/dev/null", os.O_RDONLY)
            os.dup2(null, 0)      # not the payload's pipe
            os.close(null)
            os.close(result_fd)   # not the result pipe: the trusted side's EOF must not wait for the kernel
            with os.fdopen(read_end, "rb") as handle:
                order = handle.read(MAX_LEARNER)
            if order:
                cwd, connection_file = json.loads(order)
                os.setsid()       # its own process group: an interrupt reaches the kernel and its children
                os.chdir(cwd)
                if sys.path and sys.path[0] == "/":   # the zygote's start folder, not the learner's
                    sys.path[0] = cwd
                sys.argv = [sys.argv[0], "-f", connection_file]
                import numpy

                numpy.random.seed()   # numpy's global state came from the zygote: fresh, as in a cold kernel
                from ipykernel import kernelapp

                kernelapp.launch_new_instance()
            code = 0
        finally:
            os._exit(code)

    def launch(self, connection_file: str, cwd: str) -> "PreforkedKernel":
        os.write(self._go, json.dumps([cwd, connection_file]).encode())
        os.close(self._go)
        self._go = -1
        return self

    def poll(self):
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout=None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(str(self.pid), timeout)
            time.sleep(0.02)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def close(self) -> None:
        """Never launched (the run failed first): let it exit."""
        if self._go >= 0:
            os.close(self._go)
            self._go = -1


def preforked_manager(kernel: PreforkedKernel):
    """A jupyter_client kernel manager whose launch hands the connection file to ``kernel``."""
    from jupyter_client.manager import AsyncKernelManager

    class PreforkedKernelManager(AsyncKernelManager):
        async def _async_launch_kernel(self, kernel_cmd, **kw):
            provisioner = self.provisioner
            provisioner.process = kernel.launch(self.connection_file, str(kw.get("cwd") or os.getcwd()))
            provisioner.pid = provisioner.pgid = kernel.pid
            provisioner.cwd = kw.get("cwd")
            self._reconcile_connection_info(provisioner.connection_info)

    return PreforkedKernelManager


def execute(payload: dict, fd: int, started: float, kernel: PreforkedKernel | None = None) -> tuple[str, str, dict]:
    """Run the notebook of ``payload``; returns ``(status, message, timing)`` for the ``end`` frame.
    ``kernel``: the preforked kernel of a warm run (else papermill starts one)."""
    import nbformat
    import papermill
    from nbclient.exceptions import DeadKernelError
    from papermill.exceptions import PapermillExecutionError
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    work = os.getcwd()
    startup = Path(os.environ["IPYTHONDIR"]) / "profile_default" / "startup"
    startup.mkdir(parents=True, exist_ok=True)
    (startup / "00-no-network.py").write_text(payload["network_guard"], encoding="utf-8")
    fonts = Path(os.environ.get("LLM_COURSE_CACHE", "/nonexistent")) / "matplotlib"
    if os.environ.get("MPLCONFIGDIR") and fonts.is_dir():  # the font list built by `make setup`: no rebuild per run
        import shutil

        os.makedirs(os.environ["MPLCONFIGDIR"], exist_ok=True)
        for font_list in fonts.glob("fontlist-*.json"):
            shutil.copyfile(font_list, Path(os.environ["MPLCONFIGDIR"]) / font_list.name)
    nb = load_notebook_node(nbformat.reads(payload["notebook"], as_version=4))  # with papermill's metadata
    if payload.get("parameters"):
        nb = parameterize_notebook(nb, payload["parameters"], kernel_name="python3", language="python")
    n_learner = len(nb.cells)
    captures = {}
    for cell in payload["cells"]:
        nb.cells.append(nbformat.v4.new_code_cell(cell["source"], id=cell["id"]))
        captures[cell["id"]] = (cell["phase"], os.path.join(work, cell["path"]))
    recorder = Recorder(fd, n_learner, captures, payload.get("keep_notebook", False), started)
    cell_timeout = int(payload["cell_timeout"])
    _cap_outputs(int(payload["output_bytes"]))
    status, message = "completed", ""
    recorder.clock["kernel"] = time.monotonic()       # papermill starts the kernel, then the notebook
    warm = {"kernel_manager_class": preforked_manager(kernel)} if kernel is not None else {}
    try:
        papermill.execute_notebook(
            nb, None, kernel_name="python3", progress_bar=False, cwd=work, request_save_on_cell_execute=False, **warm,
            execution_timeout=cell_timeout,
            timeout_func=lambda cell: max(cell_timeout, CAPTURE_TIMEOUT) if cell.get("id") in captures else cell_timeout,
            # Keep going past a failing cell so later exercises still earn their credit, and turn
            # a cell that runs too long into an interrupt (KeyboardInterrupt in that cell).
            allow_errors=True, interrupt_on_timeout=True,
            on_notebook_start=recorder.on_notebook_start, on_cell_start=recorder.on_cell_start,
            on_cell_executed=recorder.on_cell_executed,
        )
    except PapermillExecutionError:
        pass  # some cells raised; their errors are in the learner frame
    except DeadKernelError:
        status, message = "kernel_died", KERNEL_DIED
    except Exception as exc:  # noqa: BLE001 - any failure becomes a message, never a crash
        text = str(exc)
        if "kernel died" in text.lower():
            status, message = "kernel_died", KERNEL_DIED
        else:
            status, message = "failed", f"{type(exc).__name__}: {text[:500]}"
    recorder.learner_done()
    for cell_id in captures:
        if status == "completed":
            recorder.take(cell_id)
    return status, message, recorder.timing()


def main(argv: list[str] | None = None) -> int:
    """The executor. ``--kernel PID:FD`` (a warm run, :mod:`autograder.zygote`): the learner's kernel is
    already forked and waits on FD; the executor says first that it started (the ``started`` frame)."""
    _not_dumpable()  # first: the payload below holds the hidden inputs
    started = time.monotonic()
    parser = argparse.ArgumentParser(description="the grader's executor (runs inside the sandbox)")
    parser.add_argument("--result-fd", type=int, required=True)
    parser.add_argument("--kernel", metavar="PID:FD", help="a preforked kernel to adopt (warm runs)")
    args = parser.parse_args(argv)
    fd = args.result_fd
    kernel = None
    try:
        if args.kernel:
            pid, go = (int(part) for part in args.kernel.split(":"))
            kernel = PreforkedKernel(pid, go)
            send(fd, "started", b"")
        payload = json.loads(sys.stdin.buffer.read())
        sys.stdin.close()
        status, message, timing = execute(payload, fd, started, kernel)
    except Exception as exc:  # noqa: BLE001
        import traceback

        traceback.print_exc()  # the grader keeps the last lines of stderr
        status, message, timing = "failed", f"{type(exc).__name__}: {str(exc)[:500]}", {}
    if kernel is not None:
        kernel.close()
    try:
        send(fd, "end", json.dumps({"status": status, "message": message, "timing": timing}).encode())
    except OSError:
        return 1
    return 0


# =========================================================================== trusted side


@dataclass
class Execution:
    status: str                      # completed | timeout | crashed
    seconds: float
    message: str = ""
    errors: list = field(default_factory=list)          # the learner's cells that raised
    more_errors: int = 0
    captures: dict = field(default_factory=dict)        # phase -> bytes (untrusted)
    sandbox: dict = field(default_factory=dict)         # what isolation applied, memory peak
    nonce: str = ""                                     # what a capture of this run must carry
    timing: dict = field(default_factory=dict)          # seconds per stage (the executor's clock)


def sandbox_env(cache: Path, threads: int | None = None) -> dict[str, str]:
    """A minimal environment for the executor and the kernel: nothing of the grader's shell leaks in."""
    from .sandbox import ROOT, WORK

    threads_env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)} if threads else {}
    # numpy's OpenBLAS starts its thread pool at import: one thread keeps the zygote forkable (torch,
    # which does the notebooks' heavy lifting, starts its own pool later, in each run).
    threads_env["OPENBLAS_NUM_THREADS"] = "1"
    return {**threads_env,
        "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
        "HOME": WORK,
        "USER": "student",
        "LOGNAME": "student",
        "TMPDIR": "/tmp",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONPATH": str(ROOT),
        "IPYTHONDIR": f"{WORK}/.ipython",
        "JUPYTER_RUNTIME_DIR": "/tmp/jupyter-runtime",
        "JUPYTER_PLATFORM_DIRS": "1",
        "MPLCONFIGDIR": "/tmp/matplotlib",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",
        "LLM_COURSE_CACHE": str(cache),
        "LLM_COURSE_GRADING": "1",
    }


def rlimit_values(limits) -> dict[str, int]:
    """The per-process limits of a run: address space, file size, CPU seconds, no core files."""
    return {"RLIMIT_AS": limits.memory_bytes, "RLIMIT_FSIZE": limits.file_bytes,
            "RLIMIT_CPU": limits.total_timeout * 2, "RLIMIT_CORE": 0}


def _rlimits(limits) -> None:
    """Per-process limits, set in the child before exec (they survive bubblewrap and setpriv)."""
    import resource

    for name, value in rlimit_values(limits).items():
        try:
            resource.setrlimit(getattr(resource, name), (value, value))
        except (ValueError, OSError):
            pass


def _read_frames(fd: int, deadline: float, limit: int) -> tuple[dict[str, bytes], bool]:
    """Frames from the executor until EOF, ``deadline`` or ``limit`` bytes; ``(frames, timed_out)``."""
    frames: dict[str, bytes] = {}
    buffer = bytearray()
    timed_out = False
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            break
        ready, _, _ = select.select([fd], [], [], min(left, 1.0))
        if not ready:
            continue
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            break
        buffer += chunk
        if len(buffer) > limit:
            break
        while len(buffer) >= FRAME_NAME + 8:
            size = int.from_bytes(buffer[FRAME_NAME:FRAME_NAME + 8], "little")
            if len(buffer) < FRAME_NAME + 8 + size:
                break
            name = bytes(buffer[:FRAME_NAME]).decode("ascii", "replace").strip()
            frames.setdefault(name, bytes(buffer[FRAME_NAME + 8:FRAME_NAME + 8 + size]))
            del buffer[:FRAME_NAME + 8 + size]
    return frames, timed_out


def run(nb, assignment, limits, parameters: dict | None = None, keep_executed: Path | None = None) -> Execution:
    """Execute ``nb`` (already validated) in the sandbox with the grader's cells; never raises for its content.

    With ``limits.warm`` and the complete sandbox, this process's :mod:`autograder.zygote` forks the
    kernel, imports done, into the run's fresh sandbox; when that cannot start, the run starts cold,
    and ``sandbox.notes`` says why.
    """
    from . import zygote
    from .sandbox import isolation
    from utils.assets import cache_dir

    box = isolation()
    why = ""
    if limits.warm and box.complete:
        begun = time.perf_counter()
        env = sandbox_env(cache_dir(), limits.threads)
        warm = zygote.shared(env)
        waited = time.perf_counter() - begun     # the zygote's imports, in the first run of a process
        if warm is None:
            why = f"no warm start ({zygote.why_not()}); this run started cold"
        else:
            result = _run(nb, assignment, limits, parameters, keep_executed, warm)
            if result is not None:
                if waited > 0.05:
                    result.timing["zygote_start"] = round(waited, 2)
                return result
            warm.give_up("a warm start failed in this grading process")   # cold from now on, without waiting
            why = "the warm start failed; this run started cold"
    result = _run(nb, assignment, limits, parameters, keep_executed, None)
    if why:
        result.sandbox["notes"] = [*result.sandbox.get("notes", []), why]
    return result


def _run(nb, assignment, limits, parameters, keep_executed, warm) -> Execution | None:
    """One run in a fresh sandbox: cold (bubblewrap starts the executor), or ``warm`` (a
    :class:`~autograder.zygote.Zygote` forks it into the sandbox); ``None`` when a warm start failed
    before the executor said it started (the caller then starts cold)."""
    import inspect

    import nbformat

    from . import capture, netguard
    from .sandbox import Cgroup, bwrap_argv, fresh_uid, isolation
    from utils.assets import cache_dir

    start = time.perf_counter()
    box = isolation()
    run_id = secrets.token_hex(8)
    nonce = secrets.token_hex(16)
    cells = []
    for phase, hidden in (("public", False), ("hidden", True)):
        if any(case.hidden == hidden for ex in assignment.exercises for case in ex.cases):
            path = f".grader-{run_id}/{phase}.bin"
            cells.append({"id": f"grader-{run_id}-{phase}", "phase": phase, "path": path,
                          "source": capture.cell_source(assignment.exercises, hidden, path, nonce)})
    payload = json.dumps({
        "notebook": nbformat.writes(nb), "parameters": parameters or {}, "cells": cells,
        "cell_timeout": limits.cell_timeout, "output_bytes": limits.output_bytes,
        "keep_notebook": keep_executed is not None,
        "network_guard": inspect.getsource(netguard) + "\ninstall()\n",
    }).encode()
    cache = cache_dir()
    env = sandbox_env(cache, limits.threads)
    command = [sys.executable, "-m", "autograder.execute"]
    uid = fresh_uid() if box.bwrap and box.root else None
    data_fds, group = {}, None
    read_end, write_end = os.pipe()
    try:
        if box.bwrap:
            from .sandbox import _identity

            for path, text in (_identity(uid) if uid is not None else {}).items():
                r, w = os.pipe()
                os.write(w, text.encode())
                os.close(w)
                data_fds[path] = r
            argv = bwrap_argv(box, limits, tuple(assignment.references), cache, uid, data_fds)
            if warm is None:
                argv += [*command, "--result-fd", str(write_end)]
            cwd = "/"
        else:  # no sandbox at all (said in the record): a private temporary folder
            import tempfile

            cwd = tempfile.mkdtemp(prefix="course-grade-")
            env.update(HOME=cwd, TMPDIR=cwd, IPYTHONDIR=f"{cwd}/.ipython", JUPYTER_RUNTIME_DIR=f"{cwd}/.runtime",
                       MPLCONFIGDIR=f"{cwd}/.matplotlib")
            argv = [*command, "--result-fd", str(write_end)]
        if box.cgroup:
            group = Cgroup.create(box.cgroup, limits)

        def child_setup():
            if group is not None:
                group.join()
            _rlimits(limits)

        if warm is None:
            process = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.PIPE, pass_fds=(write_end, *data_fds.values()),
                                       preexec_fn=child_setup, start_new_session=True)
            to_executor, from_executor = process.stdin, process.stderr
        else:
            process, to_executor, from_executor = _start_warm(warm, argv, env, limits, uid, group, data_fds,
                                                              write_end, child_setup)
            if process is None:
                return None
        os.close(write_end)
        write_end = -1
        for fd in data_fds.values():
            os.close(fd)
        data_fds = {}
        stderr_tail = bytearray()

        def feed():
            try:
                to_executor.write(payload)
                to_executor.close()
            except (BrokenPipeError, OSError):
                pass

        def drain():  # keep the last few kB of the executor's stderr, for the grader's own errors
            for line in iter(from_executor.readline, b""):
                stderr_tail.extend(line)
                del stderr_tail[:-4096]

        threads = [threading.Thread(target=feed, daemon=True), threading.Thread(target=drain, daemon=True)]
        for thread in threads:
            thread.start()
        frames, timed_out = _read_frames(read_end, time.monotonic() + limits.total_timeout,
                                         2 * MAX_CAPTURE + MAX_NOTEBOOK + MAX_LEARNER)
        try:
            os.killpg(process.pid, signal.SIGKILL)  # bubblewrap, and with it the whole PID namespace
        except ProcessLookupError:
            pass
        process.wait()
        if group is not None:
            group.kill()
        if warm is not None and "started" not in frames:
            return None
        seconds = time.perf_counter() - start
        described = box.describe()
        if warm is not None:
            described["start"] = ("warm: the kernel forked, imports done, from an interpreter joined into this "
                                  "run's fresh sandbox as its uid; the executor exec'd beside it (autograder/zygote.py)")
        if uid is not None:
            described["uid"] = uid
        if group is not None:
            described["cgroup"] = group.describe()
            described["memory_peak_bytes"] = group.memory_peak()
            described["notes"] = described["notes"] + group.notes
        oom = group is not None and group.oom_killed()
        learner = _json(frames.get("learner"), MAX_LEARNER)
        errors = learner.get("errors") if isinstance(learner.get("errors"), list) else []
        more = learner.get("more_errors") if type(learner.get("more_errors")) is int else 0
        if keep_executed is not None and frames.get("notebook"):
            keep_executed.parent.mkdir(parents=True, exist_ok=True)
            keep_executed.write_bytes(frames["notebook"])
        end = _json(frames.get("end"), 4096)
        captures = {phase: frames[phase] for phase in ("public", "hidden") if phase in frames}
        timing = end.get("timing") if isinstance(end.get("timing"), dict) else {}
        timing = {str(k)[:20]: float(v) for k, v in list(timing.items())[:10] if type(v) in (int, float)}
        timing["sandbox_and_transfer"] = round(max(0.0, seconds - sum(timing.values())), 2)
        result = Execution("completed", seconds, "", errors, more, captures, described, nonce, timing)
        if timed_out:
            result.status, result.message = "timeout", f"the notebook ran longer than {limits.total_timeout} s and was stopped"
        elif end.get("status") == "completed":
            pass
        elif end.get("status") == "kernel_died" or oom:
            result.status = "crashed"
            result.message = KERNEL_DIED + (f"; the run reached its memory limit ({limits.memory_bytes / 1024 ** 3:g} GiB)"
                                             if oom else "")
        elif end.get("status") == "failed":
            result.status, result.message = "crashed", f"the grader could not run the notebook: {str(end.get('message'))[:300]}"
        else:
            tail = bytes(stderr_tail).decode("utf-8", "replace").strip().splitlines()
            why = "the notebook's process was killed before the grader's cells ended"
            if tail and tail[-1].startswith("bwrap:"):
                why = f"the grader could not start the sandbox: {tail[-1][:300]}"
            result.status, result.message = "crashed", why
        return result
    finally:
        for fd in (read_end, write_end, *data_fds.values()):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        if group is not None:
            group.remove()
        if not box.bwrap and "cwd" in locals() and cwd != "/":
            import shutil

            shutil.rmtree(cwd, ignore_errors=True)


def _start_warm(warm, argv, env, limits, uid, group, data_fds, result_fd, child_setup):
    """Start the run's sandbox with a placeholder, then have ``warm`` (the zygote) fork the executor
    into it. Returns ``(process, stdin writer, stderr reader)``, or ``(None, None, None)`` when the
    warm start cannot go on (everything it started is stopped)."""
    from . import zygote
    from .sandbox import ROOT, WORK

    ready_r, ready_w = os.pipe()
    in_r, in_w = os.pipe()
    err_r, err_w = os.pipe()
    placeholder = ["/bin/sh", "-c", "echo ready && exec sleep infinity"]   # its stdout: the ready pipe
    process, namespaces = None, []
    try:
        process = subprocess.Popen([*argv, *placeholder], cwd="/", env=env, stdin=subprocess.DEVNULL,
                                   stdout=ready_w, stderr=err_w, pass_fds=tuple(data_fds.values()),
                                   preexec_fn=child_setup, start_new_session=True)
        os.close(ready_w)
        ready_w = -1
        ready, _, _ = select.select([ready_r], [], [], 30)
        if not ready or not os.read(ready_r, 1):
            raise OSError("the sandbox did not start")
        namespaces = zygote.namespace_fds(zygote.sandbox_pid(process.pid))
        request = {"uid": uid, "cgroup_procs": [str(path / "cgroup.procs") for path in group.paths],
                   "rlimits": rlimit_values(limits),
                   "work": WORK, "root": str(ROOT)}
        warm.spawn(request, (in_r, err_w, result_fd), namespaces)
    except OSError:
        if process is not None:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()
        for fd in (in_w, err_r):
            os.close(fd)
        return None, None, None
    finally:
        for fd in (ready_r, ready_w, in_r, err_w, *namespaces):
            if fd >= 0:
                os.close(fd)
    return process, os.fdopen(in_w, "wb"), os.fdopen(err_r, "rb")


def _json(data: bytes | None, limit: int) -> dict:
    """A frame's JSON object, or ``{}`` when it is missing, too big or not an object."""
    if not data or len(data) > limit:
        return {}
    try:
        value = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


if __name__ == "__main__":
    raise SystemExit(main())
