"""``care sft``: run or continue supervised fine-tuning on the CoT training file (the ``sft`` flow)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from care.cli.common import state, training_config
from care.cli.plan import preflight
from care.cli.runtime import prefect_env
from care.train.sft_config import SFTConfig


def sft_command(
    ctx: typer.Context,
    config: Path = typer.Option(None, "--config", "-c", help="SFT config YAML (see care/configs/sft_demo.yaml)."),
    overrides: list[str] = typer.Option(None, "--set", help="Override an option: KEY=VALUE, dotted (frames.nframes=4)."),
    resume: str = typer.Option(None, "--resume", help="Continue run RUN_ID with its stored config."),
    ignore_plan: bool = typer.Option(False, "--ignore-plan", help="Start even when the plan (care plan) says the config does not fit."),
) -> None:
    """Supervised fine-tuning on the CoT file (loss on the assistant turn), resumable from its checkpoints."""
    st = state(ctx)
    cfg = training_config(SFTConfig, "sft", config=config, overrides=overrides, resume=resume,
                          catalog_file=st.workspace.catalog_path)
    preflight(ctx, cfg, enforce=not ignore_plan)  # refuses a config that cannot fit, before any work
    prefect_env(st.workspace)
    from flows.sft import sft

    result = sft(cfg, home=str(st.workspace.root))
    if st.json:
        typer.echo(json.dumps(result, indent=2))
