"""``care run``: the whole pipeline (data -> preprocess -> SFT -> RL -> eval); the default config is the demo."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import typer

from care.cli.common import state
from care.cli.plan import preflight
from care.cli.runtime import prefect_env
from care.config import load_config, parse_overrides
from care.pipeline import PipelineConfig


def default_config_path() -> Path:
    return Path(str(resources.files("care") / "configs" / "demo.yaml"))


def run_command(
    ctx: typer.Context,
    config: Path = typer.Option(None, "--config", "-c", help="Pipeline config YAML (default: the demo, care/configs/demo.yaml)."),
    overrides: list[str] = typer.Option(None, "--set", help="Override an option: KEY=VALUE, dotted (rl.iterations=10)."),
    ignore_plan: bool = typer.Option(False, "--ignore-plan", help="Start even when the plan (care plan) says the config does not fit."),
) -> None:
    """Run the whole pipeline; finished stages are reused on a second run."""
    st = state(ctx)
    cfg = load_config(PipelineConfig, config or default_config_path(), parse_overrides(overrides))
    if cfg.data_root:
        cfg = cfg.model_copy(update={"data_root": str(Path(cfg.data_root).resolve())})
    preflight(ctx, cfg, enforce=not ignore_plan)  # refuses a config that cannot fit, before any work
    prefect_env(st.workspace)
    from flows.pipeline import pipeline

    result = pipeline(cfg, home=str(st.workspace.root))
    if st.json:
        typer.echo(json.dumps(result, indent=2, default=str))
