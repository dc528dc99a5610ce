"""Entry of the optimisation stage: in this process, or ``num_processes`` ranks under ``torchrun``.

The multi-process path writes a JSON job spec, starts ``python -m torch.distributed.run --standalone
--nproc_per_node N -m care.train.optimise_worker SPEC`` and reads rank 0's JSON result. Every rank rebuilds
its inputs from paths (the scored shard, the checkpoint, the frame cache), so nothing but paths and configs
crosses the process boundary. On CPU the ranks use gloo; on GPUs NCCL (chosen by accelerate).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from care.errors import CareError
from care.train.config import OptimConfig
from care.train.optimise import load_scored_batch, optimise
from care.train.samples import DataSpec


def run_optimisation_stage(*, checkpoint_in: str | Path, checkpoint_out: str | Path, generated_path: str | Path,
                           scored_path: str | Path, data: DataSpec, config: OptimConfig, total_steps: int,
                           temperature: float, max_new_tokens: int, iteration: int,
                           data_cursor: dict | None = None, timeout_s: float | None = None) -> dict:
    job = {
        "checkpoint_in": str(checkpoint_in), "checkpoint_out": str(checkpoint_out),
        "generated_path": str(generated_path), "scored_path": str(scored_path),
        "data": data.model_dump(mode="json"), "config": config.model_dump(mode="json"),
        "total_steps": total_steps, "temperature": temperature, "max_new_tokens": max_new_tokens,
        "iteration": iteration, "data_cursor": data_cursor or {},
    }
    if config.num_processes == 1:
        return run_job(job)
    return _launch(job, config.num_processes, timeout_s)


def run_job(job: dict) -> dict:
    """Run one optimisation job (the whole stage in one process, or this process's rank)."""
    data = DataSpec.model_validate(job["data"])
    samples = data.load().by_id()
    rows = load_scored_batch(job["generated_path"], job["scored_path"])
    return optimise(
        checkpoint_in=job["checkpoint_in"], checkpoint_out=job["checkpoint_out"], rows=rows, samples=samples,
        cache=data.cache(), config=OptimConfig.model_validate(job["config"]), total_steps=job["total_steps"],
        temperature=job["temperature"], max_new_tokens=job["max_new_tokens"], iteration=job["iteration"],
        data_cursor=job["data_cursor"],
    )


def _launch(job: dict, nproc: int, timeout_s: float | None) -> dict:
    with tempfile.TemporaryDirectory(prefix="care-optimise-") as tmp:
        spec, result = Path(tmp) / "job.json", Path(tmp) / "result.json"
        spec.write_text(json.dumps({**job, "result_path": str(result)}))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               "-m", "care.train.optimise_worker", str(spec)]
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
        if proc.returncode != 0 or not result.is_file():
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
            raise CareError(f"optimisation with {nproc} processes failed (exit {proc.returncode}):\n{tail}")
        return json.loads(result.read_text())
