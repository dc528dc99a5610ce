"""State shared by every subcommand, and small output helpers."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import typer

from care.workspace import Workspace


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
