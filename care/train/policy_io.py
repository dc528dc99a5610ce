"""Loading the policy / reference of a checkpoint for a stage, and the device and dtype to run them on."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from care.models.loading import load_model, load_processor
from care.train.checkpoint import verify_manifest


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """``auto``: bf16 on a GPU that supports it, else fp32 (CPU training stays in fp32)."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float32


def policy_path(checkpoint: str | Path) -> Path:
    return Path(checkpoint) / "policy"


def reference_path(checkpoint: str | Path) -> Path:
    return Path(checkpoint) / "reference"


def checkpoint_id(checkpoint: str | Path) -> str:
    """Content id of a checkpoint: sha256 of its manifest (which lists every file's sha256), 16 hex digits."""
    manifest = Path(checkpoint) / "MANIFEST.json"
    return hashlib.sha256(manifest.read_bytes()).hexdigest()[:16]


def load_policy(checkpoint: str | Path, *, device: torch.device | None = None, dtype: torch.dtype | None = None):
    """(model, processor) of the checkpoint's policy, in eval mode; the checkpoint's manifest is verified first."""
    verify_manifest(Path(checkpoint))
    device = device or default_device()
    model = load_model(policy_path(checkpoint), dtype=dtype, device=device)
    return model, load_processor(policy_path(checkpoint))


def load_reference(checkpoint: str | Path, *, device: torch.device | None = None, dtype: torch.dtype | None = None):
    verify_manifest(Path(checkpoint))
    device = device or default_device()
    model = load_model(reference_path(checkpoint), dtype=dtype, device=device)
    model.requires_grad_(False)
    return model
