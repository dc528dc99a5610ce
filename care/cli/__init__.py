"""The ``care`` command.

Global options (before the subcommand): ``--home`` / ``CARE_HOME`` (workspace root, default ``./.care``) and
``--json`` (machine-readable output where a command supports it). Subcommands live in one module each under
``care/cli/`` and are registered below. Commands that run a pipeline stage import ``flows`` lazily, so
``care --help`` stays fast and the library below never imports Prefect.
"""

from __future__ import annotations

import sys

import typer

from care.cli import compare as compare_cli
from care.cli import data as data_cli
from care.cli import evaluate as evaluate_cli
from care.cli import export as export_cli
from care.cli import models as models_cli
from care.cli import plan as plan_cli
from care.cli import preprocess as preprocess_cli
from care.cli import rl as rl_cli
from care.cli import run as run_cli
from care.cli import runs as runs_cli
from care.cli import sft as sft_cli
from care.cli import sql as sql_cli
from care.cli.common import CliState
from care.errors import CareError
from care.workspace import Workspace

app = typer.Typer(
    name="care",
    help="GRPO-CARE post-training of video VLMs: data -> SFT -> RL -> eval, as Prefect flows.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _global_options(
    ctx: typer.Context,
    home: str = typer.Option(None, "--home", envvar="CARE_HOME", help="Workspace root (default ./.care)."),
    json_output: bool = typer.Option(False, "--json", help="Machine-readable JSON output where supported."),
) -> None:
    ctx.obj = CliState(workspace=Workspace.at(home), json=json_output)


# listed in `care --help` in this order: the main job first, then the stages, then inspection and tools
app.command("run")(run_cli.run_command)
app.command("compare")(compare_cli.compare_command)
app.command("preprocess")(preprocess_cli.preprocess_command)
app.command("sft")(sft_cli.sft_command)
app.command("rl")(rl_cli.rl_command)
app.command("plan")(plan_cli.plan_command)
app.command("eval")(evaluate_cli.eval_command)
app.command("export")(export_cli.export_command)
app.command("runs")(runs_cli.runs_command)
app.command("show")(runs_cli.show_command)
app.command("sql")(sql_cli.sql_command)
app.add_typer(models_cli.app, name="models", help="Make and inspect models (e.g. the tiny offline Qwen2.5-VL).")
app.add_typer(data_cli.app, name="data", help="Generate and validate datasets (e.g. the demo benchmark).")


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app; user errors become one line on stderr and exit status 2."""
    try:
        # without standalone mode, click returns (not raises) the code of a `typer.Exit` inside a command
        code = app(args=argv, standalone_mode=False)
    except CareError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(1)
    except Exception as exc:  # click usage errors carry their own formatting
        import click

        # typer >= 0.25 raises its own copy of click's exceptions (typer.TyperException), not click's
        usage_errors = (click.ClickException, *[c for c in (getattr(typer, "TyperException", None),) if c])
        if isinstance(exc, usage_errors) and hasattr(exc, "show"):
            exc.show()
            sys.exit(getattr(exc, "exit_code", 2))
        raise
    if isinstance(code, int) and code != 0:
        sys.exit(code)
