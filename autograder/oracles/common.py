"""Helpers every oracle uses."""
from __future__ import annotations

import numpy as np
import torch


def tensor(inputs: dict, key: str) -> torch.Tensor:
    """A case's input as a tensor of its own (a copy: references never share memory with the inputs)."""
    return torch.from_numpy(np.array(inputs[key], copy=True))
