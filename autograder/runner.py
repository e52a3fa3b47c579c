"""Run a submission in a sandboxed kernel and bring back its capture.

The sandbox, in order of what it protects against (each mechanism is probed once per process;
where one is missing, :func:`sandbox` says so in its ``notes`` and the next best is used):

* a fresh temporary folder holding only a copy of the submission; the kernel starts there with
  ``HOME`` pointing to it;
* an unprivileged user of its own (a fresh uid per run, no groups) when the grader runs as root,
  so that concurrent submissions cannot touch each other's folders and a fork bomb hits its own
  process limit; every process of that uid is killed after the run, and files it left in the
  world-writable folders (``/tmp``, ``/var/tmp``, ``/dev/shm``) are removed;
* a new network namespace (only ``lo``): no network, even for a subprocess; an audit hook in the
  kernel also refuses non-loopback connections (defence in depth, and the fallback);
* a new mount namespace: the solutions, the build folder, the git history, the grader's home,
  the class folders and the gradebook are covered by empty read-only mounts; the prepared asset
  cache is bound read-only inside the work folder (the kernel loads SmolLM2 from there);
* hidden inputs never touch the disk: the grader's cell (which holds them) reaches the executor
  on its stdin, is appended in memory, and is blanked in every notebook written to disk;
* resource limits: address space, file size, CPU seconds, processes, no core files;
* a timeout per cell (the cell is interrupted, later cells still run), a wall clock for the whole
  notebook, and a byte cap on the outputs kept in the executed notebook and on the log;
* a scrubbed environment (no tokens or secrets of the grader's shell, ``HF_HUB_OFFLINE=1``).

What runs in the kernel is untrusted: only the plain arrays it writes come back, and they are
checked by :mod:`autograder.compare`.
"""
from __future__ import annotations

import base64
import functools
import inspect
import io
import json
import os
import secrets
import shutil
import signal
import stat
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
from .jail import FAILED as JAIL_FAILED
from .spec import Assignment

ROOT = Path(__file__).resolve().parent.parent
GIB = 1024 ** 3

MIB = 1024 ** 2
MAX_CAPTURE_JSON = 16 * MIB      # the largest capture.json / capture.npz the trusted side reads
MAX_CAPTURE_NPZ = 256 * MIB
MAX_EXECUTED = 64 * MIB          # an executed notebook larger than this is not parsed
UID_RANGE = (1_000_000, 2_000_000)  # a fresh unprivileged uid per run (no account needed)
WRITABLE_SHARED = ("/tmp", "/var/tmp", "/dev/shm")


@dataclass
class Limits:
    cell_timeout: int = 300          # seconds per cell before it is interrupted
    total_timeout: int = 900         # seconds for the whole notebook before the kernel is killed
    memory_bytes: int = 12 * GIB     # address space of the kernel (torch reserves a lot of it)
    file_bytes: int = 512 * MIB      # largest file the kernel may write
    processes: int = 256             # processes and threads of the sandbox's user
    output_bytes: int = 4 * MIB      # outputs kept in the executed notebook; the rest is dropped
    hidden_paths: tuple[str, ...] = ()  # more paths to hide from the kernel (the class, the grades)


@dataclass
class Execution:
    status: str                      # completed | timeout | crashed
    seconds: float
    message: str = ""
    report: dict | None = None       # capture.json
    arrays: dict = field(default_factory=dict)
    notebook: nbformat.NotebookNode | None = None


# --------------------------------------------------------------------------- what the machine allows

@dataclass(frozen=True)
class Sandbox:
    """The mechanisms this process can use, and a line for each one that is missing."""

    drop_user: bool
    network_namespace: bool
    mount_namespace: bool
    notes: tuple[str, ...] = ()

    def describe(self) -> dict:
        return {"user": "a fresh unprivileged uid per run" if self.drop_user else "the grader's own user",
                "network": "new network namespace (lo only) + audit hook" if self.network_namespace
                else "audit hook in the kernel only",
                "files": "mount namespace hides solutions, grades and home" if self.mount_namespace
                else "file permissions only",
                "fallbacks": list(self.notes)}


def _jail_command(config: dict, command: list[str]) -> list[str]:
    return [sys.executable, "-m", "autograder.jail", json.dumps(config), "--", *command]


def _probe(config: dict, check: str) -> str | None:
    """Run ``check`` (Python source) inside a jail with ``config``; ``None`` when it worked, else why."""
    try:
        done = subprocess.run(_jail_command(config, [sys.executable, "-c", check]), capture_output=True, text=True,
                              timeout=60, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                                               "PYTHONPATH": str(ROOT)}, cwd="/")
    except (OSError, subprocess.SubprocessError) as exc:
        return str(exc)
    if done.returncode == 0:
        return None
    return (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1][:200]


