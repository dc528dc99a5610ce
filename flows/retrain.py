"""The ``retrain`` flow: one scheduled retraining round (see ``care.train.retrain``).

Composition only: preprocess the current training annotations (cached shards and files are reused), continue the
RL run for ``rl.iterations`` more iterations from its newest complete checkpoint, then evaluate the new
checkpoint as a subflow. Evaluation is a subflow rather than an automation on the rl flow's completion event:
it must evaluate exactly the checkpoint this round wrote, it shows up under the round's flow run (one run to
watch, one failure state), and it needs no event triggers, which the private ``--no-services`` server that the
``care`` command starts does not run.
"""

from __future__ import annotations

from prefect import flow

from care.store import media
from care.train.checkpoint import latest_complete
from care.train.retrain import RetrainConfig
from care.workspace import Workspace
from flows.evaluate import evaluate
from flows.preprocess import preprocess
from flows.rl import rl


@flow(name="retrain", log_prints=True)
def retrain(config: RetrainConfig, home: str | None = None) -> dict:
    """One round; returns the run id, the iterations done, the new checkpoint and the evaluation labels."""
    ws = Workspace.at(home).ensure()
    run_id = config.run_id()
    found = latest_complete(ws.run_dir(run_id) / "checkpoints")
    done = found[0] if found else 0
    print(f"retrain {run_id}: continuing after iteration {done} for {config.rl.iterations} more")
    prepared = preprocess(config.preprocess_config(), home=str(ws.root), dask_address=config.dask_address)
    decoded = media.decoded_count(prepared["run_id"], path=ws.catalog_path)
    print(f"retrain {run_id}: {prepared['samples']} training samples, {prepared['media']} media files "
          f"({decoded} decoded now, the rest from the frame cache)")
    trained = rl(config.round_rl_config(done), home=str(ws.root))
    result = {"run_id": run_id, "iterations": trained["iterations"], "checkpoint": trained["checkpoint"],
              "decoded_media": decoded}
    if config.evaluate:
        evaluated = evaluate(config.eval_config(trained["checkpoint"]), home=str(ws.root))
        result["evaluation"] = {"label": evaluated["label"],
                                "accuracy": {m["level"]: m["accuracy"]["accuracy"] for m in evaluated["levels"]}}
    print(f"retrain {run_id}: round done at iteration {trained['iterations']}; checkpoint {trained['checkpoint']}")
    return result
