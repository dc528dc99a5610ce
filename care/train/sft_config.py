"""Typed configuration of the SFT stage (``care sft``): one frozen model, loaded from YAML.

Defaults suit a real model on a GPU; ``care/configs/sft_demo.yaml`` holds the measured settings for the tiny
model on 2 CPU cores. The same model is the ``sft`` flow's parameter schema. The optimizer options (learning rate,
betas, schedule, clip, precision, ...) are ``care.train.optimizer_config.OptimizerConfig``'s, shared with RL, at
the top level of the config with SFT's defaults (``SFTOptimizer``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from care import identity
from care.media.sampling import FrameSampling
from care.tracking import TRACKING_FIELDS, TrackingOptions
from care.train.optimizer_config import SFTOptimizer


class SFTConfig(TrackingOptions, SFTOptimizer):
    """Supervised fine-tuning on the CoT training file, loss on the assistant turn only."""

    run_name: str | None = Field(None, description="Run id; default derives from the config hash so a re-run resumes it.")
    model: str = Field(..., description="Initial policy: a local save_pretrained folder or a hub id (GPU machines).")
    data_root: str = Field(..., description="SEED-Bench-R1-layout root (annotations/, videos/, images/).")
    annotations: str = Field("training_with_cot_6k.jsonl", description="CoT training file, relative to data_root/annotations (rows need a 'cot').")
    prompt: Literal["care", "reference"] = Field(
        "care", description="Prompt template of the training prompts (care.algo.prompt): 'care', or 'reference' "
        "= the reference code's training prompt.")
    shuffle_options: bool = Field(True, description="Shuffle the 4 options per training row (seeded); false for the tiny demo model.")
    frames: FrameSampling = Field(default_factory=FrameSampling, description="Frame sampling of the frame cache to read (as preprocessed).")
    seed: int = Field(0, description="Seeds the data order and the option shuffle.")
    steps: int = Field(1000, ge=1, description="Optimizer steps (batches) to run in all, counting resumed ones.")
    batch_size: int = Field(16, ge=1, description="Samples per step.")
    checkpoint_every: int = Field(200, ge=1, description="Write a resumable checkpoint every this many steps (and at the end).")
    log_every: int = Field(50, ge=1, description="Record window-mean metrics and run the sampled check every this many steps.")
    check_prompts: int = Field(16, ge=0, description="Training prompts greedily decoded at each log step for format/accuracy (0 = off).")
    check_max_new_tokens: int = Field(64, ge=1, description="Completion length limit of the sampled check.")
    keep_checkpoints: int = Field(2, ge=0, description="Keep only the newest N step checkpoints (0 = keep all).")

    def run_id(self) -> str:
        """``run_name``, or ``sft-<hash of the config>``: re-running the same config continues the same run."""
        if self.run_name:
            return self.run_name
        return identity.run_id("sft", self.model_dump(mode="json", exclude={"run_name", *TRACKING_FIELDS}))