@functools.lru_cache(maxsize=1)
def sandbox() -> Sandbox:
    """Probe once per process which isolation works here (about half a second)."""
    notes = []
    if os.geteuid() != 0:
        notes.append(f"the grader does not run as root: the kernel runs as the grader's user (uid {os.geteuid()}), "
                     "with no network or mount namespace; an audit hook blocks the network in the kernel, "
                     "file permissions alone protect the solutions")
        return Sandbox(False, False, False, tuple(notes))
    import utils  # the kernel must be able to import the course and the venv as another user

    readable = (f"import numpy, utils, autograder, papermill; open({sys.executable!r}, 'rb').close(); "
                f"import os; assert os.access({str(Path(utils.__file__).parent)!r}, os.R_OK | os.X_OK)")
    uid = UID_RANGE[0]
    net = _probe({"netns": True}, "import socket; assert [n for _, n in socket.if_nameindex()] == ['lo']")
    if net:
        notes.append(f"no network namespace ({net}): an audit hook in the kernel blocks the network instead, "
                     "which a subprocess of the kernel can avoid")
    mnt = _probe({"mountns": True, "hide": [str(ROOT / "solutions")]},
                 f"import os; assert not os.listdir({str(ROOT / 'solutions')!r})")
    if mnt:
        notes.append(f"no mount namespace ({mnt}): the solutions and grades are protected by file permissions only, "
                     "and the asset cache is copied to a folder every user can read")
    with tempfile.TemporaryDirectory(prefix="course-probe-") as stage:
        user = _probe({"uid": uid, "mountns": not mnt, "hide": [] if mnt else hidden_paths(), "keep": kept_paths(),
                       "stage": stage}, readable)
    if user:
        notes.append(f"cannot run the kernel as an unprivileged user ({user}): it runs as root")
    return Sandbox(user is None, net is None, mnt is None, tuple(notes))


def _git_dirs() -> list[Path]:
    """The repository's git folders (a worktree's ``.git`` is a file naming them): they hold the solutions."""
    dot = ROOT / ".git"
    if dot.is_dir():
        return [dot]
    found = []
    try:
        text = dot.read_text(encoding="utf-8").strip()
        if text.startswith("gitdir:"):
            gitdir = (ROOT / text.split(":", 1)[1].strip()).resolve()
            found.append(gitdir)
            common = gitdir / "commondir"
            if common.exists():
                found.append((gitdir / common.read_text(encoding="utf-8").strip()).resolve())
    except OSError:
        pass
    return found


def kept_paths() -> list[str]:
    """What the kernel needs to run, even inside a hidden folder: the venv, its base Python, the course's code."""
    return sorted({str(Path(p).resolve()) for p in (sys.prefix, sys.base_prefix, ROOT)})


def hidden_paths(extra: tuple[str, ...] = ()) -> list[str]:
    """What the kernel must not see: solutions, build, git history, the grader's home, and ``extra``."""
    keep = [Path(k) for k in kept_paths()]
    candidates = [ROOT / "solutions", ROOT / "build", *_git_dirs(), Path.home(), *map(Path, extra)]
    chosen = []
    for path in candidates:
        path = Path(path).resolve()
        if path.exists() and path not in keep and str(path) not in chosen:
            chosen.append(str(path))  # a kept folder inside it is bound back by the jail
    return sorted(chosen, key=lambda p: p.count("/"))  # outer folders first


@functools.lru_cache(maxsize=None)
def _share_assets(cache: Path) -> None:
    """Let any user read the prepared assets (public weights and texts; safetensors saves with mode 600)."""
    for path in [cache, *cache.rglob("*")]:
        try:
            mode = path.stat().st_mode
            wanted = mode | (0o555 if path.is_dir() else 0o444)
            if wanted != mode:
                path.chmod(wanted)
        except OSError:
            pass


def _readable_assets(cache: Path) -> Path:
    """Without a mount namespace: a copy of the asset cache that any user can read (hard links where possible)."""
    target = Path(tempfile.gettempdir()) / f"llm-course-assets-{os.getuid()}"
    for source in cache.rglob("*"):
        dest = target / source.relative_to(cache)
        if source.is_dir():
            dest.mkdir(parents=True, exist_ok=True)
            dest.chmod(0o755)
        elif not dest.exists() or dest.stat().st_size != source.stat().st_size:
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(source, dest)
            except OSError:
                shutil.copyfile(source, dest)
            dest.chmod(0o644)
    target.chmod(0o755)
    return target


def _kill_user(uid: int) -> None:
    """SIGKILL every process of ``uid`` (they may have left the process group), until none is left."""
    for _ in range(50):
        found = False
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                try:
                    if entry.stat().st_uid == uid:
                        found = True
                        os.kill(int(entry.name), signal.SIGKILL)
                except (OSError, ValueError):
                    pass
        if not found:
            return
        time.sleep(0.05)


