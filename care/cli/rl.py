"""``care rl``: run or continue a GRPO / GRPO-CARE run (the ``rl`` flow)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from care.cli.common import state, training_config
from care.cli.plan import preflight
from care.cli.runtime import prefect_env
from care.train.config import RLConfig


def rl_command(
    ctx: typer.Context,
    config: Path = typer.Option(None, "--config", "-c", help="RL config YAML (see care/configs/demo.yaml, key 'rl')."),
    overrides: list[str] = typer.Option(None, "--set", help="Override an option: KEY=VALUE, dotted (optim.learning_rate=1e-5)."),
    resume: str = typer.Option(None, "--resume", help="Continue run RUN_ID with its stored config."),
    ignore_plan: bool = typer.Option(False, "--ignore-plan", help="Start even when the plan (care plan) says the config does not fit."),
) -> None:
    """Run GRPO-CARE (or the GRPO baseline): rollouts -> scoring -> optimisation, each a cached Prefect task."""
    st = state(ctx)
    cfg = training_config(RLConfig, "rl", config=config, overrides=overrides, resume=resume,
                          catalog_file=st.workspace.catalog_path)
    preflight(ctx, cfg, enforce=not ignore_plan)  # refuses a config that cannot fit, before any work
    prefect_env(st.workspace)
    from flows.rl import rl

    result = rl(cfg, home=str(st.workspace.root))
    if st.json:
        typer.echo(json.dumps(result, indent=2))
