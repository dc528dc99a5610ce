"""Corruption is detected, reported with the file's path, and rebuilt or refused, never silently used: frame-cache
entries (checksum in the Parquet footer), checkpoints (MANIFEST.json, through the loaders the RL stages use) and
rollout Parquet shards (truncated: the reader names the file)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from care.media import FrameCache, FrameSampling
from care.media.cache import CacheCorruptError, read_entry
from care.media.frame_cache import DECODED
from care.media.synth import write_video
from care.store.rollout_log import read_rows, write_rows_atomic
from care.train.checkpoint import CheckpointError, latest_complete, make_initial_checkpoint
from care.train.policy_io import load_policy, load_reference


def _flip(path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def _truncate(path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _data_offset(path) -> int:
    """A byte inside the first data page of the ``data`` column (raw frames, stored uncompressed enough to find)."""
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(path).metadata.row_group(0)
    col = next(meta.column(i) for i in range(meta.num_columns) if meta.column(i).path_in_schema == "data")
    return col.data_page_offset + col.total_compressed_size // 2


def _rewrite_meta(entry, change) -> None:
    """Rewrite an entry with its footer metadata changed and its stored checksum kept (a tampered entry)."""
    import json

    import pyarrow.parquet as pq

    table = pq.read_table(entry)
    stored = dict(table.schema.metadata)
    stored[b"care.meta"] = json.dumps(change(json.loads(stored[b"care.meta"]))).encode()
    pq.write_table(table.replace_schema_metadata(stored), entry)


@pytest.fixture
def cached(tmp_path):
    cache = FrameCache(tmp_path / "cache", FrameSampling(nframes=4))
    video = write_video(tmp_path / "v.mp4")
    result = cache.put(video, "video")
    assert result.status == "ok"
    frames, _, _ = cache.load_media(video, "video")
    return cache, video, result, frames


@pytest.mark.parametrize("damage", ["truncate", "flip-data", "flip-footer", "altered-meta", "empty"])
def test_corrupt_frame_cache_entry_is_refused_with_its_path_then_rebuilt(cached, damage):
    cache, video, result, frames = cached
    entry = cache.root / result.cache_key[:2] / f"{result.cache_key}.parquet"
    if damage == "truncate":
        _truncate(entry)
    elif damage == "flip-data":
        _flip(entry, _data_offset(entry))
    elif damage == "flip-footer":
        _flip(entry, entry.stat().st_size - 7)  # the footer's length field
    elif damage == "altered-meta":
        _rewrite_meta(entry, lambda meta: {**meta, "sample_fps": meta["sample_fps"] * 2})
    else:
        entry.write_bytes(b"")
    # damage in place can keep the entry's size and (coarse) mtime, and a process that read the entry before
    # keeps serving the verified frames from memory; this test is about what a reader finds on disk
    DECODED.clear()
    with pytest.raises(CacheCorruptError) as err:
        cache.load_media(video, "video")
    assert str(entry) in str(err.value) and "care preprocess" in str(err.value)
    rebuilt = cache.put(video, "video")  # what preprocessing does: the corrupt entry is rewritten, not reused
    assert rebuilt.status == "ok" and not rebuilt.cache_hit and rebuilt.note.startswith("rebuilt:")
    again, _, _ = cache.load_media(video, "video")
    assert np.array_equal(again, frames)
    read_entry(entry)  # verifies


def test_intact_entry_is_a_cache_hit(cached):
    cache, video, _, _ = cached
    assert cache.put(video, "video").cache_hit


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("ckpts")
    return root, make_initial_checkpoint(tiny_model_dir, root / "iter-00000")


@pytest.mark.parametrize(("part", "damage"), [("policy/model.safetensors", "flip"),
                                               ("policy/model.safetensors", "truncate"),
                                               ("reference/model.safetensors", "flip"),
                                               ("MANIFEST.json", "delete")])
def test_corrupt_checkpoint_is_refused_by_the_stage_loaders_and_skipped_on_resume(checkpoints, tmp_path, part, damage):
    import shutil

    _, good = checkpoints
    root = tmp_path / "checkpoints"
    shutil.copytree(good, root / "iter-00000")
    bad = shutil.copytree(good, root / "iter-00001")
    target = bad / part
    if damage == "flip":
        _flip(target, target.stat().st_size - 3)  # a weight byte: same size, other value
    elif damage == "truncate":
        _truncate(target)
    else:
        target.unlink()
    for load in (load_policy, load_reference):
        with pytest.raises(CheckpointError) as err:
            load(bad)
        assert str(bad) in str(err.value)
    assert latest_complete(root) == (0, root / "iter-00000")  # a resume starts from the last intact one
    load_policy(root / "iter-00000")


def test_truncated_rollout_shard_is_reported_with_its_path(tmp_path):
    schema = pa.schema([("rollout_uid", pa.string()), ("reward", pa.float32())])
    path = write_rows_atomic(tmp_path / "generated.parquet", [{"rollout_uid": f"r/{i}", "reward": 1.0}
                                                               for i in range(100)], schema)
    _truncate(path)
    with pytest.raises(pa.ArrowInvalid) as err:
        read_rows(path)
    assert str(path) in str(err.value)
