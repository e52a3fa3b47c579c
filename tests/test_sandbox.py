"""What a submission's kernel may not do: hang, die, reach the network, see the references, or outgrow
its limits. Tiny notebooks, no model."""
from __future__ import annotations

import os
import shutil

import pytest

from autograder import sandbox
from autograder.grade import grade_notebook
from autograder.sandbox import GIB, Limits

from conftest import tiny_notebook

needs_sandbox = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("bwrap") is None,
                                   reason="the full sandbox needs root and bubblewrap")
# Each guarantee holds for both starts: cold (bubblewrap starts the executor) and warm (the zygote
# forks it, imports done, into the run's fresh sandbox; autograder/zygote.py).
starts = pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm"])


@starts
def test_a_dead_kernel_still_gets_a_record(tmp_path, warm):
    path = tiny_notebook(tmp_path, "01_attention", "x = 1", "import os\nos._exit(1)")
    record = grade_notebook(path, limits=Limits(total_timeout=120, warm=warm))
    assert record["status"] == "crashed"
    assert "kernel died" in record["message"]
    assert record["score"] == 0 and len(record["exercises"]) == 4


@starts
def test_an_endless_notebook_times_out(tmp_path, warm):
    path = tiny_notebook(tmp_path, "01_attention", "while True:\n    pass")
    record = grade_notebook(path, limits=Limits(total_timeout=8, cell_timeout=60, warm=warm))
    assert record["status"] == "timeout" and "8 s" in record["message"]
    assert record["seconds"] < 30


@starts
def test_a_slow_cell_is_interrupted_and_grading_goes_on(tmp_path, warm):
    path = tiny_notebook(tmp_path, "01_attention", "import time\ntime.sleep(60)",
                         "def causal_mask(T):\n    import torch\n    return torch.ones(T, T).tril().bool()")
    record = grade_notebook(path, limits=Limits(total_timeout=120, cell_timeout=3, warm=warm))
    assert record["status"] == "graded"
    assert record["cell_errors"][0]["cell"] == 1 and record["cell_errors"][0]["first_line"] == "import time"
    by_id = {e["id"]: e for e in record["exercises"]}
    assert by_id["attention.causal_mask"]["status"] == "passed"
    assert by_id["attention.sdpa"]["status"] == "missing" and "not found" in by_id["attention.sdpa"]["message"]


@starts
def test_the_kernel_has_no_network(tmp_path, warm):
    path = tiny_notebook(tmp_path, "01_attention",
                         "import urllib.request\nurllib.request.urlopen('http://example.com', timeout=5)",
                         "import socket\nsocket.create_connection(('93.184.216.34', 80), timeout=5)")
    record = grade_notebook(path, limits=Limits(total_timeout=120, warm=warm))
    errors = [e["error"] for e in record["cell_errors"]]
    assert len(errors) == 2 and all("network access is disabled" in e for e in errors), errors


@needs_sandbox
@starts
def test_the_kernel_sees_only_the_allow_list(tmp_path, warm):
    """No solutions, no references of the graded notebook, no oracles, no home, no /run, a fresh uid:
    each probe cell must raise, and one cell shows what the kernel does see of the course."""
    root = str(sandbox.ROOT)
    probes = [
        f"open({root + '/solutions/01_attention.ipynb'!r})",
        "import utils.attention",
        "import autograder.oracles",
        "open('/root/.bashrc')  # the grader's home: only the folders the Python lives in are there",
        "import os\nos.listdir('/run')",
        f"open({root + '/utils/__pycache__/attention.cpython-311.pyc'!r}, 'rb')",
        "import os\nassert os.getuid() >= 1_000_000 and os.getgroups() in ([], [os.getgid()]), os.getuid()\nraise OSError('uid ok')",
        "import utils.gpt, utils.models, utils.training\nraise RuntimeError('later notebooks still import earlier references')",
    ]
    record = grade_notebook(tiny_notebook(tmp_path, "01_attention", *probes), limits=Limits(total_timeout=120, warm=warm))
    assert ("start" in record["sandbox"]) == warm, record["sandbox"]["notes"]
    errors = [e["error"] for e in record["cell_errors"]]
    assert len(errors) == len(probes), errors
    assert errors[0].startswith("FileNotFoundError") and errors[1].startswith("ModuleNotFoundError"), errors
    assert errors[2].startswith("ModuleNotFoundError") and errors[3].startswith(("FileNotFoundError", "PermissionError"))
    assert errors[4].startswith("FileNotFoundError") and errors[5].startswith("FileNotFoundError")
    assert errors[6] == "OSError: uid ok" and errors[7].startswith("RuntimeError: later notebooks"), errors


