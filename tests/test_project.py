"""The project's own files agree with each other: pins, commands, CI."""
from __future__ import annotations

import re
import tomllib

from conftest import ROOT


def test_environment_yml_has_the_same_pins_as_pyproject():
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    conda = re.findall(r"^\s+- ([A-Za-z0-9_.-]+==[^\s]+)$", (ROOT / "environment.yml").read_text(), flags=re.M)
    assert sorted(pins) == sorted(conda)
    assert "torch==2.13.0" in pins  # any other torch spec downloads a multi-GB CUDA build


def test_readme_opens_with_the_two_commands_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text()
    first_block = readme.split("```bash", 1)[1].split("```", 1)[0]
    assert "make course" in first_block and "make test" in first_block
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_makefile_has_the_documented_targets():
    makefile = (ROOT / "Makefile").read_text()
    for target in ("setup", "course", "test", "lab", "release", "bench", "grade"):
        assert re.search(rf"^{target}:", makefile, flags=re.M), target
