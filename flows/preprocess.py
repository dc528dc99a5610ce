"""The ``preprocess`` flow: validate annotations, decode the distinct media in shards into the frame cache.

Task runner: a one-thread ``ThreadPoolTaskRunner`` runs the shard tasks one after another, and each shard
decodes in its own pool of ``config.workers`` processes (``care.media.workers``: spawn, crash-isolated).
Processes give real parallel decoding without shipping frames through Prefect; one shard at a time keeps
the process count at ``workers`` (= the cores) instead of multiplying it.

Scale-out (opt-in): with ``dask_address`` (a Dask scheduler, ``tcp://host:8786``) the shards run as a subflow on
prefect-dask's ``DaskTaskRunner`` instead, one shard per Dask worker at a time, each still decoding in its own
``config.workers`` processes; Dask workers must therefore be non-daemonic (``dask worker --no-nanny`` or
``DASK_DISTRIBUTED__WORKER__DAEMON=False``). Every worker must see ``data_root`` and the workspace at the same
paths (a shared filesystem). The cache is content-keyed, so the produced files are the same either way.
"""

from __future__ import annotations

import uuid

from prefect import flow, unmapped
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from care.media.preprocess import PreprocessConfig, format_summary, shards, summarize
from care.workspace import Workspace
from tasks.preprocess import cache_shard, refresh_frames_view, validate_annotations


@flow(name="preprocess-shards-dask", log_prints=True)
def _shards_on_dask(items: list, config: PreprocessConfig, cache_dir: str, run_id: str, catalog_file: str) -> list:
    futures = cache_shard.map(items, sampling=unmapped(config.sampling), cache_dir=cache_dir,
                              data_root=config.data_root, workers=config.workers, run_id=run_id,
                              catalog_file=catalog_file)
    return futures.result()


def _cache_on_dask(address: str, *args) -> list:
    from prefect_dask import DaskTaskRunner  # the optional `dask` extra

    return _shards_on_dask.with_options(task_runner=DaskTaskRunner(address=address))(*args)


@flow(name="preprocess", task_runner=ThreadPoolTaskRunner(max_workers=1), log_prints=True)
def preprocess(config: PreprocessConfig, home: str | None = None, dask_address: str | None = None) -> dict:
    """Validate, cache frames, record the catalog; print and return the summary.

    ``dask_address``: run the shards on that Dask cluster (see the module docstring); None = in this process.
    """
    ws = Workspace.at(home).ensure()
    run_id = flow_run.get_id() or uuid.uuid4().hex
    catalog_file, cache_dir = str(ws.catalog_path), str(ws.frame_cache_dir)
    validation = validate_annotations(config, run_id, catalog_file)
    items = shards(validation["media"], config.shard_size)
    if dask_address:
        reports = _cache_on_dask(dask_address, items, config, cache_dir, run_id, catalog_file)
    else:
        futures = cache_shard.map(items, sampling=unmapped(config.sampling), cache_dir=cache_dir,
                                  data_root=config.data_root, workers=config.workers, run_id=run_id,
                                  catalog_file=catalog_file)
        reports = futures.result()
    refresh_frames_view(cache_dir, catalog_file)
    summary = summarize(reports, validation, run_id)
    print(format_summary(summary))
    return summary
