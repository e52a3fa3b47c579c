"""A learner's session in a real browser: `make lab`, notebook 01, Run All, one exercise, save, grade.

Playwright for Python drives Debian's Chromium (``/usr/bin/chromium``, or ``$CHROMIUM``) through
``executable_path``: Playwright's own browser download needs the internet. The JupyterLab server is
`make lab`'s, started with the same command line (``make -o setup lab LAB_DIR=... LAB_ARGS=...``) on
a free loopback port with a token, on a copy of ``notebooks/01_attention.ipynb`` in a temporary
folder (the repository stays clean). The test skips where Playwright or Chromium is missing;
``.ci/run`` installs Chromium.

Known pitfalls it handles: JupyterLab 4 renders cells lazily (outputs are read with ``textContent``,
never ``innerText``); code is typed with ``keyboard.insert_text`` (typing key by key would be
auto-indented); "idle" is the kernel's state from ``/api/kernels`` plus no ``[*]`` prompt.
"""
from __future__ import annotations

import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import RELEASE, ROOT

CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]
NOTEBOOK = "01_attention"
# The slowest step on a loaded 2-core machine is a Run All in full mode (~1 min); these limits are
# for a machine several times slower than that, not the expected times.
SERVER_START_S, OPEN_S, RUN_ALL_S, CELL_S, GRADE_S = 120, 180, 480, 120, 600

CORRECT = '''def scaled_dot_product_attention(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    return weights @ v, weights
'''
UNSCALED = CORRECT.replace(" / math.sqrt(q.shape[-1])", "")  # the README's known mistake

needs_browser = pytest.mark.skipif(not (Path(CHROMIUM).exists() and shutil.which("make")),
                                   reason=f"no Chromium at {CHROMIUM} (apt-get install chromium) or no make")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lab:
    """`make lab`'s JupyterLab server on a temporary folder, and its REST API."""

    def __init__(self, folder: Path, log: Path):
        self.port, self.token = free_port(), secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        args = (f"--no-browser --ServerApp.ip=127.0.0.1 --port={self.port} --ServerApp.port_retries=0 "
                f"--IdentityProvider.token={self.token}")
        env = dict(os.environ, PYTHONPATH=str(ROOT),  # the kernel imports this checkout's utils/autograder
                   JUPYTERLAB_WORKSPACES_DIR=str(folder.parent / "workspaces"),
                   JUPYTERLAB_SETTINGS_DIR=str(folder.parent / "settings"),
                   JUPYTER_RUNTIME_DIR=str(folder.parent / "runtime"))
        self.log = log
        self.process = subprocess.Popen(["make", "-s", "-o", "setup", "lab", f"LAB_DIR={folder}", f"LAB_ARGS={args}"],
                                        cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                                        start_new_session=True)
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if self.process.poll() is not None:
                pytest.fail(f"`make lab` exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                self.api("status")
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    pytest.fail(f"JupyterLab did not answer within {SERVER_START_S} s:\n{self.log_tail()}")
                time.sleep(0.5)

    def api(self, path: str):
        request = urllib.request.Request(f"{self.url}/api/{path}", headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self):
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)  # make and jupyter: their own process group
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def prompts(page) -> list[str]:
    """The input prompt of every code cell, e.g. "[3]:", "[*]:" or "[ ]:" (textContent: lazily rendered)."""
    return page.locator(".jp-Notebook .jp-CodeCell .jp-InputPrompt").evaluate_all(
        "els => els.map(e => e.textContent.trim())")


def run_and_wait(lab: Lab, page, action, code_index: int, timeout: float) -> list[str]:
    """Do ``action`` (which runs cells), then wait until the kernel is idle, no cell is queued and code
    cell ``code_index`` shows a new execution count. Returns the prompts; fails with them if the run
    stopped before that cell (an error in an earlier cell stops Run All)."""
    before = prompts(page)[code_index]
    action()
    deadline, idle_since = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        now = prompts(page)
        idle = all(k["execution_state"] == "idle" for k in lab.api("kernels"))
        if idle and not any("*" in p for p in now):
            if re.fullmatch(r"\[\d+\]:", now[code_index]) and now[code_index] != before:
                return now
            idle_since = idle_since or time.monotonic()
            if time.monotonic() - idle_since > 10:  # idle, nothing queued, and the cell never ran
                break
        else:
            idle_since = None
        time.sleep(0.5)
    pytest.fail(f"code cell {code_index} did not run (prompts: {prompts(page)}); the outputs:\n"
                + "\n".join(outputs(page))[-3000:])


