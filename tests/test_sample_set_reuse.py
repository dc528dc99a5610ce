"""``DataSpec.load`` validates once per process and rebuilds whenever anything it was built from changed."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from care.errors import CareError
from care.media.synth import write_video
from care.models.samples import load_sample_set
from tests.rl_helpers import cache_demo


@pytest.fixture
def setup(tmp_path, demo_root):
    data = tmp_path / "data"
    shutil.copytree(demo_root, data)
    spec = cache_demo(tmp_path, data)
    return data, spec


def _fresh(spec):
    return load_sample_set(spec.data_root, spec.annotation_file, spec.cache(), seed=spec.seed,
                           shuffle_options=spec.shuffle_options)


def _later(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000))


def test_unchanged_inputs_give_the_same_set_without_validating_again(setup):
    _, spec = setup
    first = spec.load()
    assert spec.load() is first  # reused, not rebuilt
    assert first == _fresh(spec)
    assert spec.model_copy(update={"seed": 1}).load() is not first  # another spec, another set


def test_an_edited_annotation_file_is_read_again(setup):
    data, spec = setup
    first = spec.load()
    ann = data / "annotations" / "training_6k.jsonl"
    lines = ann.read_text().splitlines()
    ann.write_text("\n".join(lines[1:]) + "\n")
    again = spec.load()
    assert len(again.samples) == len(first.samples) - 1 and again == _fresh(spec)


def test_a_cache_entry_removed_or_added_is_seen(setup):
    _, spec = setup
    first = spec.load()
    cache = spec.cache()
    victim = next(s for s in first.samples if s.video)
    entry = cache.entry_path(cache._key_of(cache.resolve(victim.video), "video"))
    entry.unlink()
    after_removal = spec.load()
    assert victim.sample_id in {sid for sid, _ in after_removal.excluded} and after_removal == _fresh(spec)
    assert cache.put(cache.resolve(victim.video), "video").status == "ok"
    assert spec.load() == first


def test_a_replaced_or_missing_media_file_is_seen(setup):
    data, spec = setup
    first = spec.load()
    victim = next(s for s in first.samples if s.video)
    video = data / victim.video
    write_video(video, n_frames=7, height=56, width=56, texture=True)  # other bytes: not in the cache
    _later(video)
    replaced = spec.load()
    assert victim.sample_id in {sid for sid, _ in replaced.excluded} and replaced == _fresh(spec)
    video.unlink()
    assert spec.load() == _fresh(spec)


def test_a_source_folder_re_pointed_outside_the_data_root_is_refused(setup, tmp_path):
    data, spec = setup
    first = spec.load()
    row = json.loads((data / "annotations" / "training_6k.jsonl").read_text().splitlines()[0])
    source = data / "images" / row["video_source"]
    outside = tmp_path / "outside"
    shutil.copytree(source, outside)
    shutil.rmtree(source)
    source.symlink_to(outside, target_is_directory=True)
    assert first.samples
    # the demo's rows share one source folder: every row now resolves outside the root and is rejected
    with pytest.raises(CareError, match=r"no usable samples \(0 valid rows, 0 without cached media, \d+ rejected"):
        spec.load()