@needs_sandbox
@starts
def test_memory_is_limited_for_the_whole_run_not_per_process(tmp_path, warm):
    """Three children of 600 MiB each under a 1.5 GiB limit: each alone fits, together they do not."""
    code = ("import subprocess, sys\n"
            "hog = 'b = bytearray(600 * 2**20); b[::4096] = bytes(len(b[::4096])); import time; time.sleep(5)'\n"
            "children = [subprocess.Popen([sys.executable, '-c', hog]) for _ in range(3)]\n"
            "raise RuntimeError(f'children ended with {[c.wait() for c in children]}')")
    record = grade_notebook(tiny_notebook(tmp_path, "01_attention", code),
                            limits=Limits(total_timeout=120, cell_timeout=60, memory_bytes=int(1.5 * GIB), warm=warm))
    assert record["sandbox"]["memory_peak_bytes"] <= 1.5 * GIB
    assert record["status"] == "graded" and "-9" in record["cell_errors"][0]["error"], record   # one was killed


def test_without_a_sandbox_the_grader_still_grades_and_says_so(tmp_path, monkeypatch):
    """What a learner's machine without bubblewrap gets: no isolation, an audit hook, and a record that says it."""
    from autograder import execute

    bare = sandbox.Isolation(None, False, "", ("bubblewrap is not installed",))
    monkeypatch.setattr(sandbox, "isolation", lambda: bare)
    path = tiny_notebook(tmp_path, "01_attention", "import socket\nsocket.create_connection(('93.184.216.34', 80), timeout=5)",
                         "def causal_mask(T):\n    import torch\n    return torch.ones(T, T).tril().bool()")
    assert execute  # the executor reads sandbox.isolation() at run time
    record = grade_notebook(path, limits=Limits(total_timeout=120))
    assert record["status"] == "graded"
    assert "network access is disabled" in record["cell_errors"][0]["error"]
    assert {e["id"]: e["status"] for e in record["exercises"]}["attention.causal_mask"] == "passed"
    assert record["sandbox"]["complete"] is False and "bubblewrap is not installed" in record["sandbox"]["notes"]


def test_paths_under_tmp_are_bound_over_the_private_tmp(tmp_path):
    """A CI checkout, venv or asset cache under /tmp must stay visible: the private /tmp is mounted
    first and they are bound on top of it (bubblewrap applies its arguments in order)."""
    from pathlib import Path

    box = sandbox.isolation()
    if not box.bwrap:
        pytest.skip("bubblewrap is not installed")
    assets = Path("/tmp") / tmp_path.name
    assets.mkdir(exist_ok=True)
    try:
        argv = sandbox.bwrap_argv(box, Limits(), (), assets, None, {})
    finally:
        assets.rmdir()
    tmpfs = next(i for i in range(len(argv) - 1) if argv[i] == "--tmpfs" and argv[i + 1] == "/tmp")
    bound = next(i for i in range(len(argv) - 1) if argv[i] == "--ro-bind" and argv[i + 1] == str(assets))
    assert tmpfs < bound


