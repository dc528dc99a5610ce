"""Helpers for tests that need demo samples with their media in a real frame cache, without running Prefect.

- ``cache_demo(home, demo_root)``: ``home``'s frame cache filled with the media of whole annotation files; the
  training ``DataSpec`` (RL, SFT, evaluation tests).
- ``cached_samples(demo_root, cache_root, n)``: ``n`` training samples, one image-only among them when the demo
  has one, with their media cached (vLLM backend tests).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from care.data.annotations import load_annotations
from care.data.schema import Sample
from care.media.frame_cache import FrameCache
from care.media.sampling import FrameSampling
from care.models.samples import DataSpec

SAMPLING = FrameSampling(nframes=4)


def cache_media(cache: FrameCache, samples: Sequence[Sample]) -> None:
    """Put every sample's video (when it has one) and image into ``cache``; each must decode."""
    for s in samples:
        if s.video:
            assert cache.put(cache.resolve(s.video), "video").status == "ok", s.video
        assert cache.put(cache.resolve(s.image), "image").status == "ok", s.image


def cache_demo(home: Path, demo_root: Path, files=("training_6k.jsonl",)) -> DataSpec:
    """Fill ``home``'s frame cache with the media of ``files``; return the training DataSpec."""
    cache = FrameCache(home / "cache" / "frames", SAMPLING, demo_root)
    for name in files:
        cache_media(cache, load_annotations(demo_root / "annotations" / name, demo_root, shuffle_options=False).samples)
    return DataSpec(data_root=str(demo_root), annotation_file="training_6k.jsonl",
                    cache_root=str(home / "cache" / "frames"), sampling=SAMPLING, shuffle_options=False)


def cached_samples(demo_root: Path, cache_root: Path, n: int) -> tuple[list[Sample], FrameCache]:
    """n training samples (at least one image-only when the demo has one) with their media in a real cache."""
    cache = FrameCache(cache_root, FrameSampling(), data_root=demo_root)
    loaded = load_annotations(demo_root / "annotations" / "training_6k.jsonl", demo_root, seed=0)
    videos = [s for s in loaded.samples if s.video][: n - 1]
    image_only = [s for s in loaded.samples if not s.video][:1]
    chosen = videos + image_only if image_only else [s for s in loaded.samples if s.video][:n]
    cache_media(cache, chosen)
    return chosen, cache
