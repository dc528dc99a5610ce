"""The ``sft`` flow: supervised fine-tuning on the CoT training file, one resumable stage.

Composition only. The run id derives from the config (or ``run_name``); a re-run of a finished run is a cache
hit, and a re-run of an interrupted one continues from its newest complete checkpoint inside the task.
"""

from __future__ import annotations

from prefect import flow

from care import tracking
from care.models.samples import DataSpec
from care.store import runs
from care.train.sft import CHECKPOINT_PREFIX, checkpoint_name
from care.train.sft_config import SFTConfig
from care.workspace import Workspace
from tasks.common import checkpoint_ready, run_stage
from tasks.sft import sft as sft_task


def _summary_line(result: dict, steps: int) -> str:
    last = result.get("last", {})
    cached = " (cached)" if result["cache_hit"] else ""
    resumed = f", resumed at step {result['resumed_from']}" if result.get("resumed_from") else ""
    return (f"sft: step {result['step']}/{steps}  loss {last.get('loss', float('nan')):.4f}  "
            f"format {last.get('check_format', float('nan')):.3f}  accuracy {last.get('check_accuracy', float('nan')):.3f} "
            f"(greedy, training prompts)  skipped {result['skipped_steps']}  {result['seconds']:.1f}s{resumed}{cached}")


@flow(name="sft", log_prints=True)
def sft(config: SFTConfig, home: str | None = None) -> dict:
    """Run (or continue) the SFT run described by ``config``; returns the run id and the final checkpoint."""
    ws = Workspace.at(home).ensure()
    run_id, catalog_file = config.run_id(), str(ws.catalog_path)
    data = DataSpec(data_root=config.data_root, annotation_file=config.annotations,
                    cache_root=str(ws.frame_cache_dir), sampling=config.frames, seed=config.seed,
                    shuffle_options=config.shuffle_options)
    run_dir = ws.run_dir(run_id)
    final = run_dir / "checkpoints" / checkpoint_name(config.steps)
    tracking.start(run_id, config.report_to, config.tracking_folder(ws.root), config.model_dump(mode="json"))
    with runs.recorded(run_id, kind="sft", config=config.model_dump(mode="json"), path=catalog_file):
        try:
            print(f"run {run_id}: SFT to step {config.steps} (batch {config.batch_size}, lr {config.learning_rate}); "
                  f"checkpoints {run_dir / 'checkpoints'}/{CHECKPOINT_PREFIX}NNNNN")
            result = run_stage(sft_task, run_id=run_id, iteration=0, stage="sft",
                               output_ready=checkpoint_ready(final), catalog_file=catalog_file, config=config,
                               data=data, run_dir=str(run_dir))
            print(_summary_line(result, config.steps))
        finally:  # the trackers (report_to) hold files open
            tracking.finish(run_id)
    ckpt = result["checkpoint"]
    print(f"run {run_id} completed; final checkpoint {ckpt}")
    print(f"dig in: care sql \"select step, name, value from metrics where run_id = '{run_id}' order by step, name\"")
    return {"run_id": run_id, "checkpoint": ckpt, "policy": f"{ckpt}/policy"}
