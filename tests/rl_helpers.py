"""Helpers for RL tests: a workspace whose frame cache holds the demo set, without running Prefect."""

from __future__ import annotations

from pathlib import Path

from care.data.annotations import load_annotations
from care.media.frame_cache import FrameCache
from care.media.sampling import FrameSampling
from care.train.samples import DataSpec

SAMPLING = FrameSampling(nframes=4)


def cache_demo(home: Path, demo_root: Path, files=("training_6k.jsonl",)) -> DataSpec:
    """Fill ``home``'s frame cache with the media of ``files``; return the training DataSpec."""
    cache = FrameCache(home / "cache" / "frames", SAMPLING, demo_root)
    for name in files:
        for s in load_annotations(demo_root / "annotations" / name, demo_root, shuffle_options=False).samples:
            if s.video:
                assert cache.put(demo_root / s.video, "video").status == "ok"
            assert cache.put(demo_root / s.image, "image").status == "ok"
    return DataSpec(data_root=str(demo_root), annotation_file="training_6k.jsonl",
                    cache_root=str(home / "cache" / "frames"), sampling=SAMPLING, shuffle_options=False)
