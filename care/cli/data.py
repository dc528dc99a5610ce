"""``care data ...``: generate and validate datasets."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from care.cli.common import emit

app = typer.Typer(no_args_is_help=True)


@app.command("demo")
def demo(
    ctx: typer.Context,
    out_dir: Path = typer.Argument(..., help="Folder to write the benchmark to (replaced if it exists)."),
    train: int = typer.Option(2000, "--train", help="Training rows (training_6k and training_with_cot_6k)."),
    val: int = typer.Option(200, "--val", help="Rows per validation level (L1, L2, L3)."),
    seed: int = typer.Option(0, "--seed", help="Seed: the same seed writes the same bytes."),
    hard_share: float = typer.Option(0.5, "--hard-share", help="Share of samples whose colour set varies."),
) -> None:
    """Generate the demo benchmark in the SEED-Bench-R1 layout (real h264 videos, PNG observations)."""
    from care.data.demo import make_demo_benchmark

    started = time.perf_counter()
    path = make_demo_benchmark(out_dir, train=train, val=val, seed=seed, hard_share=hard_share)
    seconds = time.perf_counter() - started
    files = {"annotations": sorted(p.name for p in (path / "annotations").iterdir()),
             "videos": sum(1 for _ in (path / "videos").rglob("*.mp4")),
             "images": sum(1 for _ in (path / "images").rglob("*.png"))}
    payload = {"data_root": str(path.resolve()), "train": train, "val": val, "seed": seed,
               "hard_share": hard_share, "seconds": round(seconds, 2), **files}
    human = (f"wrote the demo benchmark to {path} in {seconds:.1f} s: {train} training rows, {val} per level "
             f"(L1, L2, L3), {files['videos']} videos, {files['images']} images\n"
             f"annotations: {', '.join(files['annotations'])}")
    emit(ctx, payload, human)


@app.command("validate")
def validate(
    ctx: typer.Context,
    root: Path = typer.Argument(..., help="Data root with annotations/, videos/, images/."),
    strict: bool = typer.Option(False, "--strict", help="Fail on the first invalid row."),
    show: int = typer.Option(20, "--show", help="Print at most this many rejects per file."),
) -> None:
    """Load every annotation file under ROOT; print counts and rejected rows (exit status 1 if any)."""
    from care.data.annotations import load_benchmark

    results = load_benchmark(root, strict=strict)
    payload = {"data_root": str(root.resolve()), "splits": {
        split: {"samples": len(r.samples), "video_samples": sum(s.video is not None for s in r.samples),
                "rejects": [str(x) for x in r.rejects]} for split, r in results.items()}}
    lines = [f"{'split':<10} {'samples':>8} {'video':>7} {'rejects':>8}"]
    for split, r in results.items():
        lines.append(f"{split:<10} {len(r.samples):>8} {sum(s.video is not None for s in r.samples):>7} "
                     f"{len(r.rejects):>8}")
    for r in results.values():
        lines += [f"  {x}" for x in r.rejects[:show]]
        if len(r.rejects) > show:
            lines.append(f"  ... and {len(r.rejects) - show} more")
    emit(ctx, payload, "\n".join(lines))
    if any(r.rejects for r in results.values()):
        raise typer.Exit(1)
