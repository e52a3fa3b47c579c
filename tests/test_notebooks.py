"""Notebooks run for real: papermill in the sandboxed kernel, graded by the trusted process.

Each graded run starts a kernel (~2 s) and most load SmolLM2 (~5 s), so this file keeps their
number small: one run per solution, one per student release, two deliberately wrong
submissions of notebook 01 and one each of notebooks 02 and 03. Every student release also runs
top to bottom once as a learner's Run All (FAST, outside grading), two notebooks at a time.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import nbformat
import pytest

from autograder import manifests
from autograder.classgrade import course_jobs, grade_many
from autograder.grade import grade_notebook

from conftest import RELEASE, ROOT, SOLUTIONS, make_variant

NAMES = sorted(manifests.ASSIGNMENTS)


def selected(request, fixture: str) -> list[str]:
    """The notebooks of the selected tests that use ``fixture`` (``pytest -k 05`` runs 05 only)."""
    return sorted({item.callspec.params["name"] for item in request.session.items
                   if fixture in getattr(item, "fixturenames", ()) and "name" in getattr(getattr(item, "callspec", None), "params", {})})


@pytest.fixture(scope="session")
def executed(tmp_path_factory, request):
    """Grade every solution once (keeping the executed notebook) and every release once, on its setup and
    exercise cells (the Run All tests run the whole release)."""
    out = tmp_path_factory.mktemp("executed")
    names = selected(request, "executed")
    keys = [(kind, name) for name in names for kind in ("solution", "release")]
    return dict(zip(keys, grade_many(course_jobs(names, executed=out), workers=2)))


@pytest.mark.parametrize("name", NAMES)
def test_solution_runs_clean_and_scores_full_marks(executed, name):
    record = executed[("solution", name)]
    assert record["status"] == "graded", record["message"]
    assert "cell_errors" not in record, record["cell_errors"]
    assert record["score"] == record["max_score"] == manifests.assignment(name).max_score
    assert all(e["status"] == "passed" for e in record["exercises"]), record["exercises"]


@pytest.mark.parametrize("name", NAMES)
def test_student_release_scores_zero_with_a_message_per_exercise(executed, name):
    record = executed[("release", name)]
    assert record["status"] == "graded", record["message"]
    assert record["score"] == 0
    ids = [e["id"] for e in record["exercises"]]
    assert ids == [ex.id for ex in manifests.assignment(name).exercises]
    for exercise in record["exercises"]:
        assert exercise["status"] == "missing" and "NotImplementedError" in exercise["message"], exercise


# What a learner's Run All must print beyond the notices, per notebook (cells that are easy to break).
RUN_ALL_EXTRAS = {"09_efficiency": ("a bad body: 400", "still serving", "server stopped")}


@pytest.fixture(scope="session")
def run_all(tmp_path_factory, request):
    """Every release with nothing solved, Run All in FAST as a learner runs it (papermill, not graded),
    two at a time with one thread each; the executed notebooks (or papermill's error) by name."""
    out = tmp_path_factory.mktemp("run_all")
    env = {k: v for k, v in os.environ.items() if k != "LLM_COURSE_GRADING"}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""))

    def run(name):
        done = subprocess.run([sys.executable, "-m", "papermill", str(RELEASE / f"{name}.ipynb"), str(out / f"{name}.ipynb"),
                               "-p", "FAST", "True", "-k", "python3", "--cwd", str(ROOT), "--no-progress-bar"],
                              capture_output=True, text=True, env=env, timeout=1200)
        return done.stderr[-3000:] if done.returncode else nbformat.read(out / f"{name}.ipynb", as_version=4)

    names = selected(request, "run_all")
    with ThreadPoolExecutor(2) as pool:
        return dict(zip(names, pool.map(run, names)))


@pytest.mark.parametrize("name", NAMES)
def test_fresh_release_runs_top_to_bottom_with_every_exercise_unsolved(run_all, name):
    """Never block a learner: no error cell; every check says "not implemented yet"; every demo that
    uses an exercise (``use("id", ...)``) says it falls back to the course's version."""
    nb = run_all[name]
    assert not isinstance(nb, str), nb
    errors = [f"{o.get('ename')}: {o.get('evalue')}" for c in nb.cells for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors, errors
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "stream")
    source = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    used = set(re.findall(r"""use\(\s*["']([\w.]+)["']""", source))
    for ex in manifests.assignment(name).exercises:
        assert f"{ex.callable} is not implemented yet" in text, ex.callable
        if ex.id in used:
            assert f"your {ex.callable} does not pass its self-check yet" in text, ex.callable
    for line in RUN_ALL_EXTRAS.get(name, ()):
        assert line in text, line


UNSCALED_SDPA = '''
def scaled_dot_product_attention(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1)                      # forgot the 1/sqrt(d)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    return weights @ v, weights
'''


