"""Prefect tasks of the RL loop: thin wrappers over ``care.train`` stages; IO at the edges.

Each stage is cached by content (``stage_key``) and retried only on transient IO errors, so killing the
process at any point and re-running the flow repeats at most the interrupted stage. Tasks take and return
paths and small JSON manifests; metrics go to the catalog from here.
"""

from __future__ import annotations

from pathlib import Path

from prefect import task

from care.models.rollout_config import RolloutConfig
from care.models.samples import DataSpec
from care.store import runs
from care.store.rollout_log import GENERATED_FILE, iteration_dir
from care.train.checkpoint import is_complete, make_initial_checkpoint, read_training_state
from care.train.config import ScoringConfig
from care.train.memory import Peak, measured_here
from care.train.optimise_stage import run_optimisation_stage, wait_for_checkpoints
from care.train.rollout import run_rollout_stage
from care.train.scoring import run_scoring_stage
from care.train.state import PolicyState, as_state, file_sha
from tasks.common import JSON_RESULTS, attempts, is_transient, records, stage_key


@task(name="initial-checkpoint", retries=2, retry_delay_seconds=2, retry_condition_fn=is_transient)
def initial_checkpoint(model: str, folder: str) -> str:
    """Checkpoint 0 of a run (idempotent: an existing complete checkpoint is kept)."""
    return str(make_initial_checkpoint(model, folder))


def _rollout_key(context, p) -> str:
    return "rollout-" + stage_key(p["run_id"], p["iteration"], _state(p).state_id, p["sample_ids"], p["data"],
                                  p["config"], p["seed"])


def _state(p) -> PolicyState:
    return as_state(p["state"])


@task(name="rollout", cache_key_fn=_rollout_key, retries=2, retry_delay_seconds=2, retry_condition_fn=is_transient,
      **JSON_RESULTS)
def rollout(run_id: str, iteration: int, state: PolicyState, sample_ids: list[str], data: DataSpec,
            config: RolloutConfig, seed: int, rollouts_root: str, catalog_file: str) -> dict:
    """G completions per prompt of this iteration's batch, from the policy of ``state`` -> ``generated.parquet``;
    generation time and tokens/s recorded."""
    by_id = data.load().by_id()
    with Peak() as peak:
        manifest = run_rollout_stage(run_id=run_id, iteration=iteration, checkpoint=state,
                                     samples=[by_id[i] for i in sample_ids], cache=data.cache(), config=config,
                                     seed=seed, out_dir=iteration_dir(Path(rollouts_root), run_id, iteration))
    peak = stage_peak(peak, manifest, here=measured_here(state, backend=config.backend))
    metrics = {**generation_metrics(manifest), **peak.metrics("rollout")}
    return {**manifest, **peak.fields(), "attempts": attempts(), **records([(state.step + 1, metrics, "rollout")])}


def stage_peak(peak: Peak, manifest: dict, *, here: bool) -> Peak:
    """A stage's peak memory: measured in this process when its work ran here, else the largest the gang's
    ranks reported (``care.train.gang``), else none (a vLLM engine's own memory is not measured)."""
    if here:
        return peak
    if manifest.get("peak_memory_mib") is not None:
        return Peak(mib=manifest["peak_memory_mib"], source=manifest.get("peak_memory_source"))
    return Peak()


def generation_metrics(manifest: dict) -> dict[str, float]:
    """What users compare runs by: generation seconds (sampling only), the stage's wall seconds, and completion
    tokens per second, in all and per device (rank)."""
    compute = manifest.get("compute_seconds", manifest.get("generation_seconds", manifest["seconds"]))
    devices = len(manifest.get("rows_per_rank") or [1])
    rate = manifest["completion_tokens"] / compute if compute > 0 else float("nan")
    return {"generation_seconds": compute, "rollout_seconds": manifest["seconds"],
            "generation_tokens_per_second": rate, "generation_tokens_per_second_per_device": rate / devices}


def _scoring_key(context, p) -> str:
    return "scoring-" + stage_key(p["run_id"], p["iteration"], _state(p).state_id, file_sha(p["generated_path"]),
                                  p["data"], p["config"], p["algo"])


@task(name="scoring", cache_key_fn=_scoring_key, retries=2, retry_delay_seconds=2, retry_condition_fn=is_transient,
      **JSON_RESULTS)
