"""The ``rl`` flow: GRPO / GRPO-CARE iterations of rollouts -> scoring -> optimisation.

Composition only: each iteration runs the stages of ``care.train.iteration.run_iteration`` as Prefect tasks. The
state after each iteration is passed on as a ``PolicyState`` (its id, not its weights: those stay resident in
this process, or with ``optim.num_processes > 1`` in the run's gang of ranks, ``care.train.gang``, which the
first stage starts and the end of the flow stops) and written as a checkpoint every ``checkpoint_every``
iterations.
Resume: the run id derives from the config (or ``run_name``); the flow restarts at the newest complete
checkpoint and walks the iterations after it, where every finished stage is a Prefect cache hit (no sampling,
no scoring); the first stage that needs the weights rebuilds them by replaying the logged updates
(``care.train.replay``), so a killed run re-does at most the stage it was killed in plus those updates.
"""

from __future__ import annotations

import time

from prefect import flow

from care import tracking
from care.models.samples import DataSpec
from care.models.vllm_backend import close_engines
from care.store import runs
from care.train import gang
from care.train.checkpoint import iteration_checkpoint_name, latest_complete
from care.train.config import RLConfig
from care.train.data_order import cursor_after
from care.train.iteration import iteration_batch, replay_spec
from care.train.state import PolicyState, of_checkpoint
from care.workspace import Workspace
from flows.evaluate import evaluate
from tasks.common import checkpoint_ready, file_ready, run_stage
from tasks.gang_nodes import submit_nodes
from tasks.rl import (
    catalog_checkpoints,
    generated_path,
    initial_checkpoint,
    list_samples,
    optimise,
    refresh_rollouts_view,
    rollout,
    scoring,
)


def _summary_line(it: int, total: int, scored: dict, opt: dict, seconds: float, hits: list[str]) -> str:
    m, last = scored["metrics"], opt.get("last", {})
    cached = f" (cached: {', '.join(hits)})" if hits else ""
    return (f"iteration {it + 1}/{total}: reward {m['reward_mean']:.3f}  accuracy {m['reward_accuracy_mean']:.3f}  "
            f"format {m['reward_format_mean']:.3f}  bonus rate {m['bonus_rate']:.3f}  "
            f"likelihood {m['consistency_likelihood_mean']:.3f}  loss {last.get('loss', float('nan')):.4f}  "
            f"step {opt['step']}  {seconds:.1f}s{cached}")


def _iterations(config: RLConfig, ws: Workspace, run_id: str) -> str:
    """The iterations still to run, stage by stage; the newest checkpoint."""
    catalog_file, rollouts_root = str(ws.catalog_path), str(ws.rollouts_dir)
    data = DataSpec(data_root=config.data_root, annotation_file=config.train_annotations,
                    cache_root=str(ws.frame_cache_dir), sampling=config.frames, seed=config.seed,
                    shuffle_options=config.shuffle_options)
    ckpt_dir = ws.run_dir(run_id) / "checkpoints"
    ro, spec = config.rollout, replay_spec(config, data)
    found = latest_complete(ckpt_dir)
    ckpt = str(found[1]) if found else initial_checkpoint(config.model, str(ckpt_dir / iteration_checkpoint_name(0)))
    state = of_checkpoint(ckpt, rollouts_root=rollouts_root, run_id=run_id, replay=spec)
    start = state.iteration
    available = list_samples(data)
    todo = (f"iterations {start + 1}..{config.iterations}" if start < config.iterations
            else f"already complete ({start} iterations)")
    print(f"run {run_id}: {len(available['sample_ids'])} training samples "
          f"({available['excluded']} excluded for media, {available['rejected_rows']} rows rejected); {todo}; "
          f"a checkpoint every {config.checkpoint_every} iterations")
    for it in range(start, config.iterations):
        t0 = time.perf_counter()
        ids = iteration_batch(config, available["sample_ids"], it)  # the stages of care.train.iteration
        gen_file = generated_path(rollouts_root, run_id, it)
        pending: list = []  # the iteration's stage rows and metrics, written at its end in one catalog connection
        gen = run_stage(rollout, run_id=run_id, iteration=it, stage="rollout", output_ready=file_ready(gen_file),
                        catalog_file=catalog_file, pending=pending, state=state, sample_ids=ids, data=data, config=ro,
                        seed=config.seed, rollouts_root=rollouts_root)
        sc = run_stage(scoring, run_id=run_id, iteration=it, stage="scoring",
                       output_ready=file_ready(gen["path"].replace("generated.parquet", "scored.parquet")),
                       catalog_file=catalog_file, pending=pending, state=state, generated_path=gen["path"], data=data,
                       config=config.scoring, algo=config.algo)
        due = config.checkpoint_due(it + 1)
        evaluating = bool(config.eval_every and (it + 1) % config.eval_every == 0)
        out = str(ckpt_dir / iteration_checkpoint_name(it + 1)) if due else None
        cursor = cursor_after(len(available["sample_ids"]), batch_size=ro.prompts_per_iteration, index=it)
        opt = run_stage(optimise, run_id=run_id, iteration=it, stage="optimise",
                        output_ready=checkpoint_ready(out) if out else lambda: True,
                        catalog_file=catalog_file, pending=pending, state=state, generated_path=gen["path"],
                        scored_path=sc["path"], checkpoint_out=out, data_cursor=cursor.as_dict(),
                        # the last checkpoint and one about to be evaluated are waited for
                        background=config.checkpoint_background and it + 1 < config.iterations and not evaluating,
                        keep_last=config.keep_checkpoints, keep_every=config.keep_every)
        state = PolicyState.model_validate(opt["state"])
        runs.record_stages(pending, path=catalog_file)
        if due:
            ckpt = out
            catalog_checkpoints(run_id, str(ckpt_dir), catalog_file)
        hits = [name for name, m in (("rollout", gen), ("scoring", sc), ("optimise", opt)) if m["cache_hit"]]
        print(_summary_line(it, config.iterations, sc, opt, time.perf_counter() - t0, hits))
        if evaluating:
            evaluate(config.eval_config(ckpt), home=str(ws.root), show_table=False)
    catalog_checkpoints(run_id, str(ckpt_dir), catalog_file, wait=True)
    refresh_rollouts_view(rollouts_root, catalog_file)
    return ckpt


@flow(name="rl", log_prints=True)
def rl(config: RLConfig, home: str | None = None) -> dict:
    """Run (or continue) the RL run described by ``config``; returns the run id and the final checkpoint."""
    ws = Workspace.at(home).ensure()
    run_id, catalog_file = config.run_id(), str(ws.catalog_path)
    # experiment trackers (report_to) mirror the metrics the tasks record from here on; closed at the end
    tracking.start(run_id, config.report_to, config.tracking_folder(ws.root), config.model_dump(mode="json"))
    gang.set_node_launcher(submit_nodes)  # nodes beyond this machine's: a gang-node deployment run each
    with runs.recorded(run_id, kind="rl", config=config.model_dump(mode="json"), path=catalog_file):
        try:
            ckpt = _iterations(config, ws, run_id)
        finally:  # the run's resident workers end with it: the rank gang and the vLLM engine
            gang.close_all()
            close_engines()
            tracking.finish(run_id)
    print(f"run {run_id} completed; final checkpoint {ckpt}")
    print(f"dig in: care sql \"select iteration, avg(reward), avg(bonus) from rollouts where run_id = '{run_id}' "
          "group by 1 order by 1\"")
    return {"run_id": run_id, "checkpoint": ckpt, "iterations": config.iterations}
