"""Loading the policy / reference of a checkpoint for a stage, and the device and dtype to run them on."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from care.models.loading import load_model, load_processor
from care.train.checkpoint import verify_manifest
from care.train.toolkit import MASTER_DTYPE, default_device, resolve_dtype

__all__ = ["MASTER_DTYPE", "checkpoint_id", "default_device", "load_policy", "load_reference", "policy_path",
           "reference_path", "resolve_dtype"]


def policy_path(checkpoint: str | Path) -> Path:
    return Path(checkpoint) / "policy"


def reference_path(checkpoint: str | Path) -> Path:
    return Path(checkpoint) / "reference"


def checkpoint_id(checkpoint: str | Path) -> str:
    """Content id of a checkpoint: sha256 of its manifest (which lists every file's sha256), 16 hex digits."""
    manifest = Path(checkpoint) / "MANIFEST.json"
    return hashlib.sha256(manifest.read_bytes()).hexdigest()[:16]


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