def outputs(page) -> list[str]:
    """The text of every cell's output area, in order (textContent)."""
    return page.locator(".jp-Notebook .jp-Cell").evaluate_all(
        "els => els.map(e => { const o = e.querySelector('.jp-OutputArea'); return o ? o.textContent : ''; })")


def menu(page, top: str, item: str):
    page.locator(".lm-MenuBar-itemLabel").get_by_text(top, exact=True).click()
    page.locator(".lm-Menu-itemLabel").get_by_text(item, exact=True).click()


def type_into_cell(page, cell_index: int, code: str):
    """Replace the source of cell ``cell_index`` with ``code``, as a learner pasting it."""
    cell = page.locator(".jp-Notebook .jp-Cell").nth(cell_index)
    cell.scroll_into_view_if_needed()
    cell.locator(".cm-content").click()
    page.keyboard.press("Control+a")
    page.keyboard.insert_text(code)


def save(page):
    page.keyboard.press("Control+s")
    page.wait_for_function("() => !document.querySelector('.lm-DockPanel-tabBar .jp-mod-dirty')")


def dirty(page) -> bool:
    return page.locator(".lm-DockPanel-tabBar .lm-TabBar-tab.jp-mod-dirty").count() > 0


def test_notebooks_carry_the_kernel_metadata_jupyterlab_writes():
    """What JupyterLab writes on opening a notebook with this environment's python3 kernel is what the
    release and the solutions already say, so an untouched notebook opens unmodified."""
    from ipykernel.ipkernel import IPythonKernel
    from jupyter_client.kernelspec import KernelSpecManager

    from autograder.release import KERNEL_METADATA

    spec = KernelSpecManager().get_kernel_spec("python3")
    assert KERNEL_METADATA["kernelspec"] == {"display_name": spec.display_name, "language": spec.language,
                                             "name": "python3"}
    ours, theirs = dict(KERNEL_METADATA["language_info"]), dict(IPythonKernel.language_info)
    ours.pop("version"), theirs.pop("version")  # the reference Python's; on another, JupyterLab updates it
    assert ours == theirs
    for folder in (RELEASE, ROOT / "solutions"):
        for path in sorted(folder.glob("[0-9][0-9]_*.ipynb")):
            metadata = json.loads(path.read_text(encoding="utf-8"))["metadata"]
            assert {k: metadata.get(k) for k in KERNEL_METADATA} == KERNEL_METADATA, path


def test_make_lab_switches_off_nbgrader_instructor_tools_that_exist():
    """The plugins and server extensions `make lab` disables are real names in the installed nbgrader
    (a rename in an upgrade would silently bring them back), and Validate is not among them."""
    import importlib.util

    from jupyter_core.paths import jupyter_path

    subprocess.run(["make", "-s", "-o", "setup", "lab-config"], cwd=ROOT, check=True)
    page_config = json.loads((ROOT / "build" / "jupyter-learner" / "labconfig" / "page_config.json").read_text())
    disabled = [name for name, off in page_config["disabledExtensions"].items() if off]
    bundles = [Path(d) / "@jupyter" / "nbgrader" / "static" for d in jupyter_path("labextensions")]
    shipped = "".join(p.read_text(errors="replace") for b in bundles for p in b.glob("*.js"))
    for plugin in [p for p in disabled if p.startswith("@jupyter/nbgrader:")]:
        assert f'"{plugin}"' in shipped, plugin
    assert {"@jupyter/nbgrader:formgrader", "@jupyter/nbgrader:assignment-list", "@jupyter/nbgrader:course-list",
            "@jupyter/nbgrader:create-assignment"} <= set(disabled)
    assert '"@jupyter/nbgrader:validate-assignment"' in shipped and "@jupyter/nbgrader:validate-assignment" not in disabled
    command = subprocess.run(["make", "-n", "-o", "setup", "lab"], cwd=ROOT, capture_output=True, text=True).stdout
    for extension in re.findall(r"--ServerApp\.jpserver_extensions=([\w.]+)=False", command):
        assert importlib.util.find_spec(extension), extension
    assert len(re.findall(r"jpserver_extensions=nbgrader\.server_extensions\.", command)) == 3, command