def test_unscaled_attention_is_named_in_the_feedback(tmp_path):
    record = grade_notebook(make_variant(tmp_path, "01_attention__unscaled", {"sdpa": UNSCALED_SDPA}))
    by_id = {e["id"]: e for e in record["exercises"]}
    assert record["status"] == "graded"
    assert by_id["attention.sdpa"]["score"] == 0 and "sqrt(d)" in by_id["attention.sdpa"]["message"]
    # MultiHeadAttention reuses the unscaled function: its own hint names the per-head scale.
    assert by_id["attention.mha"]["score"] == 0 and "d_head" in by_id["attention.mha"]["message"]
    assert by_id["attention.causal_mask"]["status"] == by_id["attention.padding_mask"]["status"] == "passed"
    assert record["score"] == 3


def test_partial_work_keeps_its_credit_after_a_failing_cell(tmp_path):
    """Exercises 1 and 2 done, a cell that raises in between, 3 and 4 left as released."""
    student = {"padding_mask": "def padding_mask(lengths, T):\n    raise NotImplementedError()",
               "mha": (RELEASE / "01_attention.ipynb").read_text()}  # placeholder, replaced below
    released = json.loads(student["mha"])
    mha_stub = next(c for c in released["cells"] if c["metadata"].get("nbgrader", {}).get("grade_id") == "mha")
    student["mha"] = "".join(mha_stub["source"])
    path = make_variant(tmp_path, "01_attention__partial", student,
                        insert_after={"check_causal_mask": "undefined_variable + 1  # a learner's broken cell"})
    record = grade_notebook(path)
    by_id = {e["id"]: e for e in record["exercises"]}
    assert record["status"] == "graded"
    assert by_id["attention.sdpa"]["status"] == by_id["attention.causal_mask"]["status"] == "passed"
    assert by_id["attention.padding_mask"]["status"] == by_id["attention.mha"]["status"] == "missing"
    assert record["score"] == 4
    assert any("NameError" in e["error"] for e in record["cell_errors"])


def test_cli_grades_a_batch_with_broken_files_and_exits_zero(tmp_path):
    broken = tmp_path / "01_attention.ipynb"
    broken.write_text('{"cells": [', encoding="utf-8")
    old = tmp_path / "00_setup.ipynb"
    old.write_text(json.dumps({"nbformat": 3, "nbformat_minor": 0, "metadata": {}, "worksheets": []}))
    out = tmp_path / "grades"
    result = subprocess.run([sys.executable, "-m", "autograder", "grade", str(broken), str(old), "--out", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    records = {p.stem: json.loads(p.read_text()) for p in out.glob("*.json")}
    assert records["01_attention"]["status"] == records["00_setup"]["status"] == "invalid"
    assert "version 3" in records["00_setup"]["message"]
    assert set(records["01_attention"]) >= {"notebook", "submission", "status", "score", "max_score", "seconds", "exercises"}
    assert "invalid" in result.stdout


POST_NORM_BLOCK = '''
class TransformerBlock(nn.Module):
    def __init__(self, d_model, n_heads):
        super().__init__()
        self.ln_1 = LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_heads)
        self.ln_2 = LayerNorm(d_model)
        self.mlp = FeedForward(d_model, 4 * d_model)

    def forward(self, x):                       # the 2017 arrangement, not GPT-2's
        x = self.ln_1(x + self.attn(x))
        return self.ln_2(x + self.mlp(x))
'''


def test_post_norm_block_is_named_in_the_feedback(tmp_path):
    record = grade_notebook(make_variant(tmp_path, "02_transformer__post_norm", {"block": POST_NORM_BLOCK}))
    by_id = {e["id"]: e for e in record["exercises"]}
    assert record["status"] == "graded", record["message"]
    assert by_id["transformer.block"]["score"] == 0 and "post-norm" in by_id["transformer.block"]["message"]
    assert by_id["transformer.gpt"]["score"] == 0          # built from the wrong block
    assert by_id["transformer.load_gpt2_weights"]["status"] == "passed"  # graded on the reference GPT
    assert record["score"] == record["max_score"] - 6


ENCODE_WITHOUT_PRETOKENISATION = '''
def encode(text, merges, vocab):
    byte_id = {token[0]: token_id for token_id, token in vocab.items() if len(token) == 1}
    seq = [byte_id[b] for b in text.encode("utf-8")]          # the whole text as one chunk
    while len(seq) >= 2:
        pair = min(zip(seq, seq[1:]), key=lambda p: merges.get(p, math.inf))
        if pair not in merges:
            break
        seq = merge_pair(seq, pair, merges[pair])
    return seq
'''


def test_encode_without_pretokenisation_gets_partial_credit_and_its_hint(tmp_path):
    record = grade_notebook(make_variant(tmp_path, "03_tokenization__no_split", {"encode": ENCODE_WITHOUT_PRETOKENISATION}))
    by_id = {e["id"]: e for e in record["exercises"]}
    assert record["status"] == "graded", record["message"]
    encode = by_id["tokenization.encode"]
    assert 0 < encode["score"] < encode["max_score"] and "pretokenize" in encode["message"], encode
    assert all(e["status"] == "passed" for e in record["exercises"] if e["id"] != "tokenization.encode")
