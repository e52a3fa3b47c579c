"""A warm start for graded runs: an interpreter with the heavy imports done, forked into each run's sandbox.

Why: a graded notebook spends its first seconds importing torch, transformers, IPython and papermill
(about 6 s of a 12 s run of notebook 01 on two cores) before any of the learner's code runs. A class
of hundreds pays that once per submission. Here it is paid once per worker.

How, without sharing anything between students:

1. ``python -m autograder.zygote`` (the *zygote*) starts as root, with the environment a sandboxed
   run gets, imports third-party libraries only (:data:`PRELOAD`: never the course's ``utils``, so no
   reference solution is in its memory) and then only forks. It never runs a learner's code, never
   reads anything a sandbox wrote, and holds no grading state: what a child inherits from it is the
   same for every student.
2. For each run, the trusted side starts a **fresh bubblewrap sandbox** exactly as for a cold run
   (:func:`autograder.sandbox.bwrap_argv`: its own file view, tmpfs, namespaces, uid and cgroup), with
   a placeholder command that says when the sandbox is ready, and sends the zygote that sandbox's
   namespaces (file descriptors of ``/proc/PID/ns/*``), its uid, its cgroup and three pipes.
3. The zygote forks; the child joins the run's cgroup and namespaces (``setns``, as ``nsenter`` and
   ``flatpak enter`` do), forks once more so that it is inside the run's PID namespace, drops to the
   run's uid with no capabilities, no bounding set and ``no_new_privs``, checks that it sees the
   sandbox's files and not the host's. It forks the learner's kernel-to-be
   (:class:`autograder.execute.PreforkedKernel`, which waits for a connection file), then execs the
   executor (``python -m autograder.execute --kernel PID:FD``): a fresh process with a memory layout
   of its own, which adopts the waiting kernel and only then reads the payload with the hidden cases.

When anything of this fails (not root, no ``setns``, the zygote died), the run is started cold
instead, and the record says so.
"""
from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

NAMESPACES = ("ipc", "uts", "net", "cgroup", "pid", "mnt")   # the order they are joined: mnt last (it moves /)
PRELOAD = (
    "numpy", "torch", "torch.nn", "torch.nn.functional", "transformers", "transformers.models.llama.modeling_llama",
    "transformers.models.auto.modeling_auto", "transformers.models.auto.tokenization_auto",
    "transformers.tokenization_utils_fast", "tokenizers", "safetensors.torch", "regex", "tqdm",
    "IPython", "ipykernel.kernelapp", "ipykernel.ipkernel", "matplotlib_inline.backend_inline",
    "papermill", "nbclient", "nbformat", "jupyter_client", "zmq", "autograder.execute", "autograder.netguard",
)
FDS = ("stdin", "stderr", "result")   # the run's pipes, then one descriptor per namespace
MAX_REQUEST = 16 * 1024

_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT = 1, 24, 38, 47
PR_CAP_AMBIENT_CLEAR_ALL = 4


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


# =========================================================================== the zygote process


def serve(control: socket.socket) -> None:
    """Preload, say hello, then fork one child per request until the control socket closes."""
    _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")
    started = time.monotonic()
    for name in PRELOAD:
        __import__(name)
    threads = len(os.listdir("/proc/self/task"))
    hello = {"seconds": round(time.monotonic() - started, 2), "threads": threads, "pid": os.getpid()}
    if threads != 1:  # a fork keeps only the calling thread: a lock another thread holds stays held
        hello["error"] = f"the zygote runs {threads} threads after its imports (a fork needs one)"
    control.sendall(json.dumps(hello).encode())
    if "error" in hello:
        return
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # its children exit at once; none is waited for
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(control, MAX_REQUEST, len(FDS) + len(NAMESPACES))
        except OSError:
            return
        if not message:
            return
        if len(fds) != len(FDS) + len(NAMESPACES):
            for fd in fds:
                os.close(fd)
            continue
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                control.close()
                code = _become_executor(json.loads(message), fds)
            except BaseException:  # noqa: BLE001 - whatever happens, the child never returns into the loop
                import traceback

                traceback.print_exc()
            finally:
                os._exit(code)
        for fd in fds:
            os.close(fd)


