"""The optimizer options SFT and RL share: AdamW, its learning-rate schedule, gradient clipping, precision.

One model, ``OptimizerConfig``, documents them once. Its defaults are the RL reference runs' (GRPO_CARE.md
section 7); SFT keeps its own for three of them (``SFTOptimizer``: learning rate 1e-5, no weight decay, clip at
1.0). The YAML layout differs by stage, as it always has: RL takes them under ``optim:`` (``OptimConfig`` adds
the update's own options), SFT at the top level of its config. ``care.train.toolkit`` turns them into the AdamW
optimizer and schedule.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from care.config import StageConfig
from care.sections import with_defaults


class OptimizerConfig(StageConfig):
    """AdamW over fp32 master weights, its schedule, the gradient clip and the compute precision."""

    learning_rate: float = Field(1e-6, gt=0, description="AdamW peak learning rate.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    weight_decay_exempt: Literal["bias_and_norm", "none"] = Field(
        "bias_and_norm", description="Parameters AdamW does not decay: 'bias_and_norm' = biases and norm weights, "
        "the Hugging Face Trainer's rule (the reference's runs); 'none' = decay every parameter.")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas.")
    max_grad_norm: float = Field(5.0, gt=0, description="Gradient-norm clip.")
    lr_scheduler: Literal["cosine", "constant"] = Field(
        "cosine", description="Learning-rate schedule after the warm-up: cosine decay to 0 over the run, or constant.")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up optimizer steps.")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto = bf16 on a GPU that supports it, else fp32.")
    gradient_checkpointing: bool = Field(False, description="Trade compute for activation memory.")


class SFTOptimizer(with_defaults(OptimizerConfig, learning_rate=1e-5, weight_decay=0.0, max_grad_norm=1.0)):
    """``OptimizerConfig`` with SFT's defaults: learning rate 1e-5, no weight decay, gradient clip 1.0."""
