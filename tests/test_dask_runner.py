"""The ``preprocess`` flow's shards on a 2-worker Dask cluster give the same frame cache as the default runner."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from care.media import FrameSampling
from care.media.cache import decode_frames, read_entry
from care.media.preprocess import PreprocessConfig
from care.store import catalog
from care.workspace import Workspace

distributed = pytest.importorskip("distributed", reason="the dask extra (pip install -e '.[dask]') is not installed")
pytest.importorskip("prefect_dask", reason="the dask extra (pip install -e '.[dask]') is not installed")


def _cache_files(home: Path) -> dict[str, Path]:
    root = Workspace.at(home).frame_cache_dir
    return {str(p.relative_to(root)): p for p in sorted(root.rglob("*.parquet"))}


def test_dask_shards_give_the_default_cache(prefect_harness, demo_root, tmp_path, monkeypatch):
    from flows.preprocess import preprocess

    config = PreprocessConfig(data_root=str(demo_root), annotations=["L2"], shard_size=8, workers=1,
                              sampling=FrameSampling(nframes=4, max_pixels=56 * 56), shuffle_options=False)
    default = preprocess(config, home=str(tmp_path / "default"))

    # Dask workers start child processes (the decoders): they must not be daemonic
    monkeypatch.setenv("DASK_DISTRIBUTED__WORKER__DAEMON", "False")
    import dask

    with dask.config.set({"distributed.worker.daemon": False}), \
            distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                     dashboard_address=None) as cluster, distributed.Client(cluster) as client, \
            distributed.get_task_stream(client) as stream:
        on_dask = preprocess(config, home=str(tmp_path / "dask"), dask_address=cluster.scheduler_address)
    # both workers took shards: the work really spread
    assert len({task["worker"] for task in stream.data}) == 2

    assert default["shards"] == on_dask["shards"] >= 2
    for key in ("samples", "media", "ok", "quarantined", "samples_excluded"):
        assert on_dask[key] == default[key], key
    a, b = _cache_files(tmp_path / "default"), _cache_files(tmp_path / "dask")
    # identical media (the demo repeats some end-state images) share one entry: a fresh cache holds one per
    # distinct file, i.e. every decoded file less the in-run cache hits
    assert a.keys() == b.keys() and len(a) == default["ok"] - default["cache_hits"] > 0
    for name in a:
        (ta, ma), (tb, mb) = read_entry(a[name]), read_entry(b[name])
        assert ma == mb, name
        np.testing.assert_array_equal(decode_frames(ta), decode_frames(tb), err_msg=name)
    count = "select status, count(*) from videos group by 1 order by 1"
    assert catalog.query(count, path=Workspace.at(tmp_path / "dask").catalog_path) == \
        catalog.query(count, path=Workspace.at(tmp_path / "default").catalog_path)
