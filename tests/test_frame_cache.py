"""The Parquet frame cache: content + parameter keys, atomic entries, one-call reader, Dataset, workers."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

import care.media.frame_cache as frame_cache_module
from care.data.schema import Sample
from care.media import CacheMissError, FrameCache, FrameSampling, decode_video, load_image
from care.media.cache import read_entry, write_entry
from care.media.dataset import FrameDataset
from care.media.frame_cache import DECODED
from care.media.synth import frame_marker, write_image, write_video
from care.media.workers import cache_many, run_isolated

SAMPLING = FrameSampling(fps=2.0, min_frames=4, max_frames=8)


def _sample(sid: str, video: str | None, image: str = "images/obs.png") -> Sample:
    return Sample(sample_id=sid, question="q", options=("a", "b", "c", "d"), answer="A", video=video,
                  image=image, split="train", source_file="t.jsonl", line=1)


@pytest.fixture
def root(tmp_path):
    (tmp_path / "videos").mkdir()
    (tmp_path / "images").mkdir()
    write_video(tmp_path / "videos" / "a.mp4", n_frames=24)
    write_video(tmp_path / "videos" / "portrait.webm", n_frames=40, height=90, width=50)
    write_image(tmp_path / "images" / "obs.png")
    return tmp_path


def test_put_then_load_returns_what_decoding_gives(root, tmp_path):
    cache = FrameCache(tmp_path / "cache", SAMPLING, data_root=root)
    first = cache.put(root / "videos" / "a.mp4", "video")
    assert first.status == "ok" and not first.cache_hit and first.decoder == "decord"
    assert cache.put(root / "images" / "obs.png", "image").status == "ok"
    got = cache.load(_sample("s1", "videos/a.mp4"))
    ref = decode_video(root / "videos" / "a.mp4", SAMPLING)
    assert got.frames.dtype == np.uint8 and np.array_equal(got.frames, ref.frames)  # raw is lossless
    assert np.allclose(got.timestamps, ref.timestamps) and got.fps == pytest.approx(ref.sample_fps)
    assert np.array_equal(got.image, load_image(root / "images" / "obs.png", SAMPLING))
    image_only = cache.load(_sample("s2", None))
    assert image_only.frames is None and image_only.timestamps is None and image_only.image.ndim == 3


def test_rerun_hits_and_changes_miss(root, tmp_path):
    video = root / "videos" / "a.mp4"
    cache = FrameCache(tmp_path / "cache", SAMPLING)
    key = cache.put(video, "video").cache_key
    again = cache.put(video, "video")
    assert again.cache_hit and again.cache_key == key and again.n_frames == 6 and again.source["n_frames"] == 24
    # a parameter change is a miss
    other = FrameCache(tmp_path / "cache", SAMPLING.model_copy(update={"max_pixels": 112 * 112}))
    assert not other.put(video, "video").cache_hit
    # new bytes at the same path are a miss, and the reader never returns the old frames
    write_video(video, n_frames=48)
    changed = cache.put(video, "video")
    assert not changed.cache_hit and changed.cache_key != key
    assert cache.load_media(video, "video")[0].shape[0] == 8  # 6 s at 2 fps, max 8


def test_identical_files_are_stored_once(root, tmp_path):
    shutil.copy(root / "videos" / "a.mp4", root / "videos" / "copy.mp4")
    cache = FrameCache(tmp_path / "cache", SAMPLING)
    a = cache.put(root / "videos" / "a.mp4", "video")
    b = cache.put(root / "videos" / "copy.mp4", "video")
    assert b.cache_hit and a.cache_file == b.cache_file
    assert len(list((tmp_path / "cache").glob("*/*.parquet"))) == 1


def test_entry_is_zstd_parquet_and_no_temp_files_remain(root, tmp_path):
    cache = FrameCache(tmp_path / "cache", SAMPLING.model_copy(update={"codec": "jpeg", "jpeg_quality": 95}))
    result = cache.put(root / "videos" / "portrait.webm", "video")
    meta = pq.ParquetFile(result.cache_file).metadata
    assert meta.row_group(0).column(0).compression == "ZSTD"
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.name.endswith(".tmp")]
    frames, _, _ = cache.load_media(root / "videos" / "portrait.webm", "video")
    ref = decode_video(root / "videos" / "portrait.webm", SAMPLING).frames
    assert frames.shape == ref.shape and frames.shape[1] > frames.shape[2]  # portrait
    assert np.abs(frames.astype(int) - ref.astype(int)).mean() < 4  # JPEG is lossy but close
    assert [frame_marker(f) for f in frames] == [frame_marker(f) for f in ref]


def test_reader_reads_only_the_cache(root, tmp_path):
    cache = FrameCache(tmp_path / "cache", SAMPLING, data_root=root)
    put = cache.put(root / "videos" / "a.mp4", "video")
    cache.put(root / "images" / "obs.png", "image")
    # replace the entry's frames by zeros: what load returns must come from the entry, not from the video
    zeros = np.zeros((put.n_frames, put.height, put.width, 3), np.uint8)
    write_entry(cache.entry_path(put.cache_key), zeros, key=put.cache_key, media_sha256=put.sha256,
                kind="video", indices=list(range(put.n_frames)), timestamps=[0.0] * put.n_frames,
                sampling=SAMPLING, meta={"sample_fps": 1.5})
    got = cache.load(_sample("s", "videos/a.mp4"))
    assert not got.frames.any() and got.fps == 1.5


def test_dataset_excludes_uncached_samples(root, tmp_path):
    (root / "videos" / "bad.mp4").write_bytes(b"")
    cache = FrameCache(tmp_path / "cache", SAMPLING, data_root=root)
    results = cache_many([(str(root / "videos" / "a.mp4"), "video"), (str(root / "videos" / "bad.mp4"), "video"),
                          (str(root / "images" / "obs.png"), "image")], cache, workers=2)
    assert [r["status"] for r in results] == ["ok", "quarantined", "ok"]
    assert results[1]["reason"] == "zero-byte file"
    samples = [_sample("good", "videos/a.mp4"), _sample("bad", "videos/bad.mp4"), _sample("img", None)]
    ds = FrameDataset(samples, cache)
    assert len(ds) == 2 and ds.excluded == ["bad"]
    sample, item = ds[0]
    assert sample.sample_id == "good" and item.frames.shape[0] == 6
    with pytest.raises(CacheMissError, match="run `care preprocess`"):
        FrameDataset(samples, cache, skip_uncached=False)[1]


def crash_on_marker(path: str, kind: str) -> dict:
    """Worker function for the isolation test: the process dies on a 'crash' item."""
    if "crash" in path:
        os._exit(139)
    return {"path": path, "kind": kind, "status": "ok"}


def test_a_crashing_worker_costs_only_its_file():
    items = [("a", "video"), ("crash-me", "video"), ("b", "video"), ("c", "video")]
    results = run_isolated(crash_on_marker, items, (), workers=2)
    assert [r["status"] for r in results] == ["ok", "quarantined", "ok", "ok"]
    assert results[1]["reason"] == "decoder crashed (worker process died)"


def test_repeated_reads_are_served_from_memory_until_the_entry_is_replaced(root, tmp_path, monkeypatch):
    monkeypatch.setenv("CARE_FRAME_MEMORY_MB", "64")
    DECODED.clear()
    reads = []
    monkeypatch.setattr(frame_cache_module, "read_entry", lambda path: reads.append(path) or read_entry(path))
    cache = FrameCache(tmp_path / "cache", SAMPLING, data_root=root)
    video = root / "videos" / "a.mp4"
    result = cache.put(video, "video")
    first, ts, fps = cache.load_media(video, "video")
    first[0, 0, 0, 0] ^= 0xFF  # each reader owns its arrays: this must not reach the next reader
    again, ts_again, fps_again = cache.load_media(video, "video")
    assert len(reads) == 1  # the second read did not touch the file
    first[0, 0, 0, 0] ^= 0xFF
    assert np.array_equal(again, first) and np.array_equal(ts_again, ts) and fps_again == fps
    # a rebuilt entry is a new file renamed into place: read (and verified) again
    entry = tmp_path / "cache" / result.cache_key[:2] / f"{result.cache_key}.parquet"
    os.replace(shutil.copy(entry, tmp_path / "copy.parquet"), entry)
    fresh, _, _ = cache.load_media(video, "video")
    assert len(reads) == 2 and np.array_equal(fresh, first)
    # the limit bounds memory; 0 turns the layer off
    monkeypatch.setenv("CARE_FRAME_MEMORY_MB", "0")
    cache.load_media(video, "video")
    cache.load_media(video, "video")
    assert len(reads) == 4
    monkeypatch.setenv("CARE_FRAME_MEMORY_MB", str(first.nbytes / 2**20 / 2))  # smaller than one entry: not kept
    cache.load_media(video, "video")
    cache.load_media(video, "video")
    assert len(reads) == 6
    DECODED.clear()
