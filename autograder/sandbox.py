"""The sandbox a submission runs in: the one place that decides what a run sees and may use.

A graded notebook is hostile until proven otherwise. Where the grader runs as root and
bubblewrap is installed (``apt-get install bubblewrap``; what Flatpak uses), every run gets:

* an **allow-list file view**: the system's ``/usr`` and a few files of ``/etc``, read-only; the
  Python and its virtual environment, read-only; the prepared assets, read-only; and the course's
  code *without* the reference modules of the notebook being graded and without the trusted side
  (``autograder/oracles``). Nothing else of the machine exists in it: no ``solutions/``, no other
  clone of the course, no class folder, no home, no ``/run``;
* private, size-limited ``tmpfs`` for the work folder, ``/tmp`` and ``/dev/shm``: what the run
  writes vanishes with it, and nothing of one student's run is left for the next;
* new PID, IPC, UTS, network (only ``lo``) and mount namespaces, ``--die-with-parent``,
  ``--new-session`` (no terminal injection), no new privileges;
* a **fresh unprivileged uid** (a number no account uses), with no groups and no capabilities;
* a **cgroup per run** (memory, processes, CPU; v2 where the machine has it, else v1), so that the
  memory limit covers every process of the run and its shared memory, not one process at a time;
* resource limits per process: address space, file size, CPU seconds, no core files.

Every run gets its own sandbox, cold or warm: a warm run's executor is forked, imports done, into
the sandbox bubblewrap made for it (:mod:`autograder.zygote`) instead of being started by bubblewrap.

Without root (a learner grading their own work), bubblewrap still gives the same file view and
namespaces in a user namespace, with the learner's own uid and no cgroup. Without bubblewrap the
run is not isolated at all; :func:`isolation` says so, ``grade`` prints it, and ``grade-class``
refuses to grade a class that way unless the instructor passes ``--insecure``.
"""
from __future__ import annotations

import functools
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GIB = 1024 ** 3
MIB = 1024 ** 2
UID_RANGE = (1_000_000, 2_000_000)  # a fresh uid per run, from a range no account uses
WORK = "/home/student"              # the work folder (and home) inside the sandbox
ETC_FILES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "fonts", "localtime", "mime.types", "ssl",
             "alternatives", "os-release")
SETPRIV = "/usr/bin/setpriv"


@dataclass(frozen=True)
class Limits:
    cell_timeout: int = 300          # seconds per cell before it is interrupted
    total_timeout: int = 900         # seconds for the whole notebook before the run is killed
    memory_bytes: int = 12 * GIB     # every process of the run together (cgroup); also each one's address space
    tmpfs_bytes: int = 1 * GIB       # each of the work folder, /tmp and /dev/shm
    file_bytes: int = 512 * MIB      # largest file a process may write
    processes: int = 512             # processes and threads of the run
    cpus: float | None = None        # CPU quota in cores (None: as many as the machine has)
    output_bytes: int = 4 * MIB      # outputs kept in the executed notebook; the rest is dropped
    threads: int | None = None       # OpenMP/torch threads of the kernel (None: torch's default, one per core)
    warm: bool = True                # fork the executor, imports done, into each fresh sandbox (autograder/zygote.py)


def threads_per_run(workers: int) -> int:
    """Cores shared out between runs graded at once: two runs of two threads each on two cores wait on
    each other's threads (a SmolLM2 forward pass measured 8x slower than with one thread each)."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))


@dataclass(frozen=True)
class Isolation:
    """What this machine can give a run, and a line for each thing it cannot."""

    bwrap: str | None                # path of bubblewrap, when it works here
    root: bool                       # a fresh uid per run and a cgroup need root
    cgroup: str                      # "v2", "v1" or "" (none)
    notes: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        """Everything the module docstring promises: what grading a class requires."""
        return bool(self.bwrap and self.root and self.cgroup)

    def describe(self) -> dict:
        return {
            "files": "allow-list view (bubblewrap): no solutions, no references of this notebook, no other files"
            if self.bwrap else "NONE: the kernel sees every file the grader's user can read",
            "user": "a fresh unprivileged uid per run" if self.bwrap and self.root
            else "the grader's own uid" + (" (in a user namespace)" if self.bwrap else ""),
            "namespaces": "pid, ipc, uts, network (lo only), mount" if self.bwrap else "none (an audit hook blocks the network)",
            "limits": (f"cgroup {self.cgroup} (memory, pids, cpu) + rlimits" if self.cgroup else "rlimits per process only"),
            "complete": self.complete,
            "notes": list(self.notes),
        }


# --------------------------------------------------------------------------- what the machine allows


def _bwrap_works(bwrap: str, root: bool) -> str | None:
    """``None`` when a minimal sandbox like a run's starts here and drops to a fresh uid, else why not."""
    uid = UID_RANGE[0] if root else None
    argv = [bwrap, *_system_view(), "--proc", "/proc", "--dev", "/dev", *_namespaces(), *_privileges(uid),
            "/bin/sh", "-c", "id -u"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, env={"PATH": "/usr/bin:/bin"})
    except (OSError, subprocess.SubprocessError) as exc:
        return str(exc)
    if done.returncode == 0 and done.stdout.strip() == str(uid if root else os.getuid()):
        return None
    return (done.stderr.strip().splitlines() or [f"exit status {done.returncode}, uid {done.stdout.strip()}"])[-1][:200]


