"""``care sft``: run or continue supervised fine-tuning on the CoT training file (the ``sft`` flow)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from care.cli.common import state
from care.cli.runtime import prefect_env
from care.config import ConfigError, deep_merge, load_config, parse_overrides
from care.store import catalog
from care.train.sft_config import SFTConfig


def absolute_paths(config: SFTConfig) -> SFTConfig:
    """Local paths made absolute, so the stored run config works from any directory (hub ids stay as they are)."""
    model = Path(config.model)
    update = {"data_root": str(Path(config.data_root).resolve())}
    if model.exists() or config.model.startswith((".", "/")):
        update["model"] = str(model.resolve())
    return config.model_copy(update=update)


def stored_config(run_id: str, catalog_file: Path) -> dict:
    rows = catalog.query("SELECT config, kind FROM runs WHERE run_id = ?", [run_id], path=catalog_file)
    if not rows:
        raise ConfigError(f"run {run_id!r} not found in {catalog_file}; `care sql \"select * from runs\"` lists the runs")
    if rows[0][1] != "sft":
        raise ConfigError(f"run {run_id!r} is a {rows[0][1]} run, not an sft run")
    return json.loads(rows[0][0])


def sft_command(
    ctx: typer.Context,
    config: Path = typer.Option(None, "--config", "-c", help="SFT config YAML (see care/configs/sft_demo.yaml)."),
    overrides: list[str] = typer.Option(None, "--set", help="Override an option: KEY=VALUE, dotted (frames.nframes=4)."),
    resume: str = typer.Option(None, "--resume", help="Continue run RUN_ID with its stored config."),
) -> None:
    """Supervised fine-tuning on the CoT file (loss on the assistant turn), resumable from its checkpoints."""
    st = state(ctx)
    if resume:
        base = stored_config(resume, st.workspace.catalog_path)
        base["run_name"] = resume
        cfg = load_config(SFTConfig, None, deep_merge(base, parse_overrides(overrides)))
    elif config is not None:
        cfg = load_config(SFTConfig, config, parse_overrides(overrides))
    else:
        raise ConfigError("give --config FILE (a new or continued run) or --resume RUN_ID")
    cfg = absolute_paths(cfg)
    prefect_env(st.workspace)
    from flows.sft import sft

    result = sft(cfg, home=str(st.workspace.root))
    if st.json:
        typer.echo(json.dumps(result, indent=2))
