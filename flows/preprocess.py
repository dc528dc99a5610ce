"""The ``preprocess`` flow: validate annotations, decode the distinct media in shards into the frame cache.

Task runner: a one-thread ``ThreadPoolTaskRunner`` runs the shard tasks one after another, and each shard
decodes in its own pool of ``config.workers`` processes (``care.media.workers``: spawn, crash-isolated).
Processes give real parallel decoding without shipping frames through Prefect; one shard at a time keeps
the process count at ``workers`` (= the cores) instead of multiplying it. prefect-dask can replace the runner
to spread shards over machines.
"""

from __future__ import annotations

import uuid

from prefect import flow, unmapped
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from care.media.preprocess import PreprocessConfig, format_summary, shards, summarize
from care.workspace import Workspace
from tasks.preprocess import cache_shard, refresh_frames_view, validate_annotations


@flow(name="preprocess", task_runner=ThreadPoolTaskRunner(max_workers=1), log_prints=True)
def preprocess(config: PreprocessConfig, home: str | None = None) -> dict:
    """Validate, cache frames, record the catalog; print and return the summary."""
    ws = Workspace.at(home).ensure()
    run_id = flow_run.get_id() or uuid.uuid4().hex
    catalog_file, cache_dir = str(ws.catalog_path), str(ws.frame_cache_dir)
    validation = validate_annotations(config, run_id, catalog_file)
    futures = cache_shard.map(shards(validation["media"], config.shard_size), sampling=unmapped(config.sampling),
                              cache_dir=cache_dir, data_root=config.data_root, workers=config.workers,
                              run_id=run_id, catalog_file=catalog_file)
    reports = futures.result()
    refresh_frames_view(cache_dir, catalog_file)
    summary = summarize(reports, validation, run_id)
    print(format_summary(summary))
    return summary
