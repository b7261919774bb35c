"""The one device policy: ``auto`` is the first CUDA device when there is one, else the CPU; any other
name is torch's (``cpu``, ``cuda``, ``cuda:1``, ``mps``)."""

from __future__ import annotations

import torch


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
