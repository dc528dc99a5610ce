"""``care runs`` and ``care show RUN``: what ran, how it went, where its outputs are."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from care.cli.common import state
from care.store.overview import list_runs, show_run


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def _table(title: str, rows: list[dict], columns: list[str] | None = None) -> Table:
    columns = columns or (list(rows[0]) if rows else [])
    table = Table(title=title, title_justify="left")
    for c in columns:
        table.add_column(c)
    for r in rows:
        table.add_row(*(_cell(r.get(c)) for c in columns))
    return table


def runs_command(
    ctx: typer.Context,
    kind: str = typer.Option(None, help="Only runs of this kind: pipeline, sft, rl, eval."),
    limit: int = typer.Option(50, help="Most runs to list (newest first)."),
) -> None:
    """List runs with status and headline figures (last reward, accuracy per level, ...)."""
    st = state(ctx)
    rows = list_runs(st.workspace.catalog_path, kind=kind, limit=limit)
    if st.json:
        typer.echo(json.dumps(rows, indent=2, default=str))
        return
    if not rows:
        typer.echo(f"no runs in {st.workspace.catalog_path}")
        return
    flat = [{"run": r["run_id"], "kind": r["kind"], "status": r["status"], "started": str(r["created_at"])[:19],
             "seconds": r["seconds"], "headline": headline_text(r["headline"])} for r in rows]
    Console(width=200).print(_table("runs", flat))


SHORT = {"reward_mean": "reward", "reward_accuracy_mean": "sampled acc", "bonus_rate": "bonus rate", "loss": "loss",
         "check_format": "format", "check_accuracy": "train acc", "steps": "step"}


def headline_text(headline: dict) -> str:
    """``reward 1.52  bonus rate 0.31  step 60  |  rl: L1 0.61 L2 0.55 L3 0.27`` (eval accuracy per label)."""
    parts = [f"{SHORT[k]} {_cell(v)}" for k, v in headline.items() if k in SHORT]
    evals: dict[str, list[str]] = {}
    for key, value in headline.items():
        if key.startswith("acc["):
            label, level = key[4:-1].split(":", 1)
            evals.setdefault(label, []).append(f"{level} {_cell(value)}")
    parts += [f"{label}: {' '.join(levels)}" for label, levels in evals.items()]
    return "  ".join(parts)


TIMING_COLUMNS = {"stage": "stage", "n": "iterations", "seconds": "seconds", "compute_seconds": "compute s",
                  "tokens_per_second": "tokens/s", "tokens_per_second_per_device": "tokens/s/device",
                  "peak_memory_mib": "peak MiB"}


def timing_table(rows: list[dict]) -> Table:
    """Per-stage timing: medians over iterations (compute s = generation / reference forward; optimise seconds
    = its update steps), and the largest peak memory (GPU allocated, else RSS, of the flow's process)."""
    shown = [{TIMING_COLUMNS[k]: v for k, v in r.items() if k in TIMING_COLUMNS} for r in rows]
    columns = [c for c in TIMING_COLUMNS.values() if any(r.get(c) is not None for r in shown)]
    table = _table("timing (median per iteration)", shown, columns)
    table.caption = ("compute s: generation (rollout), reference forward (scoring); peak MiB: the largest, "
                     "torch.cuda.max_memory_allocated on a GPU, else peak RSS, of the flow's process")
    return table


def show_command(ctx: typer.Context, run_id: str = typer.Argument(..., help="Run id (see `care runs`).")) -> None:
    """Show one run: status, config, stages with timings, per-stage timing (median seconds, tokens/s, peak memory),
    metric summaries, checkpoints, evaluations, files."""
    st = state(ctx)
    info = show_run(st.workspace.catalog_path, run_id, st.workspace.run_dir(run_id))
    if st.json:
        typer.echo(json.dumps(info, indent=2, default=str))
        return
    console = Console(width=200)
    run = info["run"]
    console.print(f"[bold]{run['run_id']}[/bold]  kind {run['kind']}  status {run['status']}  "
                  f"git {run.get('git_revision') or '-'}  seconds {_cell(run.get('seconds'))}")
    if run.get("message"):
        console.print(f"message: {run['message']}")
    for title in ("stages", "metrics", "checkpoints", "evaluations"):
        if info[title]:
            console.print(_table(title, info[title]))
        if title == "stages" and info.get("timing"):
            console.print(timing_table(info["timing"]))
    if info["files"]:
        console.print("files:\n  " + "\n  ".join(info["files"]))