def _cgroup_kind() -> str:
    """"v2" when this process's cgroup v2 group has the memory and pids controllers, "v1" when the v1
    memory and pids hierarchies are mounted and writable, else ""."""
    if os.geteuid() != 0:
        return ""
    v2 = _v2_parent()
    if v2 is not None:
        return "v2"
    if all(_v1_parent(c) is not None for c in ("memory", "pids")):
        return "v1"
    return ""


@functools.lru_cache(maxsize=1)
def isolation() -> Isolation:
    """Probe once per process what isolation this machine gives (a fraction of a second)."""
    notes = []
    root = os.geteuid() == 0
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        notes.append("bubblewrap is not installed (Debian/Ubuntu: `sudo apt-get install bubblewrap`; "
                     "`make setup` installs it when run as root): the kernel runs WITHOUT a sandbox")
    elif root and not os.path.exists(SETPRIV):
        notes.append(f"{SETPRIV} is missing (package util-linux): no fresh uid per run")
        bwrap = None
    else:
        why = _bwrap_works(bwrap, root)
        if why:
            notes.append(f"bubblewrap does not start here ({why}): the kernel runs WITHOUT a sandbox")
            bwrap = None
    if not root:
        notes.append("the grader does not run as root: no fresh uid and no cgroup per run "
                     "(a class must be graded as root)")
    cgroup = _cgroup_kind() if root else ""
    if root and not cgroup:
        notes.append("no writable cgroup (v2 with memory+pids, or v1 memory and pids): "
                     "memory is limited per process only")
    leak = installed_copy()
    if leak:
        notes.append(f"the course is installed as a copy ({leak}): its reference modules are readable "
                     "in the sandbox; install it with `pip install -e .`")
        bwrap = None
    return Isolation(bwrap, root, cgroup, tuple(notes))


def installed_copy() -> str:
    """A non-editable install copies ``utils`` and ``autograder`` into site-packages, where the
    sandbox cannot leave the references out: the path of such a copy, or ``""``."""
    import importlib.metadata

    try:
        dist = importlib.metadata.distribution("llm-course")
    except importlib.metadata.PackageNotFoundError:
        return ""
    for item in dist.files or []:
        if item.parts and item.parts[0] in ("utils", "autograder") and item.suffix == ".py":
            located = Path(str(dist.locate_file(item)))
            if located.is_file() and not located.resolve().is_relative_to(ROOT):
                return str(located)
    return ""


# --------------------------------------------------------------------------- the file view


def _system_view() -> list[str]:
    """The read-only system: /usr (and the /bin, /lib... links into it) and a few files of /etc."""
    args = ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    args += ["--perms", "0755", "--dir", "/etc"]  # bubblewrap would make it 0700
    for name in ETC_FILES:
        if os.path.exists(f"/etc/{name}"):
            args += ["--ro-bind", f"/etc/{name}", f"/etc/{name}"]
    return args


def _python_paths() -> list[str]:
    """The interpreter, its standard library and the virtual environment (outermost first, deduplicated)."""
    paths = []
    for path in sorted({os.path.realpath(p) for p in (sys.base_prefix, sys.prefix)}, key=len):
        if not any(path.startswith(p.rstrip("/") + "/") for p in paths):
            paths.append(path)
    if os.path.realpath(sys.prefix) != sys.prefix:  # a venv reached through a link keeps its name
        paths.append(sys.prefix)
    return paths


