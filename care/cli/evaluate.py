"""``care eval``: evaluate a checkpoint on the validation levels, or on a transfer benchmark (the ``evaluate``
flow)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import typer

from care.cli.common import state
from care.cli.runtime import prefect_env
from care.config import load_config, parse_overrides
from care.data.benchmarks import get_benchmark
from care.errors import CareError
from care.eval_schema import LIKELIHOOD_POLICY, LIKELIHOOD_REFERENCE, EvalConfig


def absolute_paths(config: EvalConfig) -> EvalConfig:
    """Local paths made absolute so stored configs and cache keys do not depend on the directory (hub ids kept)."""
    update = {"data_root": str(Path(config.data_root).resolve())}
    for field in ("checkpoint", "likelihood_model"):
        value = getattr(config, field)
        if value in (LIKELIHOOD_POLICY, LIKELIHOOD_REFERENCE) and field == "likelihood_model":
            continue
        if Path(value).exists() or value.startswith((".", "/", "~")):
            update[field] = str(Path(value).expanduser().resolve())
    return config.model_copy(update=update)


def _json_safe(value):
    """NaN (an empty level, nothing judged) becomes null, so --json output is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def _benchmark_options(given: dict, benchmark: str, from_file: bool) -> None:
    """Check the benchmark name; default its data root to data/<name> (unless a config file sets one) and check
    that the root holds it, so a missing download is a one-line message before any flow starts."""
    spec = get_benchmark(benchmark)
    given["benchmark"] = benchmark
    if "data_root" not in given and not from_file:
        given["data_root"] = str(Path("data") / benchmark)
    if "data_root" in given:
        spec.check_root(given["data_root"])


def eval_command(
    ctx: typer.Context,
    checkpoint_arg: str = typer.Argument(None, metavar="CHECKPOINT", show_default=False,
                                         help="What to evaluate (the same as --checkpoint)."),
    checkpoint: str = typer.Option(None, "--checkpoint", "-k",
                                   help="Checkpoint folder (with policy/), model folder or hub id."),
    benchmark: str = typer.Option(None, "--benchmark", "-b",
                                  help="A transfer benchmark (mvbench, videomme, mmvu, vsibench, tempcompass, videommmu) in its published layout under "
                                  "--data-root (default data/<name>); levels are then its categories."),
    levels: str = typer.Option(None, "--levels", "-l", help="Comma-separated levels, e.g. L1,L2,L3 (default all three)."),
    data_root: str = typer.Option(None, "--data-root", "-d", help="Dataset root (default: the config's)."),
    label: str = typer.Option(None, "--label", help="Name of this evaluation in the run (e.g. after-rl)."),
    config: Path = typer.Option(None, "--config", "-c", help="Eval config YAML (the EvalConfig options)."),
    overrides: list[str] = typer.Option(None, "--set", help="Override an option: KEY=VALUE, dotted (decoding.max_new_tokens=64)."),
) -> None:
    """Evaluate a checkpoint: near-greedy answers per level, accuracy with Wilson CIs, consistency per judge."""
    st = state(ctx)
    given = parse_overrides(overrides)
    if checkpoint_arg and checkpoint and checkpoint_arg != checkpoint:
        raise CareError(f"two checkpoints given ({checkpoint_arg} and --checkpoint {checkpoint}); give one")
    checkpoint = checkpoint or checkpoint_arg
    for key, value in (("checkpoint", checkpoint), ("data_root", data_root), ("label", label)):
        if value is not None:
            given[key] = value
    if levels:
        given["levels"] = [lv.strip() for lv in levels.split(",") if lv.strip()]
    if benchmark:
        _benchmark_options(given, benchmark, from_file=config is not None)
    cfg = absolute_paths(load_config(EvalConfig, config, given))
    prefect_env(st.workspace)
    from flows.evaluate import evaluate

    result = evaluate(cfg, home=str(st.workspace.root), show_table=not st.json)
    if st.json:
        typer.echo(json.dumps(_json_safe(result), indent=2, default=str))