def scoring(run_id: str, iteration: int, state: PolicyState, generated_path: str, data: DataSpec,
            config: ScoringConfig, algo: str, catalog_file: str) -> dict:
    """Rewards, reference likelihood, consistency bonus and advantages -> ``scored.parquet``; metrics recorded."""
    with Peak() as peak:
        manifest = run_scoring_stage(generated_path=generated_path, checkpoint=state, samples=data.load().by_id(),
                                     cache=data.cache(), config=config, algo=algo)
    step, peak = state.step + 1, stage_peak(peak, manifest, here=measured_here(state))
    timings = {"scoring_seconds": manifest["seconds"],
               "reference_forward_seconds": manifest.get("compute_seconds", manifest["seconds"]),
               **peak.metrics("scoring")}
    return {**manifest, **peak.fields(), "attempts": attempts(), "step": step,
            **records([(step, {**manifest["metrics"], **timings}, "scoring")])}


def _optimise_key(context, p) -> str:
    # the checkpoint cadence is not part of the key: the new state is the same whether or not it is written
    # (the flow re-runs a due iteration whose checkpoint is missing: output_ready)
    state = _state(p)
    return "optimise-" + stage_key(p["run_id"], p["iteration"], state.state_id, file_sha(p["generated_path"]),
                                   file_sha(p["scored_path"]), state.replay.identity() if state.replay else None)


@task(name="optimise", cache_key_fn=_optimise_key, retries=1, retry_delay_seconds=2,
      retry_condition_fn=is_transient, **JSON_RESULTS)
def optimise(run_id: str, iteration: int, state: PolicyState, generated_path: str, scored_path: str,
             checkpoint_out: str | None, data_cursor: dict, background: bool, keep_last: int, keep_every: int,
             catalog_file: str) -> dict:
    """Policy update(s) on the scored batch, EMA on schedule -> the next state (resident), written as a checkpoint
    at ``checkpoint_out`` when given; per-step metrics recorded."""
    spec = state.replay
    with Peak() as peak:
        result = run_optimisation_stage(
            checkpoint_in=state, generated_path=generated_path, scored_path=scored_path, data=spec.data,
            config=spec.config, total_steps=spec.total_steps, temperature=spec.temperature,
            max_new_tokens=spec.max_new_tokens, iteration=iteration, checkpoint_out=checkpoint_out,
            data_cursor=data_cursor, background=background, keep_last=keep_last, keep_every=keep_every,
        )
    # the stage's peak goes with its first step's metrics (where rollout and scoring record theirs)
    peak = stage_peak(peak, result, here=measured_here(state)).metrics("optimise")
    steps = [(entry["step"], {**{k: v for k, v in entry.items() if k != "step"}, **(peak if n == 0 else {})},
              "optimise") for n, entry in enumerate(result["steps"])]
    new_state = {**result["state"], "step": result["step"]}
    return {"state": new_state, "checkpoint": result["checkpoint"], "step": result["step"],
            "seconds": result["seconds"], "last": result["steps"][-1] if result["steps"] else {},
            "attempts": attempts(), **records(steps)}


@task(name="catalog-checkpoints", retries=2, retry_delay_seconds=1, retry_condition_fn=is_transient)
def catalog_checkpoints(run_id: str, folder: str, catalog_file: str, wait: bool = False) -> list[str]:
    """The run's ``checkpoints`` rows made equal to its complete checkpoints on disk (written in the background,
    pruned); ``wait``: first let a background write finish. Returns their names."""
    if wait:
        wait_for_checkpoints()
    present = []
    for path in sorted(Path(folder).glob("iter-*")):
        if path.name[5:].isdigit() and is_complete(path, full=False):
            st = read_training_state(path)
            present.append((path.name, str(path), st.step, st.iteration))
    runs.sync_checkpoints(run_id, present, path=catalog_file)
    return [p[0] for p in present]


@task(name="refresh-rollouts-view", retries=2, retry_delay_seconds=1, retry_condition_fn=is_transient)
def refresh_rollouts_view(rollouts_root: str, catalog_file: str) -> bool:
    return runs.refresh_rollouts_view(rollouts_root, path=catalog_file)


def generated_path(rollouts_root: str, run_id: str, iteration: int) -> str:
    return str(iteration_dir(Path(rollouts_root), run_id, iteration) / GENERATED_FILE)


@task(name="list-samples", retries=2, retry_delay_seconds=1, retry_condition_fn=is_transient)
def list_samples(data: DataSpec) -> dict:
    """Sample ids usable for training (media cached), and how many were excluded or rejected."""
    sample_set = data.load()
    return {"sample_ids": sorted(s.sample_id for s in sample_set.samples), "excluded": len(sample_set.excluded),
            "rejected_rows": sample_set.rejected_rows}
