"""Loading the policy / reference of a checkpoint for a stage (fp32 master weights, on the default device).

A checkpoint's content id is ``care.identity.checkpoint_id``; the device and dtype choice is ``care.device``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from care.device import default_device
from care.models.loading import load_model, load_processor
from care.train.checkpoint import verify_manifest
from care.train.toolkit import MASTER_DTYPE


def policy_path(checkpoint: str | Path) -> Path:
    return Path(checkpoint) / "policy"


def reference_path(checkpoint: str | Path) -> Path:
    return Path(checkpoint) / "reference"


def load_policy(checkpoint: str | Path, *, device: torch.device | None = None,
                dtype: torch.dtype | None = MASTER_DTYPE, verify: bool = True):
    """(model, processor) of the checkpoint's policy, in eval mode; the checkpoint's manifest is verified first.

    ``dtype`` defaults to the fp32 master dtype whatever the checkpoint stores (transformers' ``dtype=None``
    would keep a bf16 checkpoint in bf16, where small updates round away)."""
    if verify:
        verify_manifest(Path(checkpoint))
    device = device or default_device()
    model = load_model(policy_path(checkpoint), dtype=dtype, device=device)
    return model, load_processor(policy_path(checkpoint))


def load_reference(checkpoint: str | Path, *, device: torch.device | None = None,
                   dtype: torch.dtype | None = MASTER_DTYPE, verify: bool = True):
    """The checkpoint's reference (EMA or frozen), fp32 by default so the EMA accumulates in fp32."""
    if verify:
        verify_manifest(Path(checkpoint))
    device = device or default_device()
    model = load_model(reference_path(checkpoint), dtype=dtype, device=device)
    model.requires_grad_(False)
    return model
