"""One RL iteration written once: rollout -> scoring -> optimisation, as plain functions of a ``PolicyState``.

The ``rl`` flow runs the same three stages as Prefect tasks (cached, retried and recorded one by one) in the
same order with the same arguments; the benchmarks and the tests call ``run_iteration`` directly. Where the
stages run is the stages' business: in this process, or on the run's resident gang when
``optim.num_processes > 1`` (``care.train.gang``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from care.models.samples import DataSpec
from care.store.rollout_log import iteration_dir
from care.train.checkpoint import iteration_checkpoint_name, make_initial_checkpoint
from care.train.config import RLConfig
from care.train.data_order import batch_ids, cursor_after
from care.train.optimise_stage import run_optimisation_stage
from care.train.rollout import run_rollout_stage
from care.train.scoring import run_scoring_stage
from care.train.state import PolicyState, ReplaySpec, of_checkpoint


def replay_spec(config: RLConfig, data: DataSpec) -> ReplaySpec:
    """How the run's updates are applied (and re-applied on resume)."""
    s = config.rollout.sampling
    return ReplaySpec(data=data, config=config.optim, total_steps=config.total_optimizer_steps,
                      temperature=s.temperature, max_new_tokens=s.max_new_tokens)


def initial_state(config: RLConfig, data: DataSpec, *, checkpoints: str | Path, rollouts_root: str | Path) -> PolicyState:
    """The state a new run starts from: checkpoint ``iter-00000`` of ``config.model`` in ``checkpoints``."""
    ckpt = make_initial_checkpoint(config.model, Path(checkpoints) / iteration_checkpoint_name(0))
    return of_checkpoint(ckpt, rollouts_root=str(rollouts_root), run_id=config.run_id(),
                         replay=replay_spec(config, data))


@dataclass
class Iteration:
    """What one iteration produced: each stage's manifest, the state after it, and wall seconds per stage."""

    rollout: dict
    scoring: dict
    optimise: dict
    state: PolicyState
    seconds: dict[str, float] = field(default_factory=dict)


def iteration_batch(config: RLConfig, sample_ids: Sequence[str], iteration: int) -> list[str]:
    """The prompts of ``iteration`` (the seeded data order of the run)."""
    return batch_ids(list(sample_ids), batch_size=config.rollout.prompts_per_iteration, index=iteration,
                     seed=config.seed)


def run_iteration(config: RLConfig, state: PolicyState, *, data: DataSpec, sample_ids: Sequence[str],
                  rollouts_root: str | Path, checkpoint_out: str | Path | None = None, background: bool = False,
                  timeout_s: float | None = None) -> Iteration:
    """Iteration ``state.iteration`` of the run ``state.run_id``: sample, score, update. ``sample_ids``: every
    training sample of the run (the batch is chosen from them); ``checkpoint_out``: write the new state there."""
    it, run_id = state.iteration, state.run_id
    by_id = data.load().by_id()
    ids = iteration_batch(config, sample_ids, it)
    out_dir = iteration_dir(Path(rollouts_root), run_id, it)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    gen = run_rollout_stage(run_id=run_id, iteration=it, checkpoint=state, samples=[by_id[i] for i in ids],
                            cache=data.cache(), config=config.rollout, seed=config.seed, out_dir=out_dir)
    seconds["rollout"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    sc = run_scoring_stage(generated_path=gen["path"], checkpoint=state, samples=by_id, cache=data.cache(),
                           config=config.scoring, algo=config.algo)
    seconds["scoring"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    spec = state.replay or replay_spec(config, data)
    cursor = cursor_after(len(sample_ids), batch_size=config.rollout.prompts_per_iteration, index=it)
    opt = run_optimisation_stage(
        checkpoint_in=state, generated_path=gen["path"], scored_path=sc["path"], data=spec.data,
        config=spec.config, total_steps=spec.total_steps, temperature=spec.temperature,
        max_new_tokens=spec.max_new_tokens, iteration=it, checkpoint_out=checkpoint_out,
        data_cursor=cursor.as_dict(), background=background, keep_last=config.keep_checkpoints,
        keep_every=config.keep_every, timeout_s=timeout_s)
    seconds["optimise"] = time.perf_counter() - t0
    new_state = PolicyState.model_validate({**opt["state"], "step": opt["step"]})
    return Iteration(rollout=gen, scoring=sc, optimise=opt, state=new_state, seconds=seconds)
