"""Scheduled retraining: one round continues an RL run from its newest checkpoint on the current annotations.

A round is: preprocess the training annotations as they are now (new videos are decoded, cached ones are hits),
run ``rl.iterations`` more RL iterations from the run's newest complete checkpoint, then evaluate the checkpoint
the round produced. ``RetrainConfig`` is the parameter schema of the ``retrain`` flow (flows/retrain.py); the
helpers below are plain Python so the round arithmetic is testable without Prefect.

The run id must not change from round to round (it names the checkpoint folder the next round continues from),
so it is ``rl.run_name`` when set, else derived from the RL config *without* ``iterations`` (which the flow
raises every round).
"""

from __future__ import annotations

from pydantic import Field

from care import identity
from care.config import StageConfig
from care.eval_schema import EvalConfig, EvalDecoding
from care.media.preprocess import PreprocessConfig
from care.train.config import RLConfig


class RetrainConfig(StageConfig):
    """Options of one retraining round (the ``retrain`` flow / the scheduled ``retrain`` deployment)."""

    rl: RLConfig = Field(..., description="The RL run to continue; rl.iterations = iterations added per round. "
                         "A constant learning-rate schedule suits open-ended retraining (cosine re-stretches "
                         "over the growing total).")
    preprocess_workers: int = Field(2, ge=1, description="Decoding processes per preprocessing shard.")
    preprocess_shard_size: int = Field(64, ge=1, description="Media files per preprocessing task.")
    dask_address: str | None = Field(None, description="Scheduler address (tcp://host:8786) to spread the "
                                     "preprocessing shards over a Dask cluster; None = this process.")
    evaluate: bool = Field(True, description="Evaluate the round's checkpoint on the validation levels.")
    eval_levels: list[str] = Field(default_factory=lambda: ["L1", "L2", "L3"], description="Levels to evaluate.")
    eval_limit_per_level: int | None = Field(None, ge=1, description="First N usable samples per level (None = all).")
    eval_batch_size: int = Field(8, ge=1, description="Prompts per generate() call in the evaluation.")
    eval_decoding: EvalDecoding = Field(default_factory=EvalDecoding, description="Evaluation decoding parameters.")

    def run_id(self) -> str:
        """``rl.run_name``, or ``retrain-<hash of the RL config without iterations>``: stable across rounds."""
        if self.rl.run_name:
            return self.rl.run_name
        return identity.run_id("retrain", self.rl.model_dump(mode="json", exclude={"run_name", "iterations"}))

    def round_rl_config(self, done_iterations: int) -> RLConfig:
        """The RL config of the next round: the stable run id and ``rl.iterations`` more than are done."""
        return self.rl.model_copy(update={"run_name": self.run_id(),
                                          "iterations": done_iterations + self.rl.iterations})

    def preprocess_config(self) -> PreprocessConfig:
        """Preprocessing of the training annotations with the frame sampling RL reads."""
        return PreprocessConfig(data_root=self.rl.data_root, annotations=[self.rl.train_annotations],
                                sampling=self.rl.frames, seed=self.rl.seed, shuffle_options=self.rl.shuffle_options,
                                workers=self.preprocess_workers, shard_size=self.preprocess_shard_size)

    def eval_config(self, checkpoint: str) -> EvalConfig:
        """Evaluation of a round's checkpoint; results belong to the RL run, labelled by checkpoint name."""
        return EvalConfig(checkpoint=checkpoint, run_id=self.run_id(), data_root=self.rl.data_root,
                          levels=self.eval_levels, frames=self.rl.frames, decoding=self.eval_decoding,
                          batch_size=self.eval_batch_size, limit_per_level=self.eval_limit_per_level)
