"""``care export CHECKPOINT OUT``: a checkpoint (or a run's newest one) as a Hugging Face model folder."""

from __future__ import annotations

from pathlib import Path

import typer

from care.cli.common import emit, state


def export_command(
    ctx: typer.Context,
    checkpoint: str = typer.Argument(..., help="A checkpoint folder, or a run id (its newest complete checkpoint)."),
    out: Path = typer.Argument(..., help="Folder to write the Hugging Face model to."),
    dtype: str = typer.Option("bfloat16", "--dtype", help="bfloat16 (serving) or float32 (the fp32 master weights)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty OUT."),
    push_to_hub: str = typer.Option(None, "--push-to-hub", help="Also upload to this Hub repo (network and token)."),
) -> None:
    """Export a training checkpoint: consolidated safetensors, processor, chat template, generation config."""
    from care.train.export import export_checkpoint, resolve_checkpoint
    from care.train.export import push_to_hub as push

    source = resolve_checkpoint(checkpoint, state(ctx).workspace.runs_dir)
    result = export_checkpoint(source, out, dtype=dtype, overwrite=overwrite)
    if push_to_hub:
        result["hub_commit"] = push(out, push_to_hub)
    human = (f"exported {source} (step {result['step']}, iteration {result['iteration']}) to {result['out']}: "
             f"{result['parameters']:,} parameters in {dtype}, {result['bytes'] / 1e6:.1f} MB"
             + (f"; pushed to {push_to_hub}" if push_to_hub else ""))
    emit(ctx, result, human)
