"""``care preprocess``: decode the dataset's videos and images into the frame cache (the ``preprocess`` flow)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from care.cli.common import state
from care.cli.runtime import prefect_env
from care.config import ConfigError, deep_merge, load_config, parse_overrides, validate_config
from care.media.preprocess import PreprocessConfig

SAMPLING_FLAGS = ("fps", "min_frames", "max_frames", "nframes", "min_pixels", "max_pixels", "image_min_pixels",
                  "image_max_pixels", "codec", "jpeg_quality")


def preprocess_config(config_file: Path | None, *, overrides: list[str] | None, data_root: str | None,
                      annotations: list[str], flags: dict) -> PreprocessConfig:
    """The options of one ``care preprocess``: the config file, then the flags in ``flags`` and the data root and
    annotations given, then ``--set``. The data root is made absolute; without annotations named anywhere, every
    standard annotation file present under the data root is taken."""
    from care.data.schema import ANNOTATION_FILES

    given: dict = {name: flags[name] for name in ("shard_size", "workers") if name in flags}
    sampling = {name: flags[name] for name in SAMPLING_FLAGS if name in flags}
    if sampling:
        given["sampling"] = sampling
    if data_root is not None:
        given["data_root"] = data_root
    if annotations:
        given["annotations"] = list(annotations)
    merged = deep_merge(given, parse_overrides(overrides))
    if config_file is None:
        if "data_root" not in merged:
            raise ConfigError("give --data-root DIR (or --config FILE with a data_root)")
        config = validate_config(PreprocessConfig, merged, "care preprocess")
    else:
        config = load_config(PreprocessConfig, config_file, merged)
    root = Path(config.data_root).resolve()
    update: dict = {"data_root": str(root)}
    if "annotations" not in config.model_fields_set:
        update["annotations"] = [s for s, f in ANNOTATION_FILES.items() if (root / "annotations" / f).is_file()]
    return config.model_copy(update=update)


def preprocess_command(
    ctx: typer.Context,
    config_file: Path = typer.Option(
        None, "--config", "-c",
        help="Preprocess config YAML (care.media.preprocess.PreprocessConfig: data_root, annotations, sampling, "
             "shard_size, workers). Flags given on the command line override it."),
    overrides: list[str] = typer.Option(None, "--set", help="Override an option: KEY=VALUE, dotted (sampling.fps=1)."),
    data_root: str = typer.Option(None, "--data-root", "-d",
                                  help="Dataset root (annotations/, videos/, images/); required without --config."),
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
    values = dict(locals())

    def typed(name: str) -> bool:  # on the command line, not a default
        source = ctx.get_parameter_source(name)
        return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")

    # with a config file a flag counts only when typed; without one, the flags' defaults are the options
    flags = {name: values[name] for name in (*SAMPLING_FLAGS, "shard_size", "workers")
             if config_file is None or typed(name)}
    config = preprocess_config(config_file, overrides=overrides, data_root=data_root,
                               annotations=[*(annotations or []), *(extra or [])], flags=flags)
    prefect_env(st.workspace)
    from flows.preprocess import preprocess

    summary = preprocess(config, home=str(st.workspace.root))
    if st.json:
        typer.echo(json.dumps(summary, indent=2))