def _remove_leftovers(uid: int) -> list[str]:
    """Remove what ``uid`` left in the world-writable folders; returns what was removed."""
    removed = []
    for folder in WRITABLE_SHARED:
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.stat(follow_symlinks=False).st_uid != uid:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    os.unlink(entry.path)
                removed.append(entry.path)
            except OSError:
                pass
    return removed


# --------------------------------------------------------------------------- the grader's cell

def capture_cell_source(assignment: Assignment, inputs: bytes | str, out_prefix: str, nonce: str = "") -> str:
    """The cell appended to a submission: the harness source, each exercise's ``call`` and the inputs.

    ``inputs`` is the ``.npz`` of every case (bytes, embedded in the cell: hidden inputs never sit in
    a file the learner's cells could read), or a path to one.
    """
    spec = []
    for ex in assignment.exercises:
        spec.append({
            "id": ex.id,
            "callable": ex.callable,
            "call_source": textwrap.dedent(inspect.getsource(ex.call)),
            "call_name": ex.call.__name__,
            "cases": {case.name: sorted(ex.inputs(case)) for case in ex.cases},
        })
    if isinstance(inputs, bytes):
        inputs_expr = f"__import__('io').BytesIO(__import__('base64').b64decode({base64.b64encode(inputs).decode()!r}))"
    else:
        inputs_expr = repr(inputs)
    return (
        "# Appended by the grader: calls your functions on the grading cases.\n"
        "def __course_capture(_source, _spec, _inputs):\n"
        "    _scope = {}\n"
        "    exec(compile(_source, 'autograder_harness', 'exec'), _scope)\n"
        f"    _scope['capture'](_spec, globals(), _inputs, {out_prefix!r}, {nonce!r})\n"
        f"__course_capture({inspect.getsource(harness)!r}, __import__('json').loads({json.dumps(spec)!r}), "
        f"{inputs_expr})\n"
    )


def inputs_npz(assignment: Assignment) -> bytes:
    arrays = {}
    for ex in assignment.exercises:
        for case in ex.cases:
            for key, value in ex.inputs(case).items():
                arrays[f"{ex.id}/{case.name}/{key}"] = np.asarray(value)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def sandbox_env(workdir: Path, cache: Path | None = None) -> dict[str, str]:
    """A minimal environment for the kernel: nothing of the grader's shell leaks in."""
    from utils.assets import cache_dir

    ipython_dir = workdir / ".ipython"
    startup = ipython_dir / "profile_default" / "startup"
    startup.mkdir(parents=True, exist_ok=True)
    guard = inspect.getsource(netguard) + "\ninstall()\n"  # the same guard as the test suite's
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
        "LLM_COURSE_CACHE": str(cache or cache_dir()),
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
            continue  # papermill's injected FAST/SEED cell and the grader's cell are not the learner's
        number += 1
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                text = f"{output.get('ename', 'Error')}: {output.get('evalue', '')}"
                found.append({"cell": number, "error": text[:300]})
    return found


