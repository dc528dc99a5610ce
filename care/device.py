"""Where a model runs and in which compute dtype: the same choice for training, evaluation and the trackers.

A base module (torch only), below ``care.train`` and ``care.eval`` so that both, and ``care.tracking`` (which the
stage configs build on), pick the device the same way without importing each other.
"""

from __future__ import annotations

import torch


def default_device() -> torch.device:
    """The first CUDA GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The compute dtype: ``bf16`` as asked, ``auto`` = bf16 on a GPU that supports it, else fp32.

    >>> resolve_dtype("auto", torch.device("cpu")), resolve_dtype("bf16", torch.device("cpu"))
    (torch.float32, torch.bfloat16)
    """
    if precision == "bf16" or (precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float32
