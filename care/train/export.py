"""``care export``: a training checkpoint as a plain Hugging Face model folder.

The folder holds consolidated safetensors of the policy (``--dtype bfloat16`` for serving, ``float32`` for the
fp32 master weights themselves: the exact state a resume continues from), the processor (tokenizer with its
chat template, image and video processors), the generation config, and ``care_export.json`` naming the
checkpoint, its state id and the dtype. ``AutoModelForImageTextToText.from_pretrained`` loads it with no care
code. The source checkpoint is verified in full first; the folder is written under a temporary name and
renamed, so a reader sees a whole export or none.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import torch

from care.errors import CareError
from care.identity import checkpoint_id
from care.models.loading import hf_progress_bars, load_model, load_processor
from care.train.checkpoint import latest_complete, read_training_state, verify_manifest
from care.train.policy_io import policy_path
from care.train.state import checkpoint_state_id

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}
EXPORT_FILE = "care_export.json"


def resolve_checkpoint(source: str | Path, runs_dir: str | Path) -> Path:
    """A checkpoint folder as given, or the newest complete checkpoint of the run with that id."""
    path = Path(source)
    if (path / "MANIFEST.json").is_file():
        return path
    folder = Path(runs_dir) / str(source) / "checkpoints"
    for prefix in ("iter-", "step-"):
        if found := latest_complete(folder, prefix=prefix):
            return found[1]
    raise CareError(f"{source}: neither a checkpoint folder (no MANIFEST.json) nor a run with a complete checkpoint "
                    f"under {folder}; `care runs` lists the runs")


def export_checkpoint(checkpoint: str | Path, out: str | Path, *, dtype: str = "bfloat16",
                      overwrite: bool = False) -> dict:
    """Write the checkpoint's policy to ``out`` as a Hugging Face folder; returns what was written."""
    if dtype not in DTYPES:
        raise CareError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    checkpoint, out = Path(checkpoint), Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise CareError(f"{out} exists and is not empty; remove it, choose another folder or pass --overwrite")
    verify_manifest(checkpoint)
    model = load_model(policy_path(checkpoint), dtype=DTYPES[dtype])
    processor = load_processor(policy_path(checkpoint))
    model.config.use_cache = True  # a checkpoint trained with activation checkpointing saved it off
    st = read_training_state(checkpoint)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".tmp-export-{out.name}-{uuid.uuid4().hex[:8]}"
    try:
        with hf_progress_bars(False):
            model.save_pretrained(tmp, safe_serialization=True)
            processor.save_pretrained(tmp)
            if model.generation_config is not None:
                model.generation_config.save_pretrained(tmp)
        meta = {"checkpoint": str(checkpoint.resolve()), "checkpoint_id": checkpoint_id(checkpoint),
                "state_id": checkpoint_state_id(checkpoint), "step": st.step, "iteration": st.iteration,
                "dtype": dtype, "parameters": sum(p.numel() for p in model.parameters())}
        (tmp / EXPORT_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    files = sorted(p.name for p in out.iterdir())
    return {**meta, "out": str(out.resolve()), "files": files,
            "bytes": sum(p.stat().st_size for p in out.iterdir() if p.is_file())}


def push_to_hub(folder: str | Path, repo_id: str, *, private: bool = True) -> str:
    """Upload an exported folder to the Hugging Face Hub (needs network access and a token)."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    return str(api.upload_folder(folder_path=str(folder), repo_id=repo_id))
