"""``care models ...``: make and inspect models."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from care.cli.common import emit

app = typer.Typer(no_args_is_help=True)


@app.command("tiny")
def tiny(
    ctx: typer.Context,
    out_dir: Path = typer.Argument(..., help="Folder to write the model to (replaced if it exists)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random weights (same seed, same bytes)."),
    variant: str = typer.Option(
        "default", "--variant",
        help="Dimension set: 'default' (the demo's 0.35 M-parameter model) or 'vllm' (head_dim 32, which vLLM's "
             "attention needs; docs/vllm.md)."),
    data_root: Path = typer.Option(
        None, "--data-root",
        help="Train the tokenizer on this benchmark's text (a demo set is generated there if it has no "
             "annotations). Default: the built-in demo text."),
) -> None:
    """Make the tiny offline Qwen2.5-VL (random weights, BPE tokenizer from scratch, real processor)."""
    from care.data.demo import benchmark_corpus, demo_corpus, make_demo_benchmark
    from care.models.tiny import TINY_MANIFEST, TINY_VARIANTS, make_tiny_model

    if variant not in TINY_VARIANTS:
        raise typer.BadParameter(f"unknown variant {variant!r}; choose one of {sorted(TINY_VARIANTS)}",
                                 param_hint="--variant")
    generated = False
    if data_root is None:
        corpus = demo_corpus()
    else:
        if not (data_root / "annotations").is_dir():
            make_demo_benchmark(data_root)
            generated = True
        corpus = benchmark_corpus(data_root) + demo_corpus()
    path = make_tiny_model(out_dir, corpus=corpus, seed=seed, **TINY_VARIANTS[variant])
    manifest = json.loads((path / TINY_MANIFEST).read_text())
    payload = {"model_dir": str(path.resolve()), "seed": seed, "variant": variant, "corpus_texts": len(corpus),
               "data_root": str(data_root) if data_root else None, "generated_demo": generated,
               "parameters": manifest["parameters"], "vocab_size": manifest["vocab_size"]}
    human = (f"wrote tiny Qwen2.5-VL to {path} ({manifest['parameters']:,} parameters, vocabulary "
             f"{manifest['vocab_size']}, variant {variant}, seed {seed}; tokenizer trained on {len(corpus)} texts"
             + (f" from {data_root}" if data_root else " of built-in demo text") + ")"
             + (f"\ngenerated the demo benchmark at {data_root}" if generated else ""))
    emit(ctx, payload, human)
