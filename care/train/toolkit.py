"""What SFT and RL share to take an optimizer step: fp32 master weights, bf16 autocast, AdamW, the schedule,
and the rule that a non-finite step is skipped.

Numerics (docs/scaling.md "Numerics"): trainable weights, gradients, AdamW moments and the EMA reference are
float32 whatever the checkpoint's dtype (``MASTER_DTYPE``). With ``precision: bf16`` the forward and backward
run under ``torch.autocast`` in bfloat16 (matmuls and attention in bf16, reductions and the loss in fp32), so
an update of size ``lr * 1e-3`` is kept: in bf16 weights (8 bits of mantissa) any change below ``|w| / 256``
rounds away, which at lr 1e-6 is nearly every change.
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager

import torch
import transformers
from torch import nn

MASTER_DTYPE = torch.float32


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The compute dtype: ``bf16`` as asked, ``auto`` = bf16 on a GPU that supports it, else fp32."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float32


def autocast(device: torch.device, compute_dtype: torch.dtype) -> AbstractContextManager:
    """bf16 autocast for the forward (the backward follows it), a no-op context for fp32."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=compute_dtype == torch.bfloat16)


def to_master(model: nn.Module) -> nn.Module:
    """Cast a freshly loaded model to the fp32 master dtype (a bf16 checkpoint is upcast exactly)."""
    return model.to(dtype=MASTER_DTYPE)


def make_optimizer(model: nn.Module, *, learning_rate: float, betas, weight_decay: float,
                   eps: float = 1e-8) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters, in the parameters' own (master) dtype."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=learning_rate, betas=tuple(betas), eps=eps, weight_decay=weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, *, kind: str, warmup_steps: int, total_steps: int):
    """Linear warm-up, then cosine decay to 0 over ``total_steps`` or constant."""
    if kind == "cosine":
        return transformers.get_cosine_schedule_with_warmup(optimizer, warmup_steps, max(total_steps, 1))
    return transformers.get_constant_schedule_with_warmup(optimizer, warmup_steps)


def step_if_finite(optimizer: torch.optim.Optimizer, scheduler, *, loss: float, grad_norm: float) -> bool:
    """Apply the step (and advance the schedule) only when loss and gradient norm are finite; always clear the
    gradients. A skipped step never reaches the weights, the moments or a checkpoint. Returns whether it ran."""
    applied = math.isfinite(loss) and math.isfinite(grad_norm)
    if applied:
        optimizer.step()
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return applied