def _become_executor(request: dict, fds: list[int]) -> int:
    """In the forked child: enter the run's sandbox as its uid, fork the kernel-to-be, exec the
    executor. Returns only on failure (the first child exits at once; its own child goes on)."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    pipes, namespaces = fds[:len(FDS)], fds[len(FDS):]
    os.dup2(pipes[1], 2)  # from here on, what goes wrong is in the run's stderr tail
    for path in request["cgroup_procs"]:
        if not path.startswith("/sys/fs/cgroup/") or not path.endswith("/cgroup.procs"):
            raise ValueError(f"not a cgroup: {path}")
        with open(path, "w") as handle:
            handle.write("0")
    import resource

    for name, value in request["rlimits"].items():
        resource.setrlimit(getattr(resource, name), (value, value))
    for kind, fd in zip(NAMESPACES, namespaces):
        _check(_libc.setns(fd, 0), f"setns({kind})")
        os.close(fd)
    if os.fork() != 0:  # the PID namespace applies to children only
        os._exit(0)
    # ---- now inside the run's namespaces, still root: nothing of the sandbox is read until the uid is dropped
    null = os.open("/dev/null", os.O_RDWR)
    os.dup2(pipes[0], 0)
    os.dup2(null, 1)
    os.dup2(pipes[2], 3)
    os.closerange(4, resource.getrlimit(resource.RLIMIT_NOFILE)[1])   # close_range(2): one call
    os.setsid()
    _drop_privileges(int(request["uid"]))
    _check_view(request)
    os.chdir(request["work"])
    import importlib

    sys.path_importer_cache.clear()  # directory listings the zygote cached on the host's files
    importlib.invalidate_caches()
    from autograder.execute import PreforkedKernel

    kernel = PreforkedKernel.fork(3)
    os.set_inheritable(kernel._go, True)
    # The executor is exec'd, not forked: its memory layout is its own, not the kernel's, and it
    # starts with nothing of the zygote. It adopts the kernel (exec keeps the parent and child).
    os.execv(sys.executable, [sys.executable, "-m", "autograder.execute", "--result-fd", "3",
                              "--kernel", f"{kernel.pid}:{kernel._go}"])


def _drop_privileges(uid: int) -> None:
    """No capabilities, no bounding set, no ambient set, the run's uid and gid, no groups, no_new_privs."""
    _check(_libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "prctl(PR_CAP_AMBIENT_CLEAR_ALL)")
    last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    for cap in range(last + 1):
        _check(_libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), f"prctl(PR_CAPBSET_DROP, {cap})")
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)  # from root to another uid: the permitted and effective sets are cleared
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    for key in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        if int(status[key].strip(), 16) != 0:
            raise PermissionError(f"{key} is {status[key].strip()} after dropping privileges")
    if set(status["Uid"].split()) != {str(uid)} or set(status["Gid"].split()) != {str(uid)}:
        raise PermissionError("the uid or gid did not change")


def _check_view(request: dict) -> None:
    """Refuse to run anything unless the files seen are the sandbox's: its own ``/etc/passwd``, no
    ``/sys``, no ``solutions/`` (the same checks fail on the host)."""
    passwd = Path("/etc/passwd").read_text()
    if f":{request['uid']}:" not in passwd or os.path.exists("/sys/fs/cgroup") \
            or os.path.exists(os.path.join(request["root"], "solutions")):
        raise PermissionError("the namespaces joined are not the run's sandbox")


def main() -> int:
    control = socket.socket(fileno=int(sys.argv[1]))
    os.chdir("/")
    serve(control)
    return 0


# =========================================================================== the trusted side


