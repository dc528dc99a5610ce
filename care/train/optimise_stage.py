"""Entry of the optimisation stage: in this process, or ``num_processes`` ranks under ``torchrun``.

In this process the stage takes the resident trainer of its input state (or rebuilds it: ``care.train.replay``),
updates it on the iteration's scored batch and keeps it resident under the new state's id; it writes a
checkpoint only when asked (``checkpoint_out``: every ``checkpoint_every`` iterations), from a snapshot in the
background when ``background``.

The multi-process path writes a JSON job spec, starts ``python -m torch.distributed.run --standalone
--nproc_per_node N -m care.train.optimise_worker SPEC`` and reads rank 0's JSON result. Every rank rebuilds
its inputs from paths (the scored shard, the checkpoint, the frame cache), so nothing but paths and configs
crosses the process boundary; the ranks exit after the stage, so they hand the state on through a checkpoint
each iteration (``RLConfig.checkpoint_due``). On CPU the ranks use gloo; on GPUs NCCL (chosen by accelerate).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from care.data.schema import Sample
from care.errors import CareError
from care.failpoints import failpoint
from care.media.frame_cache import FrameCache
from care.train import warm
from care.train.checkpoint import prune_checkpoints
from care.train.config import OptimConfig
from care.train.optimise import load_scored_batch, update_steps
from care.train.policy_io import checkpoint_id
from care.train.replay import materialise
from care.train.samples import DataSpec
from care.train.sharded import save_sharded
from care.train.state import PolicyState, ReplaySpec, advance, as_state
from care.train.toolkit import default_device
from care.train.trainer import WRITER, save_trainer, training_state


def _rank_and_world() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def optimise(*, checkpoint_in: str | Path | PolicyState, rows: list[dict], samples: Mapping[str, Sample],
             cache: FrameCache, config: OptimConfig, total_steps: int, temperature: float, max_new_tokens: int,
             iteration: int, checkpoint_out: str | Path | None = None, state_out_id: str | None = None,
             data_cursor: Mapping | None = None, background: bool = False,
             after_write: Callable[[Path], Any] | None = None) -> dict:
    """Update the state ``checkpoint_in`` (a checkpoint path or a PolicyState) on ``rows``: restore, update
    steps, then save to ``checkpoint_out`` when given (rank 0 for DDP; every rank its shards under FSDP2). The
    new state is named ``state_out_id``
    (default: the written checkpoint's content id) and, in one process, kept resident.

    Returns {"steps": [...per-step metrics...], "checkpoint": path or None, "step", "state_id", "seconds",
    "written": [checkpoints finished since the last call: {"path", "step", "iteration", "removed"}]}.
    """
    started = time.perf_counter()
    rank, world = _rank_and_world()
    if checkpoint_out is None and (world > 1 or not state_out_id):
        raise CareError("an update without a checkpoint needs one process and a state id to keep it under")
    trainer = materialise(checkpoint_in, take=True)  # trained in place; handed back under the new id
    history = update_steps(trainer, rows=rows, samples=samples, cache=cache, config=config, total_steps=total_steps,
                           temperature=temperature, max_new_tokens=max_new_tokens, iteration=iteration)
    failpoint("optimise", iteration)
    trainer.state_id = state_out_id or ""
    out_path = None
    if checkpoint_out is not None and trainer.scorer is not None:  # FSDP2: every rank writes its shards
        out_path = str(save_sharded(trainer, checkpoint_out, state=training_state(trainer, data_cursor)))
    elif checkpoint_out is not None and rank == 0:
        out_path = str(save_trainer(trainer, checkpoint_out, data_cursor=dict(data_cursor or {}),
                                    background=background and world == 1, after=after_write))
        if not state_out_id:
            WRITER.wait(drain=False)
            trainer.state_id = checkpoint_id(out_path)
    written = WRITER.drain() if rank == 0 else []
    if world == 1 and trainer.state_id:
        warm.put(trainer, default_device())  # the next rollout / scoring stage starts warm
    return {"steps": history, "checkpoint": out_path, "step": trainer.step, "state_id": trainer.state_id,
            "seconds": time.perf_counter() - started, "written": written}


def wait_for_checkpoints() -> list[dict]:
    """Block until the background checkpoint write (if any) is complete; records of the writes finished."""
    return WRITER.wait()


def run_optimisation_stage(*, checkpoint_in: str | Path | PolicyState, generated_path: str | Path,
                           scored_path: str | Path, data: DataSpec, config: OptimConfig, total_steps: int,
                           temperature: float, max_new_tokens: int, iteration: int,
                           checkpoint_out: str | Path | None = None, data_cursor: dict | None = None,
                           background: bool = False, keep_last: int = 0, keep_every: int = 0,
                           timeout_s: float | None = None) -> dict:
    """One iteration's update from the logged shards. Returns ``optimise``'s result plus ``state`` (the new
    PolicyState, as JSON). Checkpoints beyond ``keep_last`` / ``keep_every`` are pruned after each write."""
    spec = ReplaySpec(data=data, config=config, total_steps=total_steps, temperature=temperature,
                      max_new_tokens=max_new_tokens)
    state_in = as_state(checkpoint_in)
    if state_in.replay is None:
        state_in = state_in.model_copy(update={"replay": spec})
    state_out = advance(state_in, generated_path, scored_path)
    if checkpoint_out is not None:  # complete once written (checkpoint_path checks before anyone reads it)
        state_out = state_out.model_copy(update={"checkpoint": str(checkpoint_out)})
    folder = Path(checkpoint_out).parent if checkpoint_out else Path(state_in.checkpoints)
    job = {
        "state_in": state_in.model_dump(mode="json"), "state_out_id": state_out.state_id,
        "checkpoint_out": str(checkpoint_out) if checkpoint_out else None,
        "generated_path": str(generated_path), "scored_path": str(scored_path),
        "data": data.model_dump(mode="json"), "config": config.model_dump(mode="json"),
        "total_steps": total_steps, "temperature": temperature, "max_new_tokens": max_new_tokens,
        "iteration": iteration, "data_cursor": data_cursor or {},
    }
    if config.num_processes == 1:
        result = run_job(job, background=background,
                         after_write=lambda path: prune_checkpoints(folder, keep_last, keep_every=keep_every))
    else:
        if checkpoint_out is None:
            raise CareError("a multi-process update hands its state on through a checkpoint: give checkpoint_out")
        result = _launch(job, config.num_processes, timeout_s)
        removed = prune_checkpoints(folder, keep_last, keep_every=keep_every)
        result["written"] = [{"path": result["checkpoint"], "step": result["step"], "iteration": iteration + 1,
                              "removed": [str(p) for p in removed]}]
    return {**result, "state": state_out.model_dump(mode="json")}


def run_job(job: dict, *, background: bool = False, after_write: Callable[[Path], Any] | None = None) -> dict:
    """Run one optimisation job (the whole stage in one process, or this process's rank)."""
    data = DataSpec.model_validate(job["data"])
    rows = load_scored_batch(job["generated_path"], job["scored_path"])
    return optimise(
        checkpoint_in=PolicyState.model_validate(job["state_in"]), rows=rows, samples=data.load().by_id(),
        cache=data.cache(), config=OptimConfig.model_validate(job["config"]), total_steps=job["total_steps"],
        temperature=job["temperature"], max_new_tokens=job["max_new_tokens"], iteration=job["iteration"],
        checkpoint_out=job["checkpoint_out"], state_out_id=job["state_out_id"], data_cursor=job["data_cursor"],
        background=background, after_write=after_write,
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
