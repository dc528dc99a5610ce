"""Rebuilding a training state: from the process's resident cache, or a checkpoint plus the logged updates.

``materialise(state)`` is how every RL stage gets its models (``care.train.state`` explains the identity and
the guarantee). Rebuilding re-applies the updates of the iterations after the newest usable checkpoint from
their logged ``generated.parquet`` + ``scored.parquet``; it never samples or scores.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from care.device import default_device, resolve_dtype
from care.errors import CareError
from care.train import warm
from care.train.optimise import load_scored_batch, update_steps
from care.train.state import PolicyState, as_state, checkpoint_state_id, replay_plan
from care.train.trainer import Trainer, restore

log = logging.getLogger(__name__)


def materialise(state: PolicyState | str | Path | dict, *, take: bool = False) -> Trainer:
    """The Trainer of ``state`` (a PolicyState, or a checkpoint path): held (shared unless ``take``), or rebuilt.

    A rebuilt trainer that is not taken is put in the resident cache for the stages after this one.
    """
    state = as_state(state)
    device = default_device()
    held = (warm.take if take else warm.get)(state.state_id, device)
    if held is not None:
        return held
    checkpoint, todo = replay_plan(state)
    trainer = restore(checkpoint, device=device, state_id=checkpoint_state_id(checkpoint))
    if todo:
        replay(trainer, state, todo)
    if trainer.state_id != state.state_id:  # replay_plan checked the chain; this would be a bug
        raise CareError(f"rebuilt state {trainer.state_id} is not the wanted {state.state_id}")
    if not take:
        warm.put(trainer, device)
    return trainer


def replay(trainer: Trainer, state: PolicyState, iterations: list[int]) -> None:
    """Re-apply the logged updates of ``iterations`` (consecutive, starting at the trainer's) in place."""
    from care.train.state import chain_id

    spec = state.replay
    if spec is None:
        raise CareError(f"state {state.state_id}: nothing to replay with (no replay spec)")
    samples, cache = spec.data.load().by_id(), spec.data.cache()
    t0 = time.perf_counter()
    for k in iterations:
        if trainer.iteration != k:
            raise CareError(f"replay of iteration {k} onto a state after {trainer.iteration} iterations")
        generated, scored = state.shards(k)
        update_steps(trainer, rows=load_scored_batch(generated, scored), samples=samples, cache=cache,
                     config=spec.config, total_steps=spec.total_steps, temperature=spec.temperature,
                     max_new_tokens=spec.max_new_tokens, iteration=k)
        trainer.state_id = chain_id(trainer.state_id, generated, scored, spec)
    log.info("rebuilt state %s: replayed iterations %s..%s in %.1fs", trainer.state_id, iterations[0],
             iterations[-1], time.perf_counter() - t0)


def compute_dtype(state: PolicyState) -> torch.dtype:
    """The dtype the run's forward passes use (rollout and scoring too): its ``optim.precision``, fp32 for a
    bare checkpoint."""
    precision = state.replay.config.precision if state.replay is not None else "fp32"
    return resolve_dtype(precision, default_device())
