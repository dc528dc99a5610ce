"""Typed options of an evaluation: ``EvalConfig`` (one checkpoint on the validation levels), its decoding and
its consistency judges. Schema only: the evaluation itself is ``care.eval``.

Here, below both ``care.train`` and ``care.eval``, because both build these: the RL loop's periodic evaluation
(``RLConfig.eval``) and a retraining round's evaluation (``care.train.retrain``) on one side, the evaluation stage
(``care.eval.evaluate``) on the other; neither package imports the other. ``EvalConfig`` is the ``evaluate``
flow's parameter schema. The checkpoint argument's content id and folder layout are ``care.identity``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from care.config import StageConfig
from care.data.benchmarks import BENCHMARKS
from care.data.schema import ANNOTATION_FILES
from care.identity import owning_run
from care.media.sampling import FrameSampling

PROTOCOL_FRAMES = 16
TRANSFER_FPS, TRANSFER_MIN_FRAMES = 2.0, 4  # the reference general-video evaluation (qwen_vl_utils defaults)
LIKELIHOOD_POLICY, LIKELIHOOD_REFERENCE = "policy", "reference"
JUDGE_NAMES = ("rule", "reference_likelihood", "llm")


class EvalDecoding(StageConfig):
    """Near-greedy decoding of the SEED-Bench-R1 protocol; every value is passed to ``generate`` explicitly."""

    temperature: float = Field(0.1, ge=0, description="Softmax temperature; 0 = plain greedy decoding.")
    top_p: float = Field(0.001, gt=0, le=1, description="Nucleus mass (0.001 keeps only the top token in practice).")
    top_k: int = Field(0, ge=0, description="Top-k; 0 disables it.")
    max_new_tokens: int = Field(1024, ge=1, description="Longest completion; a longer one is cut and marked truncated.")
    seed: int = Field(0, description="Sampling seed; batch k of a level samples with seed + k.")
    eos: Literal["care", "reference"] = Field(
        "care", description="What ends a completion: 'care' = <|im_end|> only; 'reference' = <|im_end|> or "
        "<|endoftext|> (the Qwen2.5-VL generation config's EOS list, which the reference's vLLM evaluation uses).")


class LLMJudgeConfig(StageConfig):
    """Where and how to ask the judge model."""

    base_url: str = Field(description="Endpoint root of an OpenAI-compatible API, e.g. http://127.0.0.1:8000/v1; "
                          "requests go to <base_url>/chat/completions.")
    model: str = Field(description="Model name the endpoint serves (the `model` field of the request).")
    api_key_env: str | None = Field(
        default=None,
        description="Name of the environment variable holding the API key (sent as a Bearer token); the key itself "
        "is never written in a config. None: no Authorization header (a local vLLM server needs none).",
    )
    timeout_s: float = Field(default=30.0, gt=0, description="Timeout of each socket operation of one request.")
    max_tokens: int = Field(default=5, ge=1, description="Generation budget of the reply (one word is expected).")
    max_concurrency: int = Field(default=4, ge=1, description="Requests in flight at once.")
    max_consecutive_failures: int = Field(
        default=5, ge=1, description="Transport failures in a row after which the remaining items are skipped."
    )


class JudgeConfig(StageConfig):
    """Which judge produces the consistency rate, with its options."""

    name: Literal["rule", "reference_likelihood", "llm"] = Field(
        default="rule",
        description="rule: the option the think block concludes on equals the answer; reference_likelihood: the "
        "CARE answer likelihood under the reference model is above `threshold`; llm: an OpenAI-compatible chat "
        "endpoint answers YES (needs `llm`).",
    )
    threshold: float = Field(
        default=0.5, ge=0.0, lt=1.0, description="reference_likelihood only: consistent iff likelihood > threshold."
    )
    reference: str | None = Field(
        default=None, description="reference_likelihood only: name of the model that scored the likelihoods "
        "(unset: the evaluation's likelihood_model; set, it must agree with it)."
    )
    llm: LLMJudgeConfig | None = Field(default=None, description="llm only: endpoint, model, key variable, timeout.")

    @model_validator(mode="after")
    def _llm_needs_endpoint(self) -> JudgeConfig:
        if self.name == "llm" and self.llm is None:
            raise ValueError("judge 'llm' needs an `llm:` section with base_url and model")
        return self


def _default_judges() -> list[JudgeConfig]:
    return [JudgeConfig(name="rule"), JudgeConfig(name="reference_likelihood")]  # reference: set from likelihood_model


class EvalConfig(StageConfig):
    """One evaluation of one checkpoint on the validation levels (``care eval`` / the ``evaluate`` flow)."""

    checkpoint: str = Field(..., description="Checkpoint folder (with policy/), save_pretrained model folder or hub id.")
    run_id: str | None = Field(
        None, description="Run the results belong to; default: the run whose checkpoints/ folder holds the "
        "checkpoint (<home>/runs/<run>/checkpoints/<name>), else eval-<content id>.")
    label: str | None = Field(
        None, description="Name of this evaluation within the run (e.g. before-sft, after-rl); default: the "
        "checkpoint folder's name.")
    data_root: str = Field(..., description="SEED-Bench-R1-layout root (annotations/, videos/, images/).")
    levels: list[str] = Field(
        default_factory=lambda: ["L1", "L2", "L3"],
        description="Levels to evaluate; level X reads annotations/validation_X.jsonl.")
    frames: FrameSampling = Field(
        default_factory=lambda: FrameSampling(nframes=PROTOCOL_FRAMES),
        description="Frame sampling (protocol: 16 frames; the demo config uses fewer). The level files are "
        "preprocessed with it by the flow.")
    frame_count: Literal["fixed", "fps"] = Field(
        "fixed", description="How many frames a clip gets: 'fixed' = frames as given, i.e. frames.nframes whatever "
        "the clip's length (16 by default); 'fps' = frames.nframes cleared, so frames.fps per second of video "
        "between frames.min_frames and frames.max_frames: by default 2 fps capped at 16 frames, the reference "
        "evaluation (qwen_vl_utils, --fps_max_frames 16), where a clip shorter than 8 s gets fewer than 16.")
    prompt: Literal["care", "reference"] = Field(
        "care", description="Prompt template (care.algo.prompt): 'care', or 'reference' = the reference code's "
        "evaluation prompt, reproduced exactly (its wording differs from its training prompt). Recorded with "
        "every prediction and result row (prompt_template).")
    decoding: EvalDecoding = Field(default_factory=EvalDecoding, description="Decoding parameters (protocol defaults).")
    batch_size: int = Field(8, ge=1, description="Prompts per generate() call (a memory knob; padding can change "
                            "near-greedy outputs slightly, so it is part of the cache key).")
    limit_per_level: int | None = Field(None, ge=1, description="Evaluate only the first N usable samples of each "
                                        "level (None = all).")
    judges: list[JudgeConfig] = Field(
        default_factory=_default_judges,
        description="Consistency judges, distinct names; each adds a verdict and reason column and a summary.")
    likelihood_model: str = Field(
        LIKELIHOOD_POLICY,
        description="Model whose CARE answer likelihood feeds the reference_likelihood judge: 'policy' (the "
        "evaluated model, default), 'reference' (the checkpoint's reference/ folder, e.g. the EMA), or a model "
        "folder / hub id.")
    confidence: float = Field(0.95, gt=0, lt=1, description="Confidence level of the Wilson intervals.")
    benchmark: str | None = Field(
        None, description="A transfer benchmark (care.data.benchmarks: mvbench, videomme, mmvu, vsibench, tempcompass, videommmu) read in its published "
        "layout under data_root instead of the SEED-Bench-R1 levels. Levels are then its categories (empty = "
        "every category found), the prompt is the benchmark's own template (`prompt` is not used) and frames "
        "default to its protocol: 2 fps, 4 to 32 frames (frame_count fps).")

    @model_validator(mode="before")
    @classmethod
    def _frames_for_count(cls, data):
        # frame_count decides which FrameSampling fields count; settle it in ``frames`` itself, which the flow
        # preprocesses the level files with and the cache keys read
        if not isinstance(data, dict):
            return data
        if data.get("benchmark"):
            data = _benchmark_defaults(data)
        frames = data.get("frames")
        if isinstance(frames, FrameSampling):
            frames = frames.model_dump()
        if data.get("frame_count", "fixed") == "fps":
            if frames is None:
                frames = FrameSampling().model_dump()  # 2 fps, 4 to 16 frames
            if isinstance(frames, dict):
                return {**data, "frames": {**frames, "nframes": None}}
        return data

    @model_validator(mode="after")
    def _check(self) -> EvalConfig:
        names = [j.name for j in self.judges]
        if len(set(names)) != len(names):
            raise ValueError(f"judges {names}: each judge name may appear once (it names the Parquet columns)")
        if self.benchmark is not None and self.benchmark not in BENCHMARKS:
            raise ValueError(f"unknown benchmark {self.benchmark!r}; known: {', '.join(BENCHMARKS)}")
        if len(set(self.levels)) != len(self.levels) or not (self.levels or self.benchmark):
            raise ValueError(f"levels {self.levels}: give each level once, at least one")
        for level in self.levels:
            if not re.fullmatch(r"[A-Za-z0-9_\-]+", level):
                raise ValueError(f"level {level!r}: use letters, digits, '_' or '-' (it names files)")
        label = likelihood_label(self.likelihood_model)
        for judge in self.judges:
            if judge.name == "reference_likelihood" and judge.reference is not None and judge.reference != label:
                raise ValueError(f"judge reference_likelihood names reference {judge.reference!r} but the "
                                 f"likelihoods come from likelihood_model {label!r}; drop one or make them agree")
        return self

    def annotation_file(self, level: str) -> str:
        """The level's annotation file; for a benchmark, the level itself (its category)."""
        if self.benchmark:
            return level
        return ANNOTATION_FILES.get(level, f"validation_{level}.jsonl")

    def prompt_name(self) -> str:
        """The prompt template name evaluation uses: the benchmark's own, else ``prompt``."""
        return self.benchmark or self.prompt

    def judge_configs(self) -> list[JudgeConfig]:
        """The judges, with ``reference`` set to the model that really scored the likelihoods."""
        label = likelihood_label(self.likelihood_model)
        return [j.model_copy(update={"reference": label}) if j.name == "reference_likelihood" else j
                for j in self.judges]

    def resolved_label(self) -> str:
        return self.label or Path(self.checkpoint.rstrip("/")).name or "model"

    def resolved_run_id(self, content_id: str) -> str:
        return self.run_id or owning_run(self.checkpoint) or f"eval-{content_id[:10]}"


def _benchmark_defaults(data: dict) -> dict:
    """A benchmark's defaults where the input leaves them out: every category, its frame protocol."""
    data = dict(data)
    data.setdefault("levels", [])
    if "frames" not in data and "frame_count" not in data:
        maximum = BENCHMARKS[data["benchmark"]].max_frames if data["benchmark"] in BENCHMARKS else 32
        data["frames"] = {"fps": TRANSFER_FPS, "min_frames": TRANSFER_MIN_FRAMES, "max_frames": maximum}
        data["frame_count"] = "fps"
    return data


def likelihood_label(likelihood_model: str) -> str:
    """The name recorded with likelihood verdicts: 'policy', 'reference', or the model folder's name."""
    if likelihood_model in (LIKELIHOOD_POLICY, LIKELIHOOD_REFERENCE):
        return likelihood_model
    return Path(likelihood_model.rstrip("/")).name or likelihood_model
