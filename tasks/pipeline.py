"""Prefect tasks of the ``pipeline`` flow: make the demo data and the tiny model when absent, and the report."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from care.data.demo import benchmark_corpus, demo_corpus, make_demo_benchmark
from care.eval.plots import plot_results
from care.models.tiny import TINY_MANIFEST, make_tiny_model
from care.pipeline import DemoData
from care.report import pipeline_table, render_table, training_series
from care.store import catalog
from tasks.common import is_transient

DEMO_MANIFEST = "demo_manifest.json"


@task(name="demo-data", retries=1, retry_condition_fn=is_transient)
def demo_data(out_dir: str, options: DemoData) -> str:
    """The demo benchmark at ``out_dir``; generated only when absent or made with other options."""
    manifest = Path(out_dir) / DEMO_MANIFEST
    wanted = options.model_dump()
    if manifest.is_file():
        have = json.loads(manifest.read_text())
        if all(have.get(k) == v for k, v in wanted.items()):
            return out_dir
    return str(make_demo_benchmark(out_dir, **wanted))


@task(name="tiny-model", retries=1, retry_condition_fn=is_transient)
def tiny_model(out_dir: str, data_root: str, seed: int) -> str:
    """The tiny offline Qwen2.5-VL at ``out_dir`` (tokenizer trained on the data's text); made when absent."""
    manifest = Path(out_dir) / TINY_MANIFEST
    if manifest.is_file() and json.loads(manifest.read_text()).get("seed") == seed:
        return out_dir
    return str(make_tiny_model(out_dir, corpus=benchmark_corpus(data_root) + demo_corpus(), seed=seed))


@task(name="pipeline-report", retries=1, retry_condition_fn=is_transient)
def report(pipeline_id: str, out_dir: str, evaluations: dict[str, dict], run_ids: dict[str, str],
           catalog_file: str) -> dict:
    """Results table (printed, JSON, Prefect table artifact), the PNG plot and a markdown artifact linking it."""
    table = pipeline_table(evaluations)
    with catalog.connect(catalog_file, read_only=True) as con:
        training = training_series(con, run_ids)
    levels = {point: {m["level"]: (m["accuracy"]["accuracy"], m["accuracy"]["ci_low"], m["accuracy"]["ci_high"])
                      for m in ev["levels"]} for point, ev in evaluations.items()}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot = plot_results(out / "results.png", training=training, levels=levels, title=f"pipeline {pipeline_id}")
    (out / "results.json").write_text(json.dumps({"pipeline": pipeline_id, "runs": run_ids, "table": table},
                                                 indent=2, default=str))
    key = f"pipeline-{pipeline_id}".lower()
    create_table_artifact(table=table, key=key, description=f"Accuracy and consistency per level ({pipeline_id})")
    create_markdown_artifact(
        key=f"{key}-report",
        markdown=(f"# Pipeline {pipeline_id}\n\n{render_table(table, markdown=True)}\n\n"
                  f"Plot: `{plot}`\n\nRuns: " + ", ".join(f"{k} = `{v}`" for k, v in run_ids.items())),
        description="Results of the pipeline run",
    )
    return {"table": table, "plot": str(plot), "results": str(out / "results.json")}
