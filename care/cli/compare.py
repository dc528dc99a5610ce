"""``care compare``: GRPO vs GRPO-CARE from the same SFT checkpoint, over several seeds."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from care.cli.common import state
from care.cli.run import default_config_path
from care.cli.runtime import prefect_env
from care.compare import CompareConfig
from care.config import load_config, parse_overrides
from care.pipeline import PipelineConfig


def compare_command(
    ctx: typer.Context,
    algos: str = typer.Option("grpo,grpo_care", help="Comma-separated algorithms (care.algo.algorithms): grpo_care, grpo (the paper's baseline, KL 0.1), grpo_nokl, dr_grpo, rloo."),
    seeds: int = typer.Option(3, min=1, help="Number of RL seeds (0..N-1)."),
    config: Path = typer.Option(None, "--config", "-c", help="Pipeline config YAML (default: the demo)."),
    overrides: list[str] = typer.Option(None, "--set", help="Override a pipeline option: KEY=VALUE, dotted."),
) -> None:
    """Run RL with each algorithm and seed from one shared SFT checkpoint; report accuracy and consistency
    per level side by side with the seed spread."""
    st = state(ctx)
    pipeline = load_config(PipelineConfig, config or default_config_path(), parse_overrides(overrides))
    cfg = CompareConfig(pipeline=pipeline, algos=[a.strip() for a in algos.split(",") if a.strip()],
                        seeds=list(range(seeds)))
    prefect_env(st.workspace)
    from flows.compare import compare

    result = compare(cfg, home=str(st.workspace.root))
    if st.json:
        typer.echo(json.dumps(result, indent=2, default=str))
