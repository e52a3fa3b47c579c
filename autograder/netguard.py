"""No network: refuse every connection and name look-up that does not stay on this machine.

Installed as a Python audit hook, in a graded kernel (the grader copies this file's source into an
IPython startup file of the sandbox) and in the test suite. Audit hooks cannot be removed, so
code that runs afterwards cannot switch the guard off from Python.
"""
import ipaddress
import sys


def is_local(host) -> bool:
    """True for loopback addresses and ``localhost``.

    >>> is_local("127.0.0.1"), is_local("::1"), is_local("localhost"), is_local("93.184.216.34")
    (True, True, True, False)
    """
    if host in (None, "", "localhost", b"localhost"):
        return True
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


def _guard(event, args):
    if event == "socket.connect":
        address = args[1]
        if isinstance(address, tuple) and address and not is_local(address[0]):
            raise PermissionError(f"network access is disabled here (connect to {address[0]})")
    elif event == "socket.getaddrinfo" and not is_local(args[0]):
        raise PermissionError(f"network access is disabled here (look-up of {args[0]})")


def install() -> None:
    """Install the guard in this process (once; a second call does nothing)."""
    if not getattr(sys, "_course_network_guard", False):
        sys.addaudithook(_guard)
        sys._course_network_guard = True
