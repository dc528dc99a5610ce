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


def autocast(device: torch.device, compute_dtype: torch.dtype) -> AbstractContextManager:
    """bf16 autocast for the forward (the backward follows it), a no-op context for fp32."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=compute_dtype == torch.bfloat16)


def to_master(model: nn.Module) -> nn.Module:
    """Cast a freshly loaded model to the fp32 master dtype (a bf16 checkpoint is upcast exactly)."""
    return model.to(dtype=MASTER_DTYPE)


# Hugging Face Trainer's rule (``Trainer.get_decay_parameter_names``): no decay for parameters of a LayerNorm
# module or whose name contains ``bias``, ``layernorm``, ``rmsnorm``, or a path component ``norm`` / ``*_norm``
NO_DECAY_NAME_PATTERNS = (r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)")
WEIGHT_DECAY_EXEMPT = ("bias_and_norm", "none")


def decay_parameter_names(model: nn.Module, exempt: str = "bias_and_norm") -> set[str]:
    """Names of the parameters AdamW decays: all of them (``exempt="none"``), or all but biases and norm weights
    (``"bias_and_norm"``, the Hugging Face Trainer's rule, which the reference's and most peers' runs use).

    Decided by parameter name and module type, so it gives the same answer on a plain, DDP or FSDP2-sharded
    model (FSDP2 keeps the module tree and the names)."""
    if exempt == "none":
        return {n for n, _ in model.named_parameters()}
    if exempt != "bias_and_norm":
        raise ValueError(f"weight_decay_exempt={exempt!r}: expected one of {WEIGHT_DECAY_EXEMPT}")
    from transformers.pytorch_utils import ALL_LAYERNORM_LAYERS
    from transformers.trainer_pt_utils import get_parameter_names

    return set(get_parameter_names(model, ALL_LAYERNORM_LAYERS, list(NO_DECAY_NAME_PATTERNS)))


def parameter_groups(model: nn.Module, *, weight_decay: float, exempt: str = "bias_and_norm") -> list[dict]:
    """AdamW parameter groups of the trainable parameters, in ``named_parameters`` order within each group:
    ``[decayed]`` with ``exempt="none"``, ``[decayed, exempt (weight_decay 0)]`` otherwise (both groups always
    present, possibly empty, so the optimizer's state layout depends only on the setting)."""
    decayed = decay_parameter_names(model, exempt)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in named if n in decayed], "weight_decay": weight_decay}]
    if exempt != "none":
        groups.append({"params": [p for n, p in named if n not in decayed], "weight_decay": 0.0})
    return groups


def make_optimizer(model: nn.Module, *, learning_rate: float, betas, weight_decay: float,
                   eps: float = 1e-8, weight_decay_exempt: str = "bias_and_norm") -> torch.optim.Optimizer:
    """AdamW over the trainable parameters, in the parameters' own (master) dtype, decaying what
    ``weight_decay_exempt`` leaves (``parameter_groups``)."""
    groups = parameter_groups(model, weight_decay=weight_decay, exempt=weight_decay_exempt)
    return torch.optim.AdamW(groups, lr=learning_rate, betas=tuple(betas), eps=eps, weight_decay=weight_decay)


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
