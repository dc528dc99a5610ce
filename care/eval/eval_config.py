"""Typed configuration of the evaluation stage, and how a checkpoint argument is resolved.

``checkpoint`` may be a checkpoint folder (``policy/`` inside, ``MANIFEST.json`` beside it), any
``save_pretrained`` model folder, or a hub id. Its **content id** keys caching and the catalog rows:

* a checkpoint folder: :func:`care.train.policy_io.checkpoint_id` (sha256 of its manifest, which lists every
  file's sha256);
* a model folder: sha256 over each file's relative path and bytes; files above 64 MiB enter by size and
  modification time instead (hashing 15 GB of weights per evaluation would cost more than the evaluation);
* a hub id: sha256 of the id (no revision is known offline).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from care.config import StageConfig
from care.data.schema import ANNOTATION_FILES
from care.eval.judge_config import JudgeConfig
from care.media.sampling import FrameSampling

PROTOCOL_FRAMES = 16
LARGE_FILE_BYTES = 64 * 2**20
LIKELIHOOD_POLICY, LIKELIHOOD_REFERENCE = "policy", "reference"


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

    @model_validator(mode="before")
    @classmethod
    def _frames_for_count(cls, data):
        # frame_count decides which FrameSampling fields count; settle it in ``frames`` itself, which the flow
        # preprocesses the level files with and the cache keys read
        if not isinstance(data, dict):
            return data
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
        if len(set(self.levels)) != len(self.levels) or not self.levels:
            raise ValueError(f"levels {self.levels}: give each level once, at least one")
        for level in self.levels:
            if not re.fullmatch(r"[A-Za-z0-9_\-]+", level):
                raise ValueError(f"level {level!r}: use letters, digits, '_' or '-' (it names files)")
        label = likelihood_label(self.likelihood_model)
        for judge in self.judges:
            if judge.name == "reference_likelihood" and "reference" in judge.model_fields_set \
                    and judge.reference != label:
                raise ValueError(f"judge reference_likelihood names reference {judge.reference!r} but the "
                                 f"likelihoods come from likelihood_model {label!r}; drop one or make them agree")
        return self

    def annotation_file(self, level: str) -> str:
        return ANNOTATION_FILES.get(level, f"validation_{level}.jsonl")

    def judge_configs(self) -> list[JudgeConfig]:
        """The judges, with ``reference`` set to the model that really scored the likelihoods."""
        label = likelihood_label(self.likelihood_model)
        return [j.model_copy(update={"reference": label}) if j.name == "reference_likelihood" else j
                for j in self.judges]

    def resolved_label(self) -> str:
        return self.label or Path(self.checkpoint.rstrip("/")).name or "model"

    def resolved_run_id(self, content_id: str) -> str:
        return self.run_id or owning_run(self.checkpoint) or f"eval-{content_id[:10]}"


def likelihood_label(likelihood_model: str) -> str:
    """The name recorded with likelihood verdicts: 'policy', 'reference', or the model folder's name."""
    if likelihood_model in (LIKELIHOOD_POLICY, LIKELIHOOD_REFERENCE):
        return likelihood_model
    return Path(likelihood_model.rstrip("/")).name or likelihood_model


def is_checkpoint_folder(path: str | Path) -> bool:
    p = Path(path)
    return (p / "policy").is_dir() and (p / "MANIFEST.json").is_file()


def model_path(checkpoint: str) -> str:
    """What ``from_pretrained`` loads: ``<checkpoint>/policy`` for a checkpoint folder, else the argument."""
    return str(Path(checkpoint) / "policy") if is_checkpoint_folder(checkpoint) else checkpoint


def reference_model_path(checkpoint: str) -> str:
    from care.errors import CareError

    if not (Path(checkpoint) / "reference").is_dir():
        raise CareError(f"{checkpoint}: likelihood_model 'reference' needs a checkpoint folder with reference/; "
                        "use 'policy' or a model folder")
    return str(Path(checkpoint) / "reference")


def owning_run(checkpoint: str) -> str | None:
    """``<run>`` when the checkpoint lives at ``.../runs/<run>/checkpoints/<name>``."""
    parts = Path(checkpoint).resolve().parts if Path(checkpoint).exists() else ()
    if len(parts) >= 4 and parts[-2] == "checkpoints" and parts[-4] == "runs":
        return parts[-3]
    return None


def content_id(checkpoint: str) -> str:
    """Content id (16 hex digits) of a checkpoint folder, model folder or hub id (see the module docstring)."""
    path = Path(checkpoint)
    if is_checkpoint_folder(path):
        from care.train.policy_io import checkpoint_id

        return checkpoint_id(path)
    digest = hashlib.sha256()
    if not path.is_dir():
        digest.update(f"hub:{checkpoint}".encode())
        return digest.hexdigest()[:16]
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        stat = file.stat()
        digest.update(str(file.relative_to(path)).encode() + b"\0")
        if stat.st_size > LARGE_FILE_BYTES:
            digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
        else:
            digest.update(hashlib.sha256(file.read_bytes()).digest())
    return digest.hexdigest()[:16]
