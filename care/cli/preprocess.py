"""``care preprocess``: decode the dataset's videos and images into the frame cache (the ``preprocess`` flow)."""

from __future__ import annotations

import json

import typer

from care.cli.common import state
from care.cli.runtime import prefect_env
from care.config import validate_config
from care.media.preprocess import PreprocessConfig


def preprocess_command(
    ctx: typer.Context,
    data_root: str = typer.Option(..., "--data-root", "-d", help="Dataset root (annotations/, videos/, images/)."),
    annotations: list[str] = typer.Option(
        None, "--annotations", "-a",
        help="Annotation file(s): paths, names in <data-root>/annotations, or splits (train, L1, ...); "
             "repeat or list after one flag. Default: every standard file present."),
    extra: list[str] = typer.Argument(None, hidden=True),
    fps: float = typer.Option(2.0, help="Target sampling rate (frames per second)."),
    min_frames: int = typer.Option(4, help="Fewest frames per video."),
    max_frames: int = typer.Option(16, help="Most frames per video."),
    nframes: int = typer.Option(None, help="Exact frame count (overrides fps/min/max)."),
    min_pixels: int = typer.Option(28 * 28, help="Smallest pixel count of a video frame."),
    max_pixels: int = typer.Option(56 * 56, help="Largest pixel count of a video frame."),
    image_min_pixels: int = typer.Option(28 * 28, help="Smallest pixel count of the image."),
    image_max_pixels: int = typer.Option(56 * 56, help="Largest pixel count of the image."),
    codec: str = typer.Option("raw", help="Frame storage: raw or jpeg."),
    jpeg_quality: int = typer.Option(90, help="JPEG quality (codec jpeg)."),
    shard_size: int = typer.Option(64, help="Media files per decode task."),
    workers: int = typer.Option(2, help="Decoding processes."),
) -> None:
    """Validate annotations, decode sampled frames into the Parquet frame cache, quarantine bad media."""
    st = state(ctx)
    from pathlib import Path

    from care.data.schema import ANNOTATION_FILES

    names = [*(annotations or []), *(extra or [])]
    if not names:
        names = [s for s, f in ANNOTATION_FILES.items() if (Path(data_root) / "annotations" / f).is_file()]
    sampling = dict(fps=fps, min_frames=min_frames, max_frames=max_frames, nframes=nframes, min_pixels=min_pixels,
                    max_pixels=max_pixels, image_min_pixels=image_min_pixels, image_max_pixels=image_max_pixels,
                    codec=codec, jpeg_quality=jpeg_quality)
    config = validate_config(PreprocessConfig, {
        "data_root": str(Path(data_root).resolve()), "annotations": names, "sampling": sampling,
        "shard_size": shard_size, "workers": workers}, "care preprocess")
    prefect_env(st.workspace)
    from flows.preprocess import preprocess

    summary = preprocess(config, home=str(st.workspace.root))
    if st.json:
        typer.echo(json.dumps(summary, indent=2))
