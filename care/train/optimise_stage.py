"""Entry of the optimisation stage: in this process, or on every rank of the run's gang (``care.train.gang``).

The stage takes the resident trainer of its input state (or rebuilds it: ``care.train.replay``), updates it on
the iteration's scored batch and keeps it resident under the new state's id; it writes a checkpoint only when
asked (``checkpoint_out``: every ``checkpoint_every`` iterations), from a snapshot in the background when
``background``. With ``num_processes > 1`` the same happens on each rank of the gang, which lives as long as
the run: rank 0 of DDP writes the checkpoint (in the background, too), and under FSDP2 every rank writes its
shards. The job that crosses to the ranks is paths and configs only (JSON), as between Prefect tasks. On CPU
the ranks use gloo; on GPUs NCCL (chosen by accelerate).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from care.data.schema import Sample
from care.device import default_device
from care.errors import CareError
from care.failpoints import failpoint
from care.identity import checkpoint_id
from care.media.frame_cache import FrameCache
from care.models.samples import DataSpec
from care.train import gang, warm
from care.train.checkpoint import prune_checkpoints
from care.train.config import OptimConfig
from care.train.gang import stage_gang
from care.train.optimise import load_scored_batch, update_steps
from care.train.replay import materialise
from care.train.sharded import save_sharded
from care.train.state import PolicyState, ReplaySpec, advance, as_state
from care.train.trainer import WRITER, save_trainer, training_state


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


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
    rank = _rank()
    if checkpoint_out is None and not state_out_id:
        raise CareError("an update without a checkpoint needs a state id to keep the new state under")
    trainer = materialise(checkpoint_in, take=True)  # trained in place; handed back under the new id
    history = update_steps(trainer, rows=rows, samples=samples, cache=cache, config=config, total_steps=total_steps,
                           temperature=temperature, max_new_tokens=max_new_tokens, iteration=iteration)
    failpoint("optimise", iteration)
    trainer.state_id = state_out_id or ""
    out_path = None
    sharded_write = []
    if checkpoint_out is not None and trainer.scorer is not None:  # FSDP2: every rank writes its shards
        out_path = str(save_sharded(trainer, checkpoint_out, state=training_state(trainer, data_cursor)))
        removed = after_write(Path(out_path)) if after_write is not None and rank == 0 else None
        sharded_write = [{"path": out_path, "step": trainer.step, "iteration": trainer.iteration,
                          "removed": [str(p) for p in removed or []]}]
    elif checkpoint_out is not None and rank == 0:
        out_path = str(save_trainer(trainer, checkpoint_out, data_cursor=dict(data_cursor or {}),
                                    background=background, after=after_write))
        if not state_out_id:
            WRITER.wait(drain=False)
            trainer.state_id = checkpoint_id(out_path)
    elif checkpoint_out is not None:
        out_path = str(checkpoint_out)  # DDP: rank 0 writes it
    written = (WRITER.drain() + sharded_write) if rank == 0 else []
    if trainer.state_id:
        warm.put(trainer, default_device())  # the next rollout / scoring stage (of this process or rank) starts warm
    return {"steps": history, "checkpoint": out_path, "step": trainer.step, "state_id": trainer.state_id,
            "seconds": time.perf_counter() - started, "written": written}


def wait_for_checkpoints() -> list[dict]:
    """Block until the background checkpoint write (if any: in this process, or on rank 0 of a live gang) is
    complete; records of the writes finished."""
    done = WRITER.wait()
    for crew in gang.live():
        done += crew.call("wait_checkpoints")[0]
    return done


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
    job["keep"] = {"folder": str(folder), "last": keep_last, "every": keep_every}
    if (crew := stage_gang(state_in)) is not None:
        result = crew.call("optimise", {**job, "background": background}, timeout_s=timeout_s)[0]
    else:
        result = run_rank_job({**job, "background": background})
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


def run_rank_job(job: dict) -> dict:
    """``run_job`` with the job's own background flag and retention (pruned by whoever writes the checkpoint,
    after it is complete): the stage in one process, or one rank's part of it in the gang."""
    keep = job["keep"]
    return run_job(job, background=job["background"],
                   after_write=lambda path: prune_checkpoints(Path(keep["folder"]), keep["last"],
                                                               keep_every=keep["every"]))
