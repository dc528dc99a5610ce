"""State shared by every subcommand, and small output helpers."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import typer

from care.config import ConfigError, deep_merge, load_config, parse_overrides
from care.store import runs
from care.workspace import Workspace

M = TypeVar("M")


@dataclass
class CliState:
    workspace: Workspace
    json: bool = False


def state(ctx: typer.Context) -> CliState:
    obj = ctx.find_root().obj
    if not isinstance(obj, CliState):  # invoked without the root callback (e.g. in tests)
        obj = CliState(workspace=Workspace.at(None))
    return obj


def emit(ctx: typer.Context, payload: dict[str, Any], human: str) -> None:
    """Print ``payload`` as JSON under ``--json``, else the human-readable text."""
    if state(ctx).json:
        typer.echo(json.dumps(payload, indent=2, default=str))
    else:
        typer.echo(human)


def training_config(model_cls: type[M], kind: str, *, config: Path | None, overrides: list[str] | None,
                    resume: str | None, catalog_file: Path) -> M:
    """The config of a new or continued training run (``care sft`` / ``care rl``).

    ``--resume RUN`` takes the run's stored config (overrides still apply); ``--config FILE`` a new or continued
    run (the run id derives from the config). Local paths are made absolute so the stored config works from any
    directory; hub ids stay as they are.
    """
    if resume:
        base = _stored_config(resume, kind, catalog_file)
        base["run_name"] = resume
        cfg = load_config(model_cls, None, deep_merge(base, parse_overrides(overrides)))
    elif config is not None:
        cfg = load_config(model_cls, config, parse_overrides(overrides))
    else:
        raise ConfigError("give --config FILE (a new or continued run) or --resume RUN_ID")
    update = {"data_root": str(Path(cfg.data_root).resolve())}
    if Path(cfg.model).exists() or cfg.model.startswith((".", "/")):
        update["model"] = str(Path(cfg.model).resolve())
    return cfg.model_copy(update=update)


def _stored_config(run_id: str, kind: str, catalog_file: Path) -> dict:
    stored = runs.stored_config(run_id, path=catalog_file)
    if stored is None:
        raise ConfigError(f"run {run_id!r} not found in {catalog_file}; `care runs` lists the runs")
    stored_kind, config = stored
    if stored_kind != kind:
        raise ConfigError(f"run {run_id!r} is a {stored_kind} run, not an {kind} run")
    return config