def course_files(hidden_modules: tuple[str, ...]) -> list[Path]:
    """The course's files a kernel may see: ``utils`` and ``autograder`` minus the trusted side.

    Left out: the modules named in ``hidden_modules`` (``"utils.gpt"``), ``autograder/oracles``,
    compiled caches (a ``.pyc`` of a reference could be unmarshalled) and anything not ``.py`` in
    ``autograder``.
    """
    hidden = {ROOT / (name.replace(".", "/") + ".py") for name in hidden_modules}
    hidden_dirs = {ROOT / name.replace(".", "/") for name in hidden_modules} | {ROOT / "autograder" / "oracles"}
    chosen = []
    for package in ("utils", "autograder"):
        for folder, dirs, files in os.walk(ROOT / package):
            here = Path(folder)
            dirs[:] = sorted(d for d in dirs if d != "__pycache__" and here / d not in hidden_dirs
                             and not d.startswith("."))
            for name in sorted(files):
                path = here / name
                if path in hidden or name.endswith((".pyc", ".pyo")) or name.startswith("."):
                    continue
                if package == "autograder" and not name.endswith(".py"):
                    continue
                chosen.append(path)
    return chosen


def _identity(uid: int) -> dict[str, str]:
    """Small /etc files for the sandbox's user (nothing of the host's accounts)."""
    return {"/etc/passwd": f"root:x:0:0::/:/usr/sbin/nologin\nstudent:x:{uid}:{uid}::{WORK}:/bin/sh\n",
            "/etc/group": f"root:x:0:\nstudent:x:{uid}:\n",
            "/etc/hosts": "127.0.0.1 localhost\n::1 localhost\n",
            "/etc/hostname": "sandbox\n"}


def _namespaces() -> list[str]:
    return ["--unshare-pid", "--unshare-ipc", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try",
            "--hostname", "sandbox", "--die-with-parent", "--new-session"]


def _privileges(uid: int | None) -> list[str]:
    """As root: keep only what setpriv needs to become ``uid``, which then drops everything.
    Otherwise: a user namespace in which the learner keeps their own uid."""
    if uid is None:
        return ["--unshare-user", "--cap-drop", "ALL", "--"]
    return ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_SETPCAP",
            "--", SETPRIV, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all",
            "--bounding-set=-all", "--no-new-privs", "--"]


def bwrap_argv(box: Isolation, limits: Limits, hidden_modules: tuple[str, ...], assets: Path, uid: int | None,
               data_fds: dict[str, int]) -> list[str]:
    """The bubblewrap command line of one run, up to (not including) the command it runs.

    ``data_fds`` maps a file inside the sandbox to a readable file descriptor holding its bytes.
    """
    size = str(limits.tmpfs_bytes)
    # The private /proc, /dev, /tmp and /dev/shm first: a course, a venv or assets kept under /tmp
    # (a CI checkout, say) are then bound on top of the empty /tmp instead of being hidden by it.
    argv = [box.bwrap, *_system_view(), "--proc", "/proc", "--dev", "/dev",
            "--perms", "1777", "--size", size, "--tmpfs", "/tmp",
            "--perms", "1777", "--size", size, "--tmpfs", "/dev/shm"]
    made: set[str] = {"/", "/usr", "/etc", "/proc", "/dev", "/tmp", "/dev/shm"}

    def bind(path: str) -> None:  # bubblewrap would create the missing parents with mode 0700
        parents = [str(p) for p in reversed(Path(path).parents) if str(p) not in made]
        for parent in parents:
            argv.extend(["--perms", "0755", "--dir", parent])
            made.add(parent)
        argv.extend(["--ro-bind", path, path])

    for path, fd in data_fds.items():
        argv += ["--perms", "0644", "--ro-bind-data", str(fd), path]
    for path in _python_paths():
        bind(path)
    for path in course_files(hidden_modules):
        bind(str(path))
    if assets.is_dir():
        bind(str(assets))
    argv += ["--perms", "0755", "--dir", str(Path(WORK).parent),
             "--perms", "1777", "--size", size, "--tmpfs", WORK,
             "--chdir", WORK, *_namespaces(), *_privileges(uid)]
    return argv


# --------------------------------------------------------------------------- cgroups


