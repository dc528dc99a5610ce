"""``care plan``: the sequence length and memory per device a config needs, checked before any work starts.

``care rl``, ``care sft`` and ``care run`` print the same table first (``preflight``) and refuse a config that does
not fit; formulas and their error in docs/plan.md.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import typer
import yaml

from care import plan as planning
from care.cli.common import state, training_config
from care.config import ConfigError, load_config, parse_overrides
from care.errors import CareError
from care.pipeline import PipelineConfig
from care.train.config import RLConfig
from care.train.sft_config import SFTConfig
from care.workspace import Workspace

PIPELINE_KEYS = {"rl", "sft", "run_sft", "run_rl", "demo", "evaluate", "workers", "name", "tiny_model_seed"}
RL_KEYS = {"rollout", "optim", "scoring", "iterations", "algo"}
SFT_KEYS = {"steps", "batch_size", "annotations", "log_every", "check_prompts", "check_max_new_tokens"}


def _kind(config: Path) -> str:
    try:
        data: Any = yaml.safe_load(config.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return "pipeline"  # load_config names the problem
    if not isinstance(data, dict):
        return "pipeline"
    keys = set(data)
    if keys & PIPELINE_KEYS:
        return "pipeline"
    if keys & RL_KEYS:
        return "rl"
    return "sft" if keys & SFT_KEYS or "model" in keys else "pipeline"


def _source(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    h, sep, w = text.lower().partition("x")
    if not sep or not h.strip().isdigit() or not w.strip().isdigit() or min(int(h), int(w)) < 1:
        raise ConfigError(f"--source-size {text!r}: expected HEIGHTxWIDTH, e.g. 1080x1920")
    return int(h), int(w)


def plans_for(cfg, workspace: Workspace, hw: planning.Hardware | None = None,
              source: tuple[int, int] | None = None) -> list[planning.Plan]:
    """The plans of a loaded RLConfig, SFTConfig or PipelineConfig."""
    hw = hw or planning.hardware()
    if isinstance(cfg, RLConfig):
        return [planning.plan_rl_config(cfg, hw, source=source)]
    if isinstance(cfg, SFTConfig):
        return [planning.plan_sft_config(cfg, hw, source=source)]
    return planning.plan_pipeline_config(cfg, hw, models_dir=workspace.models_dir, demo_dir=workspace.demo_data_dir,
                                         source=source)


def preflight(ctx: typer.Context, cfg, *, enforce: bool = True) -> None:
    """Print the plan of ``cfg`` and raise ``PlanError`` when it does not fit (before a flow starts).

    A plan that cannot be made (a hub id outside the built-in table, a model folder that is not there) is skipped
    with a line on stderr: the run then reports its own error as before.
    """
    st = state(ctx)
    out = sys.stderr if st.json else sys.stdout
    try:
        plans = plans_for(cfg, st.workspace)
    except CareError as exc:
        print(f"plan: skipped ({exc})", file=sys.stderr)
        return
    for p in plans:
        print(planning.render(p), file=out, flush=True)
    if enforce:
        planning.check(plans)
    elif not all(p.ok for p in plans):
        print("plan: does not fit, starting anyway (--ignore-plan)", file=sys.stderr)


def plan_command(
    ctx: typer.Context,
    config: Path = typer.Option(None, "--config", "-c", help="A pipeline, rl or sft config YAML (kind detected from its keys)."),
    overrides: list[str] = typer.Option(None, "--set", help="Override an option: KEY=VALUE, dotted (optim.num_processes=8)."),
    kind: str = typer.Option("auto", "--kind", help="auto, pipeline, rl or sft."),
    device_memory_gib: float = typer.Option(None, "--device-memory-gib", help="Memory per GPU of the target machine (default: this machine's GPU, else its RAM)."),
    host_memory_gib: float = typer.Option(None, "--host-memory-gib", help="Host RAM of the target machine (default: this machine's)."),
    source_size: str = typer.Option(None, "--source-size", help="HEIGHTxWIDTH of the source videos (default: the largest frame the pixel budget allows)."),
    resume: str = typer.Option(None, "--resume", help="Plan run RUN_ID with its stored config (rl or sft)."),
) -> None:
    """Show the sequence length and memory per device of a config, and whether it fits; exit 2 if it does not."""
    st = state(ctx)
    if resume:
        kind = kind if kind in ("rl", "sft") else "rl"
    elif config is None:
        raise ConfigError("give --config FILE (a pipeline, rl or sft config) or --resume RUN_ID")
    kind = _kind(config) if kind == "auto" and config is not None else kind
    if kind == "pipeline":
        cfg: Any = load_config(PipelineConfig, config, parse_overrides(overrides))
        if cfg.data_root:
            cfg = cfg.model_copy(update={"data_root": str(Path(cfg.data_root).resolve())})
    elif kind in ("rl", "sft"):
        model_cls = RLConfig if kind == "rl" else SFTConfig
        cfg = training_config(model_cls, kind, config=config, overrides=overrides, resume=resume,
                              catalog_file=st.workspace.catalog_path)
    else:
        raise ConfigError(f"--kind {kind!r}: choose auto, pipeline, rl or sft")
    hw = planning.hardware(device_memory_gib, host_memory_gib)
    plans = plans_for(cfg, st.workspace, hw, _source(source_size))
    if st.json:
        typer.echo(json.dumps([{**asdict(p), "ok": p.ok} for p in plans], indent=2, default=str))
    else:
        typer.echo("\n\n".join(planning.render(p) for p in plans))
    planning.check(plans)
