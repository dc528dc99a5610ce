"""``care compare``: GRPO vs GRPO-CARE over SFT seeds x RL seeds, with paired differences and bootstrap CIs."""

from __future__ import annotations

from pathlib import Path

import typer

from care.cli.common import state
from care.cli.run import default_config_path
from care.cli.runtime import prefect_env
from care.compare import CompareConfig, to_json
from care.config import load_config, parse_overrides, validate_config
from care.pipeline import PipelineConfig


def compare_command(
    ctx: typer.Context,
    algos: str = typer.Option("grpo,grpo_care", help="Comma-separated algorithms (care.algo.algorithms): grpo_care, grpo (the paper's baseline, KL 0.1), grpo_nokl, dr_grpo, rloo."),
    seeds: int = typer.Option(5, min=1, help="Number of RL seeds (0..N-1), run from every SFT checkpoint."),
    sft_seeds: int = typer.Option(1, "--sft-seeds", min=1, help="Number of SFT seeds (the pipeline's seed S, then "
                                  "S+1 .. S+M-1), each its own SFT checkpoint. Use >= 2 (--sft-seeds 2) "
                                  "so the interval covers the SFT checkpoint too: each adds one SFT run (~2 min on 2 cores for the demo) and "
                                  "len(algos) x N RL arms (~1-3 min each there), so 2 x 2 x 5 = 20 arms took 27 min "
                                  "on a 2-core EPYC; 1 SFT seed makes the CI conditional on that checkpoint."),
    config: Path = typer.Option(None, "--config", "-c", help="Pipeline config YAML (default: the demo)."),
    overrides: list[str] = typer.Option(None, "--set", help="Override a pipeline option: KEY=VALUE, dotted."),
) -> None:
    """Run RL with each algorithm and RL seed from each SFT seed's checkpoint; report accuracy and consistency
    per level: each algorithm's spread (mean ± std, min and max) and GRPO-CARE minus each other algorithm, paired on
    (sft_seed, rl_seed), with a 95 % bootstrap CI (* = the CI excludes 0). Re-runs reuse every finished run."""
    st = state(ctx)
    pipeline = load_config(PipelineConfig, config or default_config_path(), parse_overrides(overrides))
    cfg = validate_config(CompareConfig, {"pipeline": pipeline, "algos": [a.strip() for a in algos.split(",") if a.strip()],
                                          "seeds": list(range(seeds)),
                                          "sft_seeds": [pipeline.seed + i for i in range(sft_seeds)]}, "care compare")
    prefect_env(st.workspace)
    from flows.compare import compare

    result = compare(cfg, home=str(st.workspace.root))
    if st.json:
        typer.echo(to_json(result))