def _read_untrusted(path: Path, limit: int) -> bytes | None:
    """A regular file the sandbox wrote, read without following links, or ``None`` (missing, too big, odd)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > limit:
            return None
        with os.fdopen(fd, "rb", closefd=False) as handle:
            return handle.read(limit + 1)[:limit]
    finally:
        os.close(fd)


def _log_tail(path: Path) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, os.fstat(handle.fileno()).st_size - 4096))
            lines = handle.read().decode("utf-8", "replace").strip().splitlines()
    except OSError:
        return ""
    noise = ("[", "Passed unknown parameter", "Input notebook does not contain", "Timeout waiting", "Interrupting")
    lines = [line for line in lines if line.strip() and not line.startswith(noise)]
    return lines[-1][:300] if lines else ""


def run(nb: nbformat.NotebookNode, assignment: Assignment, limits: Limits, parameters: dict | None = None,
        keep_executed: Path | None = None) -> Execution:
    """Execute ``nb`` (already validated) with the capture cell appended; never raises for its content."""
    from utils.assets import cache_dir

    start = time.perf_counter()
    box = sandbox()
    uid = secrets.SystemRandom().randrange(*UID_RANGE) if box.drop_user else None
    workdir = Path(tempfile.mkdtemp(prefix="course-grade-"))
    log = Path(tempfile.mkstemp(prefix="course-grade-log-")[1])  # the grader's, outside the work folder
    try:
        (workdir / "tmp").mkdir()
        cache = cache_dir()
        if box.drop_user:
            _share_assets(cache)
        if box.mount_namespace:
            (workdir / "assets").mkdir()
            cache = workdir / "assets"
        elif box.drop_user:
            cache = _readable_assets(cache_dir())
        nonce = secrets.token_hex(16)
        out_prefix = str(workdir / f".capture-{secrets.token_hex(8)}" / "capture")
        capture = capture_cell_source(assignment, inputs_npz(assignment), out_prefix, nonce)
        source, executed = workdir / "submission.ipynb", workdir / "executed.ipynb"
        nbformat.write(nb, source)
        env = sandbox_env(workdir, cache)
        env["PYTHONPATH"] = str(ROOT)  # autograder.execute and autograder.jail themselves
        if uid is not None:
            for folder, _, files in os.walk(workdir):
                os.chown(folder, uid, uid)
                for name in files:
                    os.chown(os.path.join(folder, name), uid, uid)
        command = [sys.executable, "-m", "autograder.execute", str(source), str(executed),
                   "--cell-timeout", str(limits.cell_timeout), "--cwd", str(workdir),
                   "--output-bytes", str(limits.output_bytes)]
        for name, value in (parameters or {}).items():
            command += ["-p", name, repr(value)]
        config = {
            "netns": box.network_namespace,
            "mountns": box.mount_namespace,
            "assets_source": str(cache_dir()), "assets_target": str(workdir / "assets"),
            "hide": hidden_paths(tuple(limits.hidden_paths)) if box.mount_namespace else [],
            "keep": kept_paths(), "stage": str(workdir / ".stage"),
            "rlimits": {"RLIMIT_AS": limits.memory_bytes, "RLIMIT_FSIZE": limits.file_bytes,
                        "RLIMIT_CPU": limits.total_timeout * 2, "RLIMIT_CORE": 0,
                        **({"RLIMIT_NPROC": limits.processes} if uid is not None else {})},
            "uid": uid,
        }
        with open(log, "wb") as log_file:
            process = subprocess.Popen(_jail_command(config, command), cwd=workdir, env=env, stdin=subprocess.PIPE,
                                       stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                process.communicate(input=json.dumps({"capture": capture}).encode(), timeout=limits.total_timeout)
                timed_out = False
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                try:
                    os.killpg(process.pid, signal.SIGKILL)  # the kernel and anything it started
                except ProcessLookupError:
                    pass
                if uid is not None:
                    _kill_user(uid)  # and whatever left the process group
                process.wait()
        seconds = time.perf_counter() - start
        executed_nb = None
        raw = _read_untrusted(executed, MAX_EXECUTED)
        if raw is not None:
            try:
                executed_nb = nbformat.reads(raw.decode("utf-8"), as_version=4)
                if keep_executed is not None:
                    keep_executed.parent.mkdir(parents=True, exist_ok=True)
                    keep_executed.write_bytes(raw)
            except Exception:  # noqa: BLE001 - a damaged output notebook only loses detail
                executed_nb = None
        tail = _log_tail(log)
        if timed_out:
            return Execution("timeout", seconds, f"the notebook ran longer than {limits.total_timeout} s and was stopped",
                             notebook=executed_nb)
        if process.returncode == JAIL_FAILED and tail.startswith("sandbox:"):
            return Execution("crashed", seconds, f"the grader could not start the sandbox: {tail}", notebook=None)
        report, arrays = _read_capture(Path(out_prefix), nonce)
        if report is None:
            if process.returncode == KERNEL_DIED:
                why = "the kernel died (a crash, os._exit, or running out of memory)"
            elif process.returncode and process.returncode < 0:
                why = f"the notebook process was killed by signal {-process.returncode}"
            else:
                why = "the grader's cell did not run to the end" + (f" ({tail})" if tail else "")
            return Execution("crashed", seconds, why, notebook=executed_nb)
        return Execution("completed", seconds, "", report, arrays, executed_nb)
    finally:
        if uid is not None:
            _kill_user(uid)
            _remove_leftovers(uid)
        shutil.rmtree(workdir, ignore_errors=True)
        log.unlink(missing_ok=True)


def _read_capture(prefix: Path, nonce: str) -> tuple[dict | None, dict]:
    """capture.json and capture.npz as untrusted data: no pickles, no links, arrays of numbers only.

    The report must carry this run's ``nonce`` (it was only ever in the grader's cell): files a
    learner's cell left behind are not a capture.
    """
    try:
        text = _read_untrusted(prefix.with_suffix(".json"), MAX_CAPTURE_JSON)
        data = _read_untrusted(prefix.with_suffix(".npz"), MAX_CAPTURE_NPZ)
        if text is None or data is None:
            return None, {}
        report = json.loads(text.decode("utf-8"))
        if not isinstance(report, dict) or report.pop("__nonce__", None) != nonce:
            return None, {}
        arrays = {}
        with np.load(io.BytesIO(data), allow_pickle=False) as stored:
            for key in stored.files:
                value = stored[key]
                if type(value) is np.ndarray and value.dtype.kind in "biuf":
                    arrays[key] = value
        return report, arrays
    except Exception:  # noqa: BLE001 - forged or damaged files mean no capture
        return None, {}
