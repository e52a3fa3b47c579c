"""Seeding, device selection and warning control."""
from __future__ import annotations

import logging
import os
import random
import sys
import warnings

import numpy as np
import torch


def seed_everything(seed: int = 0) -> None:
    """Seed Python, NumPy and PyTorch so that a notebook gives the same numbers on every run.

    >>> seed_everything(0); a = torch.rand(2)
    >>> seed_everything(0); b = torch.rand(2)
    >>> bool(torch.equal(a, b))
    True
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)


def get_device(prefer: str | None = None) -> torch.device:
    """The best device on this machine: CUDA, then Apple's MPS, then the CPU.

    ``prefer="cpu"`` (or the environment variable ``LLM_COURSE_DEVICE``) forces a choice; the
    course is written so that everything runs on a laptop CPU.
    """
    choice = prefer or os.environ.get("LLM_COURSE_DEVICE")
    if choice:
        return torch.device(choice)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def quiet() -> None:
    """Silence the warnings and progress bars of libraries, so graded output stays readable.

    transformers is not imported for this (it takes seconds, and notebooks 00-04 never need it): the
    environment variables below are read when it is first imported; if it already is, it is told directly.
    """
    warnings.filterwarnings("ignore")
    for name in ("transformers", "sentence_transformers", "accelerate", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' own bars follow the hub's
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()


def environment_report(show: bool = True) -> dict:
    """Versions, device, offline mode and the state of every asset: what notebook 00 checks first."""
    import importlib.metadata as metadata
    import platform

    from .assets import status

    packages = ["torch", "transformers", "tokenizers", "sentence-transformers", "nbgrader", "papermill", "matplotlib"]
    report = {"python": platform.python_version()}
    for name in packages:
        try:
            report[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            report[name] = "not installed"
    report["device"] = str(get_device())
    report["offline (HF_HUB_OFFLINE)"] = os.environ.get("HF_HUB_OFFLINE", "0")
    report.update({f"asset: {name}": state for name, state in status().items()})
    if show:
        width = max(len(key) for key in report)
        for key, value in report.items():
            print(f"{key:<{width}}  {value}")
    return report
