"""Enter the sandbox, then ``exec`` a command: ``python -m autograder.jail CONFIG_JSON -- COMMAND...``.

Run by :mod:`autograder.runner` (as root when it can) in front of the notebook executor, so that the
executor *and* the kernel it starts share one sandbox. In this order, each step only if CONFIG asks:

1. ``unshare`` a new network namespace (only ``lo``, brought up: papermill talks to the kernel over
   ZMQ on 127.0.0.1) and a new mount namespace;
2. in the mount namespace: bind the prepared asset cache read-only at ``assets_target``, then hide
   each path of ``hide`` (an empty read-only tmpfs over a folder, ``/dev/null`` over a file), except
   the folders of ``keep`` inside it (bound back read-only: the venv's Python may live in ``~/.pyenv``);
3. resource limits (address space, file size, CPU seconds, processes, no core files);
4. drop to an unprivileged ``uid``/``gid`` with no supplementary groups.

Only the standard library is used here: this runs before the untrusted kernel exists, and must be
quick. Any failure exits with status 125 and a one-line reason on stderr.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import json
import os
import resource
import socket
import struct
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
FAILED = 125

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = (lambda s: s.encode() if s is not None else None)
    _check(_libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {target}")


def loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sH14s", b"lo", 0, b"")
        flags = struct.unpack("16sH14s", fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack("16sH14s", b"lo", flags | IFF_UP, b""))


def _hide_folder(path: str, keep: list[str], stage: str) -> None:
    """An empty read-only tmpfs over ``path``, with the folders of ``keep`` (inside it) bound back read-only.

    The grader's home may hold the Python the kernel runs on (pyenv): that stays, the rest goes.
    """
    staged = []
    for number, kept in enumerate(keep):
        target = os.path.join(stage, str(number))
        os.makedirs(target, exist_ok=True)
        _mount(kept, target, None, MS_BIND | MS_REC)  # reachable after ``path`` is covered
        staged.append((target, kept))
    _mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, f"size=64k,mode={'755' if keep else '000'}")
    for target, kept in staged:
        os.makedirs(kept, exist_ok=True)
        _mount(target, kept, None, MS_BIND | MS_REC)
        _mount(None, kept, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    _mount(None, path, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def enter(config: dict) -> None:
    """Apply ``config`` to this process (see the module docstring)."""
    flags = (CLONE_NEWNET if config.get("netns") else 0) | (CLONE_NEWNS if config.get("mountns") else 0)
    if flags:
        _check(_libc.unshare(flags), "unshare")
    if config.get("mountns"):
        _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we do here leaks to the host
        source, target = config.get("assets_source"), config.get("assets_target")
        if source and target and os.path.isdir(source):
            _mount(source, target, None, MS_BIND | MS_REC)
            _mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
        for number, path in enumerate(config.get("hide", [])):
            if os.path.isdir(path):
                _hide_folder(path, [k for k in config.get("keep", []) if k.startswith(path.rstrip("/") + "/")],
                             os.path.join(config.get("stage", "/"), str(number)))
            elif os.path.exists(path):
                _mount("/dev/null", path, None, MS_BIND)
    if config.get("netns"):
        loopback_up()
    for name, value in config.get("rlimits", {}).items():
        limit = getattr(resource, name, None)
        if limit is None:
            continue  # not on this system
        try:
            resource.setrlimit(limit, (value, value))
        except (ValueError, OSError):
            try:  # cannot raise a hard limit: stay below it
                hard = resource.getrlimit(limit)[1]
                resource.setrlimit(limit, (min(value, hard) if hard != resource.RLIM_INFINITY else value,) * 2)
            except (ValueError, OSError):
                print(f"sandbox note: {name} could not be set", file=sys.stderr)  # in the run's log
    uid = config.get("uid")
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
        if os.getuid() != uid or os.geteuid() != uid:
            raise OSError("the user did not change")


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m autograder.jail CONFIG_JSON -- COMMAND...", file=sys.stderr)
        return 2
    try:
        enter(json.loads(argv[0]))
        os.execvp(argv[2], argv[2:])
    except Exception as exc:  # noqa: BLE001 - one line for the runner, which falls back
        print(f"sandbox: {exc}", file=sys.stderr)
    return FAILED


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
