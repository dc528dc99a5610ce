"""Prefect task of the SFT stage: a thin wrapper over ``care.train.sft.run_sft``.

SFT is one stage that resumes itself: a retry or a re-run continues from the newest complete ``step-NNNNN``
checkpoint of the run, so the task needs no iteration-level caching. Its cache key is the content of what it
trains on (the starting model's files, the annotation file, the frame sampling) plus the config, so a finished
run is a cache hit and any change of model, data or options trains again. Metrics and checkpoint rows go to the
catalog while it runs (upserts: a resumed run rewrites rows, never duplicates them).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from prefect import task

from care.models.samples import DataSpec
from care.store import runs
from care.tracking import TRACKING_FIELDS
from care.train.sft import run_sft
from care.train.sft_config import SFTConfig
from tasks.common import JSON_RESULTS, attempts, is_transient, stage_key

_HEAD_BYTES = 1 << 20


def model_content_id(model: str) -> str:
    """Content id of a model folder: names, sizes and the first MiB of every file (a hub id stands for itself).

    Reading the first MiB rather than whole files keeps this fast for multi-GB checkpoints; safetensors files
    start with a header that lists every tensor's dtype, shape and offsets, and the size covers the rest.
    """
    folder = Path(model)
    if not folder.is_dir():
        return model
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(folder)}:{path.stat().st_size}:".encode())
        with path.open("rb") as fh:
            digest.update(fh.read(_HEAD_BYTES))
    return digest.hexdigest()[:32]


def _annotation_sha(data: DataSpec) -> str:
    path = Path(data.annotation_file)
    if not path.is_absolute():
        path = Path(data.data_root) / "annotations" / path
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "missing"


def _sft_key(context, p) -> str:
    # the trackers (report_to, tracking_dir) do not change what is trained: a finished run stays a cache hit
    config = p["config"].model_dump(mode="json", exclude=set(TRACKING_FIELDS))
    return "sft-" + stage_key(p["run_id"], model_content_id(p["config"].model), _annotation_sha(p["data"]),
                              p["data"], config)


@task(name="sft", cache_key_fn=_sft_key, retries=1, retry_delay_seconds=2, retry_condition_fn=is_transient,
      **JSON_RESULTS)
def sft(run_id: str, iteration: int, config: SFTConfig, data: DataSpec, run_dir: str, catalog_file: str) -> dict:
    """Train (or continue) to ``config.steps``; returns the final checkpoint and the last logged metrics."""

    def on_log(step: int, metrics: dict) -> None:
        runs.record_metrics(run_id, step, metrics, stage="sft", path=catalog_file)

    def on_checkpoint(step: int, path: str) -> None:
        runs.record_checkpoint(run_id, Path(path).name, path, step=step, iteration=iteration, path=catalog_file)

    result = run_sft(config=config, sample_set=data.load(), cache=data.cache(), run_dir=run_dir, on_log=on_log,
                     on_checkpoint=on_checkpoint)
    history = result["history"]
    return {"checkpoint": result["checkpoint"], "step": result["step"], "skipped_steps": result["skipped_steps"],
            "resumed_from": result["resumed_from"], "seconds": result["seconds"],
            "last": history[-1] if history else {}, "attempts": attempts()}
