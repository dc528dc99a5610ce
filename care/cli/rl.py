"""``care rl``: run or continue a GRPO / GRPO-CARE run (the ``rl`` flow)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from care.cli.common import state
from care.cli.runtime import prefect_env
from care.config import ConfigError, deep_merge, load_config, parse_overrides
from care.store import catalog
from care.train.config import RLConfig


def absolute_paths(config: RLConfig) -> RLConfig:
    """Local paths made absolute, so the stored run config works from any directory (hub ids stay as they are)."""
    model = Path(config.model)
    update = {"data_root": str(Path(config.data_root).resolve())}
    if model.exists() or config.model.startswith((".", "/")):
        update["model"] = str(model.resolve())
    return config.model_copy(update=update)


def stored_config(run_id: str, catalog_file: Path) -> dict:
    rows = catalog.query("SELECT config, kind FROM runs WHERE run_id = ?", [run_id], path=catalog_file)
    if not rows:
        raise ConfigError(f"run {run_id!r} not found in {catalog_file}; `care runs` lists the runs")
    if rows[0][1] != "rl":
        raise ConfigError(f"run {run_id!r} is a {rows[0][1]} run, not an rl run")
    return json.loads(rows[0][0])


def rl_command(
    ctx: typer.Context,
    config: Path = typer.Option(None, "--config", "-c", help="RL config YAML (see care/configs/demo.yaml, key 'rl')."),
    overrides: list[str] = typer.Option(None, "--set", help="Override an option: KEY=VALUE, dotted (optim.learning_rate=1e-5)."),
    resume: str = typer.Option(None, "--resume", help="Continue run RUN_ID with its stored config."),
) -> None:
    """Run GRPO-CARE (or the GRPO baseline): rollouts -> scoring -> optimisation, each a cached Prefect task."""
    st = state(ctx)
    if resume:
        base = stored_config(resume, st.workspace.catalog_path)
        base["run_name"] = resume
        cfg = load_config(RLConfig, None, deep_merge(base, parse_overrides(overrides)))
    elif config is not None:
        cfg = load_config(RLConfig, config, parse_overrides(overrides))
    else:
        raise ConfigError("give --config FILE (a new or continued run) or --resume RUN_ID")
    cfg = absolute_paths(cfg)
    prefect_env(st.workspace)
    from flows.rl import rl

    result = rl(cfg, home=str(st.workspace.root))
    if st.json:
        typer.echo(json.dumps(result, indent=2))
