"""The whole pipeline's configuration: data -> preprocess -> SFT -> RL -> evaluation before and after each stage.

``PipelineConfig`` is the ``pipeline`` flow's parameter schema and ``care run``'s config file
(``care/configs/demo.yaml`` is the default). Stage sections (``sft``, ``rl``, ``eval``) hold that stage's own
options (see SFTConfig, RLConfig, EvalConfig); the pipeline fills in what it owns (model, data root, frames,
seed) and validates each section when the config is loaded, so a typo fails before any work starts.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import Field, ValidationError, model_validator

from care.config import StageConfig
from care.eval.eval_config import EvalConfig
from care.media.sampling import FrameSampling
from care.train.config import RLConfig
from care.train.sft_config import SFTConfig

EVAL_POINTS = ("base", "sft", "rl")


class DemoData(StageConfig):
    train: int = Field(2000, ge=8, description="Training rows of the generated demo set.")
    val: int = Field(200, ge=4, description="Rows per validation level (L1, L2, L3).")
    seed: int = Field(0, description="Seed of the demo generator.")
    hard_share: float = Field(0.5, ge=0, le=1, description="Share of samples whose option letters vary (see care.data.demo).")


class PipelineConfig(StageConfig):
    name: str = Field("demo", description="Prefix of the pipeline's run ids.")
    data_root: str | None = Field(None, description="SEED-Bench-R1-layout root; unset = generate the demo set in the workspace.")
    demo: DemoData = Field(default_factory=DemoData, description="Demo-set options (used when data_root is unset).")
    model: str | None = Field(None, description="Starting model (folder or hub id); unset = make the tiny offline model.")
    tiny_model_seed: int = Field(0, description="Seed of the tiny model's weights (when model is unset).")
    frames: FrameSampling = Field(default_factory=FrameSampling, description="Frame sampling for training and evaluation.")
    workers: int = Field(2, ge=1, description="Decoding processes for preprocessing.")
    seed: int = Field(0, description="Seed of SFT and RL (data order, sampling).")
    run_sft: bool = Field(True, description="Run the SFT stage before RL.")
    run_rl: bool = Field(True, description="Run the RL stage.")
    evaluate: list[str] = Field(list(EVAL_POINTS), description="Checkpoints to evaluate: base, sft, rl.")
    sft: dict[str, Any] = Field(default_factory=dict, description="SFTConfig options (model/data_root/frames/seed are filled in).")
    rl: dict[str, Any] = Field(default_factory=dict, description="RLConfig options (model/data_root/frames/seed are filled in).")
    eval: dict[str, Any] = Field(default_factory=dict, description="EvalConfig options (checkpoint/data_root/label are filled in; frames default to the pipeline's, eval.frames options override them, e.g. nframes: 16).")

    @model_validator(mode="after")
    def _sections_valid(self) -> PipelineConfig:
        unknown = sorted(set(self.evaluate) - set(EVAL_POINTS))
        if unknown:
            raise ValueError(f"evaluate: unknown point(s) {unknown}; choose from {list(EVAL_POINTS)}")
        for section, build in (("sft", self.sft_config), ("rl", self.rl_config)):
            try:
                build("<model>", "<data>")
            except ValidationError as exc:
                raise ValueError(_nested(section, exc)) from None
        try:
            self.eval_config("<checkpoint>", "<data>", "base")
        except ValidationError as exc:
            raise ValueError(_nested("eval", exc)) from None
        return self

    def run_id(self) -> str:
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return f"{self.name}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"

    def _common(self, model: str, data_root: str) -> dict[str, Any]:
        return {"model": model, "data_root": data_root, "frames": self.frames.model_dump(), "seed": self.seed}

    def sft_config(self, model: str, data_root: str) -> SFTConfig:
        return SFTConfig.model_validate({**self.sft, **self._common(model, data_root)})

    def rl_config(self, model: str, data_root: str) -> RLConfig:
        return RLConfig.model_validate({**self.rl, **self._common(model, data_root)})

    def eval_frames(self) -> FrameSampling:
        """The evaluations' frame sampling: the pipeline's, with the options of ``eval.frames`` on top (the
        SEED-Bench-R1 protocol evaluates 16 frames, more than RL trains with). The temporal positions are the
        evaluation's own (``eval.frames.temporal``, default the real fps), not the training's."""
        frames = self.frames.model_dump(exclude={"temporal"})
        return FrameSampling.model_validate({**frames, **self.eval.get("frames", {})})

    def eval_config(self, checkpoint: str, data_root: str, label: str) -> EvalConfig:
        return EvalConfig.model_validate({**self.eval, "checkpoint": checkpoint, "data_root": data_root,
                                          "frames": self.eval_frames().model_dump(), "label": label})


def _nested(section: str, exc: ValidationError) -> str:
    return "; ".join(f"{section}.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