@needs_sandbox
def test_a_warm_kernel_holds_no_privilege_no_reference_and_no_other_process(tmp_path):
    """The warm start's own risks (autograder/zygote.py): a fork of a root process, joined into the
    run's namespaces. Its kernel must hold no capability, no course module it did not import, no way
    into the executor (which holds the hidden cases), and see only its own sandbox's processes."""
    probes = [
        "s = dict(l.split(':', 1) for l in open('/proc/self/status').read().splitlines())\n"
        "caps = [k for k in ('CapInh', 'CapPrm', 'CapEff', 'CapBnd', 'CapAmb') if int(s[k], 16)]\n"
        "raise OSError(f'caps {caps} nnp {s[\"NoNewPrivs\"].strip()} uid {s[\"Uid\"].split()[0]}')",
        "import sys\nraise RuntimeError(f'course modules {sorted(m for m in sys.modules if m.startswith(\"utils\"))}')",
        "import os\nopen(f'/proc/{os.getppid()}/environ', 'rb').read()",
        "import os\nopen(f'/proc/{os.getppid()}/mem', 'rb').read(1)",
        "import os\npids = [p for p in os.listdir('/proc') if p.isdigit()]\n"
        "first = open('/proc/1/cmdline', 'rb').read().split(b'\\0')[0]\n"
        "raise RuntimeError(f'{len(pids)} processes, pid 1 {os.path.basename(first.decode())}')",
        "import socket\nraise RuntimeError(f'interfaces {[n for _, n in socket.if_nameindex()]} host {socket.gethostname()}')",
    ]
    record = grade_notebook(tiny_notebook(tmp_path, "01_attention", *probes), limits=Limits(total_timeout=120, warm=True))
    assert "start" in record["sandbox"], record["sandbox"]   # the run was warm, not a cold fallback
    errors = [e["error"] for e in record["cell_errors"]]
    assert len(errors) == len(probes), errors
    assert errors[0].startswith("OSError: caps [] nnp 1 uid ") and int(errors[0].split()[-1]) >= 1_000_000, errors[0]
    assert errors[1] == "RuntimeError: course modules []", errors[1]
    assert errors[2].startswith("PermissionError") and errors[3].startswith("PermissionError"), errors[2:4]
    count, first = errors[4].split(" processes, pid 1 ")
    assert int(count.split()[-1]) <= 8 and first == "bwrap", errors[4]
    assert errors[5] == "RuntimeError: interfaces ['lo'] host sandbox", errors[5]


@needs_sandbox
def test_a_failed_warm_start_falls_back_to_a_cold_run_and_says_so(tmp_path, monkeypatch):
    """A zygote that cannot serve, or a fork request that fails, costs a cold start, never the submission."""
    from autograder import zygote

    path = tiny_notebook(tmp_path, "01_attention", "def causal_mask(T):\n    import torch\n    return torch.ones(T, T).tril().bool()")

    def refuse(*args, **kwargs):
        raise OSError("no fork for you")

    monkeypatch.setattr(zygote, "_current", None)   # this test's zygote, not the other tests'
    monkeypatch.setattr(zygote.Zygote, "spawn", refuse)
    record = grade_notebook(path, limits=Limits(total_timeout=120))
    assert record["status"] == "graded" and "start" not in record["sandbox"]
    assert "the warm start failed; this run started cold" in record["sandbox"]["notes"]
    assert {e["id"]: e["status"] for e in record["exercises"]}["attention.causal_mask"] == "passed"
    # the process then stops trying: the next run starts cold at once, and says why
    record = grade_notebook(path, limits=Limits(total_timeout=120))
    assert record["status"] == "graded" and "start" not in record["sandbox"]
    assert "no warm start (a warm start failed in this grading process); this run started cold" \
        in record["sandbox"]["notes"], record["sandbox"]["notes"]


def test_the_zygote_never_joins_the_graders_own_namespaces():
    """Joining the host's namespaces by mistake would be no sandbox at all: refused before any fork."""
    from autograder import zygote

    with pytest.raises(OSError, match="shares the grader's"):
        zygote.namespace_fds(os.getpid())


def test_the_sandbox_placeholder_is_found_with_or_without_the_children_file():
    """``/proc/PID/task/PID/children`` needs CONFIG_PROC_CHILDREN; without it /proc is scanned."""
    import subprocess
    import sys

    from autograder import zygote

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert str(child.pid) in zygote._scan_children(os.getpid())
        assert sorted(zygote._scan_children(os.getpid())) == sorted(zygote._children(os.getpid()))
    finally:
        child.kill()
        child.wait()