@needs_browser
def test_a_learner_runs_all_solves_an_exercise_saves_and_grades(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
    from autograder.manifests import assignment
    from autograder.release import COURSE_PYTHON

    timings = {}
    start = time.monotonic()
    folder = tmp_path / "work"
    folder.mkdir()
    path = folder / f"{NOTEBOOK}.ipynb"
    shutil.copyfile(RELEASE / path.name, path)
    nb = json.loads(path.read_text(encoding="utf-8"))
    code_cells = [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"]
    solution = next(i for i, c in enumerate(nb["cells"]) if c["metadata"].get("nbgrader", {}).get("grade_id") == "sdpa")
    check_cell = next(i for i, c in enumerate(nb["cells"])
                      if c["metadata"].get("nbgrader", {}).get("grade_id") == "check_sdpa")
    sdpa = next(e for e in assignment(NOTEBOOK).exercises if e.id == "attention.sdpa")

    lab = Lab(folder, tmp_path / "jupyter.log")
    try:
        timings["server"] = time.monotonic() - start
        with sync_api.sync_playwright() as pw:
            context = pw.chromium.launch_persistent_context(
                str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True, args=FLAGS,
                viewport={"width": 1440, "height": 900})
            try:
                page = context.pages[0] if context.pages else context.new_page()
                page.set_default_timeout(60_000)
                errors = []
                page.on("pageerror", lambda exc: errors.append(str(exc)))

                t = time.monotonic()
                page.goto(f"{lab.url}/lab/tree/{path.name}?reset&token={lab.token}")
                page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=OPEN_S * 1000)
                # JupyterLab attaches the cells a few at a time: wait for all of them.
                page.wait_for_function(f"() => document.querySelectorAll('.jp-Notebook .jp-Cell').length === "
                                       f"{len(nb['cells'])}", timeout=OPEN_S * 1000)
                timings["open"] = time.monotonic() - t
                # An untouched release notebook opens unmodified (its kernel metadata is what JupyterLab
                # writes), where the kernel's Python is the one the release names.
                if platform.python_version() == COURSE_PYTHON:
                    page.wait_for_timeout(2000)
                    assert not dirty(page), "an untouched release notebook opened as modified"
                # nbgrader's instructor tools are not in the learner's JupyterLab.
                menus = page.locator(".lm-MenuBar-itemLabel").all_text_contents()
                assert "Nbgrader" not in menus, menus

                # Run All on a fresh release: every code cell runs, none raises.
                t = time.monotonic()
                shown = run_and_wait(lab, page, lambda: menu(page, "Run", "Run All Cells"), len(code_cells) - 1,
                                     RUN_ALL_S)
                timings["run_all"] = time.monotonic() - t
                timings["cells_run"] = sum(bool(re.fullmatch(r"\[\d+\]:", p)) for p in shown)
                assert timings["cells_run"] == len(code_cells), shown
                text = outputs(page)
                assert "not implemented yet" in text[check_cell], text[check_cell]
                save(page)
                ran = json.loads(path.read_text(encoding="utf-8"))["cells"]
                raised = [(i, o.get("ename"), o.get("evalue")) for i, c in enumerate(ran) if c["cell_type"] == "code"
                          for o in c["outputs"] if o["output_type"] == "error"]
                assert not raised, raised

                # The known mistake: every public case fails, with its hint, once.
                t = time.monotonic()
                check_code = code_cells.index(check_cell)
                type_into_cell(page, solution, UNSCALED)
                run_and_wait(lab, page, lambda: (page.keyboard.press("Shift+Enter"), page.keyboard.press("Shift+Enter")),
                             check_code, CELL_S)
                wrong = outputs(page)[check_cell]
                assert wrong.count("✗") == 4 and "✓" not in wrong, wrong
                assert wrong.count("Hint: your scores are not divided by sqrt(d)") == 1, wrong
                assert "SelfCheckFailed: attention.sdpa: 4 of 4 public cases failed" in wrong, wrong

                # The correct answer passes.
                type_into_cell(page, solution, CORRECT)
                run_and_wait(lab, page, lambda: (page.keyboard.press("Shift+Enter"), page.keyboard.press("Shift+Enter")),
                             check_code, CELL_S)
                right = outputs(page)[check_cell]
                assert "attention.sdpa: all 4 public cases passed" in right, right
                timings["exercise"] = time.monotonic() - t

                save(page)
                assert not errors, errors
            finally:
                context.close()
    finally:
        lab.stop()

    saved = json.loads(path.read_text(encoding="utf-8"))
    assert "math.sqrt(q.shape[-1])" in "".join(saved["cells"][solution]["source"])

    t = time.monotonic()
    out = tmp_path / "grades"
    result = subprocess.run([sys.executable, "-m", "autograder", "grade", str(path), "--out", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=GRADE_S)
    timings["grade"] = time.monotonic() - t
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    record = json.loads((out / f"{NOTEBOOK}.json").read_text())
    scores = {e["id"]: e for e in record["exercises"]}
    assert record["status"] == "graded", record
    assert scores["attention.sdpa"]["status"] == "passed", scores["attention.sdpa"]
    assert record["score"] == pytest.approx(sdpa.points), record["score"]
    timings["total"] = time.monotonic() - start
    print("browser test timings (s): " + ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}"
                                                   for k, v in timings.items()))
