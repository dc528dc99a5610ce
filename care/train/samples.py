"""From samples to model inputs, reading only the frame cache (no stage after preprocessing decodes video).

Shared by the SFT, rollout, scoring, optimisation and evaluation stages so a prompt is built the same way
everywhere: ``build_messages`` (video, image, text in that order) + the cached frames at their real sampled fps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field

from care.algo.prompt import build_messages
from care.config import StageConfig
from care.data.annotations import load_annotations
from care.data.schema import Sample
from care.errors import CareError
from care.media.cache import CacheMissError
from care.media.frame_cache import CachedSample, FrameCache
from care.media.sampling import FrameSampling
from care.models.inputs import PromptItem


@dataclass(frozen=True)
class SampleSet:
    """The usable samples of one annotation file, and what was left out with why."""

    samples: list[Sample]
    excluded: list[tuple[str, str]]  # (sample_id, reason)
    rejected_rows: int

    def by_id(self) -> dict[str, Sample]:
        return {s.sample_id: s for s in self.samples}


def load_sample_set(data_root: str | Path, annotation_file: str, cache: FrameCache, *, seed: int = 0,
                    shuffle_options: bool = True) -> SampleSet:
    """Validated samples whose media are all in the frame cache.

    Rows that fail validation are counted (``care preprocess`` records them in ``rejects``); samples whose
    video or image is quarantined or not cached are excluded and listed, never an error, unless none is left.
    """
    path = Path(annotation_file)
    if not path.is_absolute():
        path = Path(data_root) / "annotations" / path
    if not path.is_file():
        raise CareError(f"{path}: annotation file not found; check --data-root and the annotation name")
    loaded = load_annotations(path, data_root, seed=seed, shuffle_options=shuffle_options)
    usable, excluded = [], []
    for sample in loaded.samples:
        if cache.contains(sample):
            usable.append(sample)
        else:
            excluded.append((sample.sample_id, "media quarantined or not in the frame cache"))
    if not usable:
        raise CareError(
            f"{path}: no usable samples ({len(loaded.samples)} valid rows, {len(excluded)} without cached media, "
            f"{len(loaded.rejects)} rejected rows); run `care preprocess` with the same sampling options first"
        )
    return SampleSet(samples=usable, excluded=excluded, rejected_rows=len(loaded.rejects))


def prompt_item(sample: Sample, media: CachedSample) -> PromptItem:
    """The chat messages and visual inputs of one sample (video only when the sample has one)."""
    has_video = media.frames is not None
    messages = build_messages(sample.question, sample.options, has_video=has_video, has_image=True)
    return PromptItem(messages=messages, video=media.frames, image=media.image)


def prompt_items(samples: Sequence[Sample], cache: FrameCache) -> tuple[list[PromptItem], list[float | None]]:
    """Prompt items and the per-item sampled fps (None for image-only samples)."""
    items, rates = [], []
    for sample in samples:
        try:
            media = cache.load(sample)
        except CacheMissError as exc:
            raise CareError(f"sample {sample.sample_id}: {exc}") from None
        items.append(prompt_item(sample, media))
        rates.append(media.fps)
    return items, rates


class DataSpec(StageConfig):
    """Where a stage finds its samples and their frames: enough to rebuild them in any process."""

    data_root: str = Field(..., description="SEED-Bench-R1-layout root.")
    annotation_file: str = Field(..., description="Annotation file, relative to data_root/annotations or absolute.")
    cache_root: str = Field(..., description="Frame cache folder (Workspace.frame_cache_dir).")
    sampling: FrameSampling = Field(default_factory=FrameSampling, description="Frame sampling of the cache entries.")
    seed: int = Field(0, description="Seed of the per-row option shuffle.")
    shuffle_options: bool = Field(True, description="Shuffle the options of training rows.")

    def cache(self) -> FrameCache:
        return FrameCache(self.cache_root, self.sampling, self.data_root)

    def load(self) -> SampleSet:
        return load_sample_set(self.data_root, self.annotation_file, self.cache(), seed=self.seed,
                               shuffle_options=self.shuffle_options)


def shared_prompt_items(samples: Sequence[Sample], cache: FrameCache) -> tuple[list, list[float | None]]:
    """``prompt_items`` with each distinct sample read from the cache once and its item object repeated.

    The G rollouts of a prompt then share one ``PromptItem``, which ``encode_prompts`` processes once.
    """
    distinct = list({s.sample_id: s for s in samples}.values())
    items, rates = prompt_items(distinct, cache)
    by_id = {s.sample_id: (item, rate) for s, item, rate in zip(distinct, items, rates, strict=True)}
    pairs = [by_id[s.sample_id] for s in samples]
    return [p[0] for p in pairs], [p[1] for p in pairs]