def _own_group(controller: str | None) -> str | None:
    """This process's cgroup path for a v1 ``controller``, or the v2 path (``controller=None``)."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        number, controllers, path = line.split(":", 2)
        if controller is None and number == "0" and controllers == "":
            return path
        if controller is not None and controller in controllers.split(","):
            return path
    return None


def _v1_parent(controller: str) -> Path | None:
    own = _own_group(controller)
    base = Path("/sys/fs/cgroup") / controller
    if own is None or not base.is_dir():
        return None
    parent = base / own.lstrip("/")
    return parent if os.access(parent, os.W_OK) else None


def _v2_parent() -> Path | None:
    """A v2 group under which this process may create children with memory and pids enabled."""
    own = _own_group(None)
    for base in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified")):
        if own is None or not (base / "cgroup.controllers").exists():
            continue
        parent = base / own.lstrip("/")
        try:
            enabled = (parent / "cgroup.subtree_control").read_text().split()
            available = (parent / "cgroup.controllers").read_text().split()
        except OSError:
            continue
        if {"memory", "pids"} <= set(enabled) and os.access(parent, os.W_OK):
            return parent
        if {"memory", "pids"} <= set(available) and not (parent / "cgroup.procs").read_text().strip():
            return parent  # an empty group may enable its controllers for its children
    return None


@dataclass
class Cgroup:
    """The groups of one run: created before it starts, joined by its first process, removed after."""

    kind: str
    paths: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @classmethod
    def create(cls, kind: str, limits: Limits) -> "Cgroup":
        group = cls(kind)
        name = f"course-grade-{secrets.token_hex(6)}"
        try:
            if kind == "v2":
                parent = _v2_parent()
                try:
                    (parent / "cgroup.subtree_control").write_text("+memory +pids +cpu")
                except OSError:
                    (parent / "cgroup.subtree_control").write_text("+memory +pids")
                path = parent / name
                path.mkdir()
                group.paths.append(path)
                (path / "memory.max").write_text(str(limits.memory_bytes))
                _try_write(path / "memory.swap.max", "0")
                (path / "pids.max").write_text(str(limits.processes))
                if limits.cpus:
                    _try_write(path / "cpu.max", f"{int(limits.cpus * 100_000)} 100000")
            elif kind == "v1":
                for controller in ("memory", "pids", "cpu"):
                    parent = _v1_parent(controller)
                    if parent is None:
                        continue
                    path = parent / name
                    path.mkdir()
                    group.paths.append(path)
                    if controller == "memory":
                        (path / "memory.limit_in_bytes").write_text(str(limits.memory_bytes))
                        _try_write(path / "memory.memsw.limit_in_bytes", str(limits.memory_bytes))
                    elif controller == "pids":
                        (path / "pids.max").write_text(str(limits.processes))
                    elif limits.cpus:
                        (path / "cpu.cfs_quota_us").write_text(str(int(limits.cpus * 100_000)))
        except OSError as exc:
            group.notes.append(f"cgroup setup failed ({exc}); memory is limited per process only")
            group.remove()
            group.paths = []
        return group

    def join(self) -> None:
        """Called in the child between fork and exec: the run starts inside its groups."""
        for path in self.paths:
            with open(path / "cgroup.procs", "w") as handle:
                handle.write("0")

    def memory_peak(self) -> int | None:
        for path in self.paths:
            for name in ("memory.peak", "memory.max_usage_in_bytes"):
                try:
                    return int((path / name).read_text())
                except (OSError, ValueError):
                    continue
        return None

    def oom_killed(self) -> bool:
        for path in self.paths:
            try:
                if (path / "memory.events").exists():
                    events = dict(line.split() for line in (path / "memory.events").read_text().splitlines())
                    return int(events.get("oom_kill", 0)) > 0
                if (path / "memory.failcnt").exists():
                    return int((path / "memory.failcnt").read_text()) > 0
            except (OSError, ValueError):
                continue
        return False

    def kill(self) -> None:
        """SIGKILL every process still in the groups (the PID namespace already took them all)."""
        for path in self.paths:
            if (path / "cgroup.kill").exists():
                _try_write(path / "cgroup.kill", "1")
            for _ in range(100):
                try:
                    pids = [int(p) for p in (path / "cgroup.procs").read_text().split()]
                except (OSError, ValueError):
                    break
                if not pids:
                    break
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
                time.sleep(0.02)

    def remove(self) -> None:
        self.kill()
        for path in reversed(self.paths):
            for _ in range(50):
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.05)

    def describe(self) -> str:
        return f"cgroup {self.kind}" if self.paths else "rlimits only"


def _try_write(path: Path, text: str) -> None:
    try:
        path.write_text(text)
    except OSError:
        pass


def fresh_uid() -> int:
    return secrets.SystemRandom().randrange(*UID_RANGE)


__all__ = ["GIB", "MIB", "WORK", "Cgroup", "Isolation", "Limits", "bwrap_argv", "course_files", "fresh_uid",
           "isolation"]
