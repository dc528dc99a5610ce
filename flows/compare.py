"""The ``compare`` flow: the pipeline up to SFT once per SFT seed, then from each SFT checkpoint RL per
(algorithm, RL seed) and the evaluation of each; the spread per algorithm and the paired differences
(GRPO-CARE minus each other algorithm on the same (sft_seed, rl_seed)) with bootstrap intervals.

Composition only (the statistics are care.compare's); every run is resumable/cached like the pipeline's own, so a
re-run reuses what finished: each SFT seed's pipeline and SFT run, each arm's RL run and evaluation.
"""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from care.compare import CompareConfig, compare_results, render_comparison, to_json
from care.workspace import Workspace
from flows.evaluate import evaluate
from flows.pipeline import pipeline
from flows.rl import rl


def _arm(config: CompareConfig, algo: str, sft_seed: int, rl_seed: int, start: dict, home: str) -> dict:
    """RL with ``algo`` and ``rl_seed`` from the SFT checkpoint of ``start`` (one SFT seed's pipeline), evaluated."""
    trained = rl(config.rl_config(algo, rl_seed, start["policy"], start["data_root"]), home=home)
    label = f"{algo}-sft{sft_seed}-rl{rl_seed}"
    ev = evaluate(config.pipeline.eval_config(trained["checkpoint"], start["data_root"], label), home=home,
                  show_table=False)
    return {"algo": algo, "sft_seed": sft_seed, "rl_seed": rl_seed, "run_id": trained["run_id"], "label": label,
            "checkpoint": trained["checkpoint"], "evaluation": ev}


@flow(name="compare", log_prints=True)
def compare(config: CompareConfig, home: str | None = None) -> dict:
    ws = Workspace.at(home).ensure()
    arms, sft_runs = [], {}
    for sft_seed in config.sft_seeds:
        start = pipeline(config.sft_pipeline(sft_seed), home=str(ws.root))
        sft_runs[sft_seed] = start["runs"].get("sft")
        arms += [_arm(config, algo, sft_seed, rl_seed, start, str(ws.root))
                 for algo in config.algos for rl_seed in config.seeds]
    result = compare_results(arms, config.algos, config.bootstrap_resamples, config.confidence,
                             config.bootstrap_seed)
    compare_id = config.run_id()
    out = ws.runs_dir / compare_id
    out.mkdir(parents=True, exist_ok=True)
    listed = [{k: v for k, v in arm.items() if k != "evaluation"} for arm in arms]
    runs = {algo: [a["run_id"] for a in arms if a["algo"] == algo] for algo in config.algos}
    (out / "comparison.json").write_text(to_json({
        "compare_id": compare_id, "config": config.model_dump(mode="json"), "sft_runs": sft_runs, "runs": runs,
        "arms": listed, **result}))
    create_markdown_artifact(key=compare_id.lower().replace("_", "-"),
                             markdown=render_comparison(result["rows"], result["differences"], markdown=True),
                             description="GRPO vs GRPO-CARE: spread per algorithm, paired differences with CIs")
    print(f"comparison over SFT seeds {config.sft_seeds} x RL seeds {config.seeds}:\n"
          f"{render_comparison(result['rows'], result['differences'])}")
    print(f"written: {out / 'comparison.json'}")
    return {"compare_id": compare_id, "sft_runs": sft_runs, "runs": runs, "arms": listed, **result,
            "path": str(out / "comparison.json")}
