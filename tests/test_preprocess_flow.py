"""The ``preprocess`` flow under a real Prefect server: quarantine, rejects, catalog, re-run skips shards."""

from __future__ import annotations

import json
import shutil

import pytest

from care.media import FrameCache, FrameSampling
from care.media.dataset import FrameDataset
from care.media.preprocess import PreprocessConfig, resolve_annotation, shard_fingerprint
from care.media.synth import write_video
from care.store import catalog
from care.workspace import Workspace
from tasks.preprocess import is_transient


@pytest.fixture
def data_root(demo_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(demo_root, root)
    rows = [json.loads(line) for line in (root / "annotations" / "validation_L1.jsonl").read_text().splitlines()]
    video_rows = [r for r in rows if r.get("task_progress_metadata")]
    broken = root / "videos" / video_rows[0]["video_source"] / video_rows[0]["video_basename"]
    broken.write_bytes(b"")
    with (root / "annotations" / "validation_L1.jsonl").open("a") as f:
        f.write('{"sample_id": "broken row"\n')
    return root


def test_flow_quarantines_records_and_skips_finished_shards(prefect_harness, data_root, care_home):
    from flows.preprocess import preprocess

    sampling = FrameSampling(nframes=4, max_pixels=56 * 56)
    config = PreprocessConfig(data_root=str(data_root), annotations=["L1"], sampling=sampling, shard_size=16,
                              workers=2)
    first = preprocess(config)
    assert first["samples"] == 32 and first["rows_rejected"] == 1
    assert first["quarantined"] == 1 and first["samples_excluded"] >= 1
    assert list(first["quarantine_reasons"].values()) == ["zero-byte file"]
    assert first["ok"] + first["quarantined"] == first["media"] and first["shards_skipped"] == 0

    ws = Workspace.at(care_home)
    assert catalog.query("select status, count(*) from videos group by 1 order by 1", path=ws.catalog_path) == [
        ("ok", first["ok"]), ("quarantined", 1)]
    [(file, line, reason)] = catalog.query("select file, line, reason from rejects", path=ws.catalog_path)
    assert file.endswith("validation_L1.jsonl") and line == 33 and reason
    n_frames = catalog.query("select count(*) from frames where kind = 'video'", path=ws.catalog_path)[0][0]
    assert n_frames == 4 * catalog.query("select count(distinct cache_key) from videos where kind = 'video' "
                                         "and status = 'ok'", path=ws.catalog_path)[0][0]

    second = preprocess(config)
    assert second["shards_skipped"] == second["shards"] and second["ok"] == first["ok"]

    # change one video: only its shard runs again, and that file is a cache miss
    from care.data.annotations import load_annotations

    samples = load_annotations(resolve_annotation("L1", data_root), data_root).samples
    target = next(s for s in samples if s.video and (data_root / s.video).stat().st_size > 0)
    write_video(data_root / target.video, n_frames=12, height=56, width=56)
    third = preprocess(config)
    assert third["shards_skipped"] == third["shards"] - 1

    cache = FrameCache(ws.frame_cache_dir, sampling, data_root)
    dataset = FrameDataset(samples, cache)
    assert len(dataset) == 32 - first["samples_excluded"]
    _, item = dataset[[s.sample_id for s in dataset.samples].index(target.sample_id)]
    assert item.frames.shape[0] == 4 and item.timestamps[-1] == pytest.approx(11 / 8)


def test_shard_key_follows_content_and_parameters(tmp_path):
    video = write_video(tmp_path / "a.mp4")
    items = [(str(video), "video")]
    key = shard_fingerprint(items, FrameSampling())
    assert shard_fingerprint(items, FrameSampling()) == key
    assert shard_fingerprint(items, FrameSampling(fps=1.0)) != key
    write_video(video, n_frames=30)
    assert shard_fingerprint(items, FrameSampling()) != key


def test_retry_only_transient_io():
    from prefect.states import Failed

    def retried(exc: BaseException) -> bool:
        return is_transient(None, None, Failed(data=exc))

    assert retried(OSError(5, "Input/output error")) and retried(catalog.CatalogError("locked"))
    assert not retried(FileNotFoundError("x")) and not retried(ValueError("bad data"))
