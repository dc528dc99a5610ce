"""Prefect tasks of the ``preprocess`` flow: thin wrappers over ``care.media`` and ``care.store``.

They take and return paths and small JSON manifests, never frames. ``cache_shard`` is cached by the content
of its shard (``shard_fingerprint``), so re-running the flow skips shards whose files and parameters have not
changed, and is retried only on IO errors that can pass (``OSError`` other than a missing file, or a catalog lock).
"""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from tqdm import tqdm

from care.data.annotations import load_annotations
from care.data.benchmarks import load_levels
from care.media.frame_cache import FrameCache
from care.media.preprocess import PreprocessConfig, resolve_annotation, sample_media, shard_fingerprint
from care.media.sampling import FrameSampling
from care.media.workers import cache_many
from care.store import media
from tasks.common import JSON_RESULTS, is_transient


@task(name="validate-annotations", retries=2, retry_delay_seconds=1, retry_condition_fn=is_transient)
def validate_annotations(config: PreprocessConfig, run_id: str, catalog_file: str) -> dict:
    """Load and validate each annotation file; record rejects in the catalog; return a small manifest."""
    logger = get_run_logger()
    samples, rejects = [], []
    if config.benchmark:  # one published layout, read once; its levels picked from it
        loaded = load_levels(config.benchmark, config.data_root, config.annotations)
        samples, rejects = loaded.samples, loaded.rejects
        logger.info("%s: %d samples, %d rows rejected", config.benchmark, len(samples), len(rejects))
    for name in [] if config.benchmark else config.annotations:
        path = resolve_annotation(name, config.data_root)
        loaded = load_annotations(path, config.data_root, seed=config.seed, shuffle_options=config.shuffle_options)
        samples += loaded.samples
        rejects += loaded.rejects
        logger.info("%s: %d samples, %d rows rejected", path.name, len(loaded.samples), len(loaded.rejects))
    media.record_rejects([(r.file, r.line, r.reason) for r in rejects], run_id=run_id, path=catalog_file)
    return {
        "n_samples": len(samples), "n_rejected": len(rejects),
        "sample_media": [{"sample_id": s.sample_id, "split": s.split,
                          "media": [p for p, _ in sample_media(s, config.data_root)]} for s in samples],
        "media": [list(m) for m in dict.fromkeys(
            (p, k) for s in samples for p, k in sample_media(s, config.data_root))],
    }


def _shard_key(context, parameters) -> str:
    sampling = parameters["sampling"]
    items = [tuple(i) for i in parameters["items"]]
    return f"preprocess-shard-{shard_fingerprint(items, sampling)}-{Path(parameters['cache_dir']).resolve()}"


@task(name="cache-shard", cache_key_fn=_shard_key, retries=2, retry_delay_seconds=2,
      retry_condition_fn=is_transient, **JSON_RESULTS)
def cache_shard(items: list[list[str]], sampling: FrameSampling, cache_dir: str, data_root: str, workers: int,
                run_id: str, catalog_file: str) -> dict:
    """Decode one shard into the frame cache in worker processes; record every file in ``videos``."""
    cache = FrameCache(cache_dir, sampling, data_root)
    with tqdm(total=len(items), desc="decoding", unit="file", leave=False) as bar:
        results = cache_many([tuple(i) for i in items], cache, workers, on_result=lambda _: bar.update())
    media.record_media(results, data_root=data_root, run_id=run_id, path=catalog_file)
    slim = [{k: r[k] for k in ("path", "kind", "status", "reason", "cache_hit")} for r in results]
    return {"run_id": run_id, "results": slim}


@task(name="refresh-frames-view", retries=2, retry_delay_seconds=1, retry_condition_fn=is_transient)
def refresh_frames_view(cache_dir: str, catalog_file: str) -> bool:
    return media.refresh_frames_view(cache_dir, path=catalog_file)
