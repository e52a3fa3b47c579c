"""Build the student notebooks in ``notebooks/`` from ``solutions/`` with nbgrader.

``nbgrader generate_assignment`` is the real thing: it replaces the code between
``### BEGIN SOLUTION`` and ``### END SOLUTION`` with ``raise NotImplementedError()``, removes hidden
tests, clears outputs and records checksums. It runs in a throw-away nbgrader course directory
(``source/course/*.ipynb`` -> ``release/course/*.ipynb``); the result is normalised
(no outputs, no execution counts, stable JSON) so that ``notebooks/`` diffs cleanly in git.

The notebook's kernel metadata is set to exactly what JupyterLab writes when it opens a notebook
with the course environment's ``python3`` kernel (ipykernel's kernelspec and ``language_info``):
otherwise JupyterLab rewrites it on opening, and an untouched notebook asks to be saved when closed.
``language_info`` carries the Python version of the course's reference environment (CI's); with
another Python, JupyterLab still updates that one field.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
LEAK_MARKERS = ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS")

# What JupyterLab 4 writes into a notebook's metadata on opening it with the course's python3 kernel:
# the kernelspec of ipykernel (`jupyter kernelspec list`) and the kernel's `language_info` reply
# (`ipykernel.ipkernel.IPythonKernel.language_info`) for the reference environment's Python.
COURSE_PYTHON = "3.11.7"
KERNEL_METADATA = {
    "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
    "language_info": {
        "codemirror_mode": {"name": "ipython", "version": 3},
        "file_extension": ".py",
        "mimetype": "text/x-python",
        "name": "python",
        "nbconvert_exporter": "python",
        "pygments_lexer": "ipython3",
        "version": COURSE_PYTHON,
    },
}


def normalise(nb: nbformat.NotebookNode) -> str:
    """The notebook as the stable text we commit: no outputs, no execution counts, sorted keys."""
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        cell.metadata.pop("execution", None)
        cell.metadata.pop("papermill", None)
    nb.metadata.pop("papermill", None)
    nb.metadata.update(json.loads(json.dumps(KERNEL_METADATA)))  # a copy: never share the constant
    return json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def venv_env() -> dict[str, str]:
    """This environment with the interpreter's bin folder first on PATH (nbgrader runs `alembic`)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def generate(solutions: Path = ROOT / "solutions") -> dict[str, str]:
    """``{file name: normalised student notebook text}`` for every solution notebook."""
    sources = sorted(solutions.glob("[0-9][0-9]_*.ipynb"))
    if not sources:
        raise FileNotFoundError(f"no solution notebooks (NN_topic.ipynb) in {solutions}")
    with tempfile.TemporaryDirectory(prefix="course-release-") as tmp:
        course = Path(tmp)
        # One nbgrader run for all notebooks (each run costs ~8 s of start-up): they go into one
        # throw-away assignment here; instructors release each notebook as its own assignment.
        folder = course / "source" / "course"
        folder.mkdir(parents=True)
        for source in sources:
            shutil.copyfile(source, folder / source.name)
        command = [sys.executable, "-m", "nbgrader", "generate_assignment", "course", "--force",
                   f"--CourseDirectory.root={course}", f"--CourseDirectory.db_url=sqlite:///{course}/gradebook.db",
                   "--log-level=WARN"]
        result = subprocess.run(command, cwd=course, capture_output=True, text=True, env=venv_env())
        released = {source.name: course / "release" / "course" / source.name for source in sources}
        if result.returncode != 0 or not all(path.exists() for path in released.values()):
            raise RuntimeError(f"nbgrader generate_assignment failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return {name: normalise(nbformat.read(path, as_version=4)) for name, path in released.items()}


def leaks(text: str) -> list[str]:
    """Solution or hidden-test markers found in a student notebook's text."""
    return [marker for marker in LEAK_MARKERS if marker in text]


def release(target: Path = ROOT / "notebooks", solutions: Path = ROOT / "solutions") -> list[Path]:
    """Write the student notebooks; remove released notebooks whose solution is gone."""
    generated = generate(solutions)
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in generated.items():
        found = leaks(text)
        if found:
            raise RuntimeError(f"{name}: the release still contains {found}; check the solution cells' markers")
        path = target / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    for stale in target.glob("[0-9][0-9]_*.ipynb"):
        if stale.name not in generated:
            stale.unlink()
    return written
