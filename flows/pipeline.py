"""The ``pipeline`` flow, the product's main job: data -> preprocess -> SFT -> RL (GRPO-CARE) -> evaluation.

Composition only. Every stage is resumable or cached, so a second run reuses everything that finished: the demo
data and tiny model are made only when absent, preprocessing skips unchanged shards, SFT and RL continue from
their newest checkpoints (their run ids derive from their configs), evaluations are cache hits per level.
"""

from __future__ import annotations

from prefect import flow

from care.media.preprocess import PreprocessConfig
from care.pipeline import PipelineConfig
from care.report import render_table
from care.store import runs
from care.workspace import Workspace
from flows.evaluate import evaluate
from flows.preprocess import preprocess
from flows.rl import rl
from flows.sft import sft
from tasks.pipeline import demo_data, report, tiny_model

ANNOTATIONS = ["train", "train_cot", "L1", "L2", "L3"]


@flow(name="pipeline", log_prints=True)
def pipeline(config: PipelineConfig, home: str | None = None) -> dict:
    """Run the whole pipeline; returns run ids, the results table and the plot's path."""
    ws = Workspace.at(home).ensure()
    pipeline_id, catalog_file = config.run_id(), str(ws.catalog_path)
    with runs.recorded(pipeline_id, kind="pipeline", config=config.model_dump(mode="json"), path=catalog_file):
        data_root = config.data_root or demo_data(str(ws.demo_data_dir), config.demo)
        model = config.model or tiny_model(str(ws.models_dir / f"tiny-seed{config.tiny_model_seed}"), data_root,
                                           config.tiny_model_seed)
        preprocess(PreprocessConfig(data_root=data_root, annotations=ANNOTATIONS, sampling=config.frames,
                                    workers=config.workers, shuffle_options=False), home=str(ws.root))
        evaluations, run_ids, policy = {}, {}, model
        if "base" in config.evaluate:
            evaluations["base"] = evaluate(config.eval_config(model, data_root, "base"), home=str(ws.root))
        if config.run_sft:
            trained = sft(config.sft_config(model, data_root), home=str(ws.root))
            run_ids["sft"], policy = trained["run_id"], trained["policy"]
            if "sft" in config.evaluate:
                evaluations["sft"] = evaluate(config.eval_config(trained["checkpoint"], data_root, "sft"),
                                              home=str(ws.root))
        if config.run_rl:
            rl_config = config.rl_config(policy, data_root)
            trained = rl(rl_config, home=str(ws.root))
            run_ids[rl_config.algo], policy = trained["run_id"], f"{trained['checkpoint']}/policy"
            if "rl" in config.evaluate:
                evaluations["rl"] = evaluate(config.eval_config(trained["checkpoint"], data_root, "rl"),
                                             home=str(ws.root))
        result = report(pipeline_id, str(ws.run_dir(pipeline_id)), evaluations, run_ids, catalog_file)
    print(f"pipeline {pipeline_id}: results\n{render_table(result['table'])}")
    print(f"plot: {result['plot']}")
    print("dig in:\n  care sql \"select label, level, judge, accuracy, consistency_rate from eval_results "
          "order by label, level, judge\"\n  care sql \"select run_id, iteration, avg(reward) as reward, "
          "avg(bonus) as bonus, avg(ref_likelihood) as likelihood from rollouts group by all order by all\"\n"
          f"  care show {pipeline_id}")
    return {"pipeline_id": pipeline_id, "runs": run_ids, "data_root": data_root, "model": model, "policy": policy,
            **result}
