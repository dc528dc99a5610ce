"""Shared by the vLLM backend tests: demo samples with their media in a real frame cache."""

from __future__ import annotations

from pathlib import Path

from care.data.annotations import load_annotations
from care.media.frame_cache import FrameCache
from care.media.sampling import FrameSampling


def cached_samples(demo_root: Path, cache_root: Path, n: int):
    """n training samples (at least one image-only when the demo has one) with their media in a real cache."""
    cache = FrameCache(cache_root, FrameSampling(), data_root=demo_root)
    loaded = load_annotations(demo_root / "annotations" / "training_6k.jsonl", demo_root, seed=0)
    videos = [s for s in loaded.samples if s.video][: n - 1]
    image_only = [s for s in loaded.samples if not s.video][:1]
    chosen = videos + image_only if image_only else [s for s in loaded.samples if s.video][:n]
    for s in chosen:
        if s.video:
            cache.put(cache.resolve(s.video), "video")
        cache.put(cache.resolve(s.image), "image")
    return chosen, cache
