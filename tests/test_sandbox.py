"""What a submission's kernel may not do: hang, die, or reach the network. Tiny notebooks, no model."""
from __future__ import annotations

from autograder.grade import grade_notebook
from autograder.runner import Limits

from conftest import tiny_notebook


def test_a_dead_kernel_still_gets_a_record(tmp_path):
    path = tiny_notebook(tmp_path, "01_attention", "x = 1", "import os\nos._exit(1)")
    record = grade_notebook(path, limits=Limits(total_timeout=120))
    assert record["status"] == "crashed"
    assert "kernel died" in record["message"]
    assert record["score"] == 0 and len(record["exercises"]) == 4


def test_an_endless_notebook_times_out(tmp_path):
    path = tiny_notebook(tmp_path, "01_attention", "while True:\n    pass")
    record = grade_notebook(path, limits=Limits(total_timeout=8, cell_timeout=60))
    assert record["status"] == "timeout" and "8 s" in record["message"]
    assert record["seconds"] < 30


def test_a_slow_cell_is_interrupted_and_grading_goes_on(tmp_path):
    path = tiny_notebook(tmp_path, "01_attention", "import time\ntime.sleep(60)",
                         "def causal_mask(T):\n    import torch\n    return torch.ones(T, T).tril().bool()")
    record = grade_notebook(path, limits=Limits(total_timeout=120, cell_timeout=3))
    assert record["status"] == "graded"
    assert record["cell_errors"][0]["cell"] == 1
    by_id = {e["id"]: e for e in record["exercises"]}
    assert by_id["attention.causal_mask"]["status"] == "passed"
    assert by_id["attention.sdpa"]["status"] == "missing" and "not defined" in by_id["attention.sdpa"]["message"]


def test_the_kernel_has_no_network(tmp_path):
    path = tiny_notebook(tmp_path, "01_attention",
                         "import urllib.request\nurllib.request.urlopen('http://example.com', timeout=5)",
                         "import socket\nsocket.create_connection(('93.184.216.34', 80), timeout=5)")
    record = grade_notebook(path, limits=Limits(total_timeout=120))
    errors = [e["error"] for e in record["cell_errors"]]
    assert len(errors) == 2 and all("network access is disabled" in e for e in errors), errors


def test_without_root_mechanisms_the_grader_falls_back_and_still_grades(tmp_path, monkeypatch):
    """What a machine without namespaces (or a grader not running as root) gets: rlimits and the audit hook."""
    from autograder import runner

    monkeypatch.setattr(runner, "sandbox", lambda: runner.Sandbox(False, False, False, ("no namespaces here",)))
    path = tiny_notebook(tmp_path, "01_attention", "import socket\nsocket.create_connection(('93.184.216.34', 80), timeout=5)",
                         "def causal_mask(T):\n    import torch\n    return torch.ones(T, T).tril().bool()")
    record = grade_notebook(path, limits=Limits(total_timeout=120))
    assert record["status"] == "graded"
    assert "network access is disabled" in record["cell_errors"][0]["error"]
    assert {e["id"]: e["status"] for e in record["exercises"]}["attention.causal_mask"] == "passed"