class Zygote:
    """The grader's handle on one zygote: :meth:`start` it, :meth:`spawn` runs, :meth:`close` it."""

    def __init__(self, env: dict[str, str]):
        self.env = env
        self.process: subprocess.Popen | None = None
        self.control: socket.socket | None = None
        self.hello: dict = {}
        self.error = ""

    def start(self, timeout: float = 180.0) -> bool:
        """Start the zygote and wait for its imports; ``False`` (and :attr:`error`) when it cannot serve."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.process = subprocess.Popen([sys.executable, "-m", "autograder.zygote", str(theirs.fileno())],
                                            env=self.env, cwd="/", stdin=subprocess.DEVNULL,
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                            pass_fds=(theirs.fileno(),), start_new_session=True)
        except OSError as exc:
            self.error = f"the zygote did not start: {exc}"
            return False
        finally:
            theirs.close()
        self.control = ours
        ours.settimeout(timeout)
        try:
            data = ours.recv(4096)
            self.hello = json.loads(data.decode()) if data else {"error": "the zygote exited during its imports"}
        except (OSError, ValueError) as exc:
            self.hello = {"error": f"no answer from the zygote ({exc})"}
        ours.settimeout(10)
        self.error = str(self.hello.get("error", ""))
        if self.error:
            self.close()
        return not self.error

    def spawn(self, request: dict, pipes: tuple[int, int, int], namespaces: list[int]) -> None:
        """Ask for one executor in the sandbox whose namespace descriptors are given (raises OSError)."""
        if self.control is None or self.process is None or self.process.poll() is not None:
            raise OSError("the zygote is not running")
        socket.send_fds(self.control, [json.dumps(request).encode()], [*pipes, *namespaces])

    def give_up(self, why: str) -> None:
        """Stop warm starts in this process (the next runs start cold at once, without retrying)."""
        self.error = why
        self.close()

    def close(self) -> None:
        if self.control is not None:
            self.control.close()
            self.control = None
        if self.process is not None:
            try:
                self.process.kill()
            except OSError:
                pass
            self.process.wait()
            self.process = None


_current: Zygote | None = None   # this process's zygote (one environment at a time)


def shared(env: dict[str, str]) -> Zygote | None:
    """This process's zygote for ``env`` (started on first use), or ``None`` when it cannot serve."""
    global _current
    if _current is not None and _current.env == env:
        if _current.error:
            return None  # tried once in this process and failed: cold starts from now on
        if _current.process is not None and _current.process.poll() is None:
            return _current
    if _current is not None:
        _current.close()
    _current = Zygote(env)
    if not _current.start():
        return None
    import atexit

    atexit.register(_current.close)
    return _current


def why_not() -> str:
    """Why :func:`shared` gave no zygote."""
    return (_current.error if _current is not None else "") or "the zygote could not start"


def namespace_fds(pid: int) -> list[int]:
    """Descriptors of ``pid``'s namespaces, in :data:`NAMESPACES` order; each must differ from this
    process's own (joining the host's namespaces by mistake would be no sandbox at all)."""
    fds = []
    try:
        for kind in NAMESPACES:
            fd = os.open(f"/proc/{pid}/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC)
            fds.append(fd)
            if os.fstat(fd).st_ino == os.stat(f"/proc/self/ns/{kind}").st_ino:
                raise OSError(f"process {pid} shares the grader's {kind} namespace")
    except OSError:
        for fd in fds:
            os.close(fd)
        raise
    return fds


def _children(pid: int) -> list[str]:
    """Child processes of ``pid``: from ``/proc/PID/task/PID/children``, or (a kernel without it) a scan of /proc."""
    try:
        return Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return _scan_children(pid)


def _scan_children(pid: int) -> list[str]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(f"/proc/{entry.name}/stat").read_text()
            except OSError:
                continue
            if stat.rsplit(")", 1)[-1].split()[1] == str(pid):   # the field after the state: the parent
                found.append(entry.name)
    return found


def sandbox_pid(bwrap_pid: int, timeout: float = 5.0) -> int:
    """The placeholder command of a bubblewrap sandbox (bwrap -> its init -> the command), as the host sees it."""
    deadline = time.monotonic() + timeout
    pid = bwrap_pid
    for _ in range(2):
        while True:
            children = _children(pid)
            if children:
                pid = int(children[0])
                break
            if time.monotonic() > deadline:
                raise OSError("the sandbox's placeholder process was not found")
            time.sleep(0.005)
    return pid


if __name__ == "__main__":
    raise SystemExit(main())
