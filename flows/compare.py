"""The ``compare`` flow: the pipeline up to SFT once, then RL per (algorithm, seed) and evaluation of each.

Composition only; every run is resumable/cached like the pipeline's own, so a re-run reuses what finished.
"""

from __future__ import annotations

import json

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from care.compare import CompareConfig, render_comparison, summarize
from care.workspace import Workspace
from flows.evaluate import evaluate
from flows.pipeline import pipeline
from flows.rl import rl


@flow(name="compare", log_prints=True)
def compare(config: CompareConfig, home: str | None = None) -> dict:
    ws = Workspace.at(home).ensure()
    base = config.pipeline.model_copy(update={"run_rl": False, "evaluate": ["sft"]})
    start = pipeline(base, home=str(ws.root))
    data_root, policy = start["data_root"], start["policy"]
    results: dict[str, list[dict]] = {}
    run_ids: dict[str, list[str]] = {}
    for algo in config.algos:
        for seed in config.seeds:
            rl_config = config.rl_config(algo, seed, policy, data_root)
            trained = rl(rl_config, home=str(ws.root))
            ev = evaluate(config.pipeline.eval_config(trained["checkpoint"], data_root, f"{algo}-seed{seed}"),
                          home=str(ws.root), show_table=False)
            results.setdefault(algo, []).append(ev)
            run_ids.setdefault(algo, []).append(trained["run_id"])
    rows = summarize(results)
    text = render_comparison(rows)
    out = ws.runs_dir / f"compare-{start['pipeline_id']}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "comparison.json").write_text(json.dumps({"runs": run_ids, "rows": rows}, indent=2, default=str))
    create_markdown_artifact(key=f"compare-{start['pipeline_id']}".lower(),
                             markdown="| " + text.replace("\n", " |\n| ") + " |", description="GRPO vs GRPO-CARE")
    print(f"comparison over seeds {config.seeds} (mean ± std [min, max]):\n{text}")
    print(f"written: {out / 'comparison.json'}")
    return {"runs": run_ids, "rows": rows, "path": str(out / "comparison.json")}
