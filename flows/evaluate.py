"""The ``evaluate`` flow: make sure the level files are in the frame cache, evaluate each level, publish.

Composition only. The preprocess flow runs first as a subflow on the level files with the evaluation's frame
sampling (its shards are cache hits once done). Each level is a cached ``evaluate-level`` task; the results
table (levels x accuracy ± CI, consistency per judge) is printed and published as Prefect table and markdown
artifacts. The run row is created (kind ``eval``) only when the run does not exist yet: evaluating a training
run's checkpoint never changes that run's status or config.
"""

from __future__ import annotations

from prefect import flow
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from care.eval_schema import EvalConfig
from care.identity import content_id
from care.media.preprocess import PreprocessConfig
from care.store import runs
from care.workspace import Workspace
from flows.preprocess import preprocess
from tasks.common import file_ready, run_stage
from tasks.evaluate import benchmark_levels, evaluate_level, publish_results


def _print_table(title: str, cells: list[dict]) -> None:
    table = Table(title=escape(title))
    for column in cells[0]:
        table.add_column(escape(column), justify="left" if column == "level" else "right")
    for row in cells:
        table.add_row(*(escape(str(v)) for v in row.values()))
    Console(width=160).print(table)


@flow(name="evaluate", log_prints=True)
def evaluate(config: EvalConfig, home: str | None = None, show_table: bool = True) -> dict:
    """Evaluate ``config.checkpoint`` on ``config.levels`` (a benchmark: its categories); returns the manifest.

    ``show_table`` prints the results table to stdout (``care eval --json`` turns it off to keep stdout JSON).
    """
    ws = Workspace.at(home).ensure()
    catalog_file = str(ws.catalog_path)
    model_id = content_id(config.checkpoint)
    run_id, label = config.resolved_run_id(model_id), config.resolved_label()
    out_dir = str(ws.run_dir(run_id) / "eval" / label)
    # an eval run of its own (not an evaluation inside a training run), also when a killed attempt left its row
    own_run = runs.run_kind(run_id, path=catalog_file) in (None, "eval")
    with runs.recorded(run_id, kind="eval", config=config.model_dump(mode="json"), path=catalog_file,
                       own=own_run):
        levels = benchmark_levels(config)  # a benchmark's categories when no levels are given
        preprocess(PreprocessConfig(data_root=config.data_root, sampling=config.frames, shuffle_options=False,
                                    annotations=[config.annotation_file(level) for level in levels],
                                    benchmark=config.benchmark),
                   home=str(ws.root))
        manifests = [
            run_stage(evaluate_level, run_id=run_id, iteration=0, stage=f"eval:{label}:{level}",
                      output_ready=file_ready(f"{out_dir}/{level}.parquet"), catalog_file=catalog_file,
                      config=config, level=level, checkpoint_id=model_id, cache_root=str(ws.frame_cache_dir),
                      out_dir=out_dir)
            for level in levels
        ]
        published = publish_results(manifests, config.confidence, str(ws.runs_dir), catalog_file)
    hits = [m["level"] for m in manifests if m["cache_hit"]]
    if show_table:
        _print_table(f"{label} ({run_id}, checkpoint {model_id})", published["cells"])
    for m in manifests:
        a = m["accuracy"]
        print(f"{label} {m['level']}: accuracy {a['accuracy']:.3f} [{a['ci_low']:.3f}, {a['ci_high']:.3f}] "
              f"(n={a['n']}); " + "; ".join(f"{s['judge_label']} {s['rate']:.3f} (judged {s['n_judged']})"
                                            for s in m["consistency"]))
    print(f"evaluation {label} of run {run_id}: {sum(m['n'] for m in manifests)} samples"
          + (f" (cached: {', '.join(hits)})" if hits else ""))
    print(f"dig in: care sql \"select level, judge, accuracy, consistency_rate, n_unjudged from eval_results "
          f"where run_id = '{run_id}' and label = '{label}' order by level, judge\"")
    return {"run_id": run_id, "label": label, "checkpoint": config.checkpoint, "checkpoint_id": model_id,
            "levels": manifests, "results": published["results"], "artifact_key": published["artifact_key"]}
