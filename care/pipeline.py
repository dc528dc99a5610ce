"""The whole pipeline's configuration: data -> preprocess -> SFT -> RL -> evaluation before and after each stage.

``PipelineConfig`` is the ``pipeline`` flow's parameter schema and ``care run``'s config file
(``care/configs/demo.yaml`` is the default). Stage sections (``sft``, ``rl``, ``eval``) hold that stage's own
options, typed (``SFTSection``, ``RLSection``, ``EvalSection``: SFTConfig, RLConfig and EvalConfig less what the
pipeline fills in, see care.sections): the pipeline fills in what it owns (model, data root, frames, seed;
checkpoint and label of each evaluation) and builds and validates each stage's config when the config is loaded,
so a typo (``rl.iterationz``) or a bad combination fails before any work starts.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, ValidationError, model_validator

from care import identity
from care.config import StageConfig
from care.eval_schema import EvalConfig
from care.media.sampling import FrameSampling
from care.sections import section_of
from care.train.config import RLConfig
from care.train.sft_config import SFTConfig

EVAL_POINTS = ("base", "sft", "rl")
# what the pipeline fills in of the SFT and RL configs
TRAINING_FILLED = ("model", "data_root", "frames", "seed")


class SFTSection(section_of(SFTConfig, omit=TRAINING_FILLED)):
    """SFTConfig's options; model, data_root, frames and seed are the pipeline's."""


class RLSection(section_of(RLConfig, omit=TRAINING_FILLED)):
    """RLConfig's options; model, data_root, frames and seed are the pipeline's."""


class EvalFrames(section_of(FrameSampling, optional=True)):
    """The FrameSampling options the evaluations change; unset ones are the pipeline's ``frames``, except
    ``temporal``, the evaluation's own (unset: the real fps)."""


class EvalSection(section_of(EvalConfig, omit=["checkpoint", "data_root", "label", "frames"])):
    """EvalConfig's options; checkpoint, data_root and label are the pipeline's (per evaluation point)."""

    frames: EvalFrames = Field(default_factory=EvalFrames, description="Frame sampling options of the "
                               "evaluations that differ from the pipeline's frames, e.g. nframes: 16.")


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
    sft: SFTSection = Field(default_factory=SFTSection, description="SFTConfig options (model/data_root/frames/seed are filled in).")
    rl: RLSection = Field(default_factory=RLSection, description="RLConfig options (model/data_root/frames/seed are filled in).")
    eval: EvalSection = Field(default_factory=EvalSection, description="EvalConfig options (checkpoint/data_root/label are filled in; frames default to the pipeline's, eval.frames options override them, e.g. nframes: 16).")

    @model_validator(mode="after")
    def _sections_valid(self) -> PipelineConfig:
        unknown = sorted(set(self.evaluate) - set(EVAL_POINTS))
        if unknown:
            raise ValueError(f"evaluate: unknown point(s) {unknown}; choose from {list(EVAL_POINTS)}")
        # the sections' own fields are checked already; building each stage's config checks across its fields
        builds = {"sft": lambda: self.sft_config("<model>", "<data>"), "rl": lambda: self.rl_config("<model>", "<data>"),
                  "eval": lambda: self.eval_config("<checkpoint>", "<data>", "base")}
        for section, build in builds.items():
            try:
                build()
            except ValidationError as exc:
                raise ValueError(_nested(section, exc)) from None
        return self

    def run_id(self) -> str:
        """``<name>-<hash of the config>``; the sections enter as written (care.sections)."""
        return identity.run_id(self.name, self.model_dump(mode="json"))

    def _common(self, model: str, data_root: str) -> dict[str, Any]:
        return {"model": model, "data_root": data_root, "frames": self.frames.model_dump(), "seed": self.seed}

    def sft_config(self, model: str, data_root: str) -> SFTConfig:
        return SFTConfig.model_validate({**self.sft.model_dump(), **self._common(model, data_root)})

    def rl_config(self, model: str, data_root: str) -> RLConfig:
        # from the keys set only: the algorithm's defaults fill the optim options the section leaves unset
        return RLConfig.model_validate({**self.rl.model_dump(), **self._common(model, data_root)})

    def eval_frames(self) -> FrameSampling:
        """The evaluations' frame sampling: the pipeline's, with the options of ``eval.frames`` on top (the
        SEED-Bench-R1 protocol evaluates 16 frames, more than RL trains with). The temporal positions are the
        evaluation's own (``eval.frames.temporal``, default the real fps), not the training's."""
        return FrameSampling.model_validate(self._eval_frames())

    def _eval_frames(self) -> dict[str, Any]:
        return {**self.frames.model_dump(exclude={"temporal"}), **self.eval.frames.model_dump()}

    def eval_config(self, checkpoint: str, data_root: str, label: str) -> EvalConfig:
        # frames as a mapping, so that a bad combination is reported as eval.frames.<field>
        return EvalConfig.model_validate({**self.eval.model_dump(), "checkpoint": checkpoint, "data_root": data_root,
                                          "frames": self._eval_frames(), "label": label})


def _nested(section: str, exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join([section, *(str(p) for p in e['loc'])])}: {e['msg']}" for e in exc.errors())
