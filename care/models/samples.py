"""From samples to model inputs, reading only the frame cache (no stage after preprocessing decodes video).

Shared by the SFT, rollout, scoring, optimisation and evaluation stages so a prompt is built the same way
everywhere: ``build_messages`` (video, image, text in that order; the text from a versioned prompt template) +
the cached frames, positioned in time at their real sampled fps or at 1 s per temporal patch
(``FrameSampling.temporal``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field

from care.algo.prompt import DEFAULT_TEMPLATE, PromptTemplate, build_messages, template_by_id
from care.config import StageConfig
from care.data.annotations import load_annotations
from care.data.benchmarks import get_benchmark, load_levels
from care.data.schema import Sample
from care.errors import CareError
from care.media.cache import CacheMissError
from care.media.frame_cache import CachedSample, FrameCache
from care.media.sampling import FrameSampling
from care.models.inputs import FIXED_SECONDS_PER_GRID, PromptItem


@dataclass(frozen=True)
class SampleSet:
    """The usable samples of one annotation file, and what was left out with why."""

    samples: list[Sample]
    excluded: list[tuple[str, str]]  # (sample_id, reason)
    rejected_rows: int

    def by_id(self) -> dict[str, Sample]:
        return {s.sample_id: s for s in self.samples}


def load_sample_set(data_root: str | Path, annotation_file: str, cache: FrameCache, *, seed: int = 0,
                    shuffle_options: bool = True, with_media: bool = False, benchmark: str | None = None):
    """Validated samples whose media are all in the frame cache.

    ``benchmark``: read the transfer benchmark of that name (``care.data.benchmarks``) under ``data_root`` and
    keep the samples of the level ``annotation_file`` names (its rejected rows are the whole benchmark's).

    Rows that fail validation are counted (``care preprocess`` records them in ``rejects``); samples whose
    video or image is quarantined or not cached are excluded and listed, never an error, unless none is left.
    ``with_media``: return ``(sample set, absolute paths of every valid row's media)``.
    """
    path = Path(annotation_file)
    if benchmark:
        path = Path(data_root) / f"{benchmark}:{annotation_file}"  # names the level in messages
        loaded = load_levels(benchmark, data_root, [annotation_file])
    else:
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
    result = SampleSet(samples=usable, excluded=excluded, rejected_rows=len(loaded.rejects))
    if not with_media:
        return result
    media = {str(cache.resolve(rel)) for s in loaded.samples for rel in (s.video, s.image) if rel}
    return result, media


def prompt_item(sample: Sample, media: CachedSample, *, template: PromptTemplate = DEFAULT_TEMPLATE,
                temporal: str = "real_fps") -> PromptItem:
    """The chat messages (``template``) and visual inputs of one sample (video only when the sample has one).

    ``temporal`` (``FrameSampling.temporal``): ``real_fps`` positions the frames in time at their sampled rate,
    ``fixed_1s`` at 1 s per temporal patch whatever the rate (the reference's training).
    """
    has_video = media.frames is not None
    messages = build_messages(sample.question, sample.options, has_video=has_video,
                              has_image=media.image is not None, template=template)
    seconds = FIXED_SECONDS_PER_GRID if has_video and temporal == "fixed_1s" else None
    return PromptItem(messages=messages, video=media.frames, image=media.image, seconds_per_grid=seconds)


def prompt_items(samples: Sequence[Sample], cache: FrameCache, *,
                 template: PromptTemplate | Sequence[PromptTemplate] = DEFAULT_TEMPLATE
                 ) -> tuple[list[PromptItem], list[float | None]]:
    """Prompt items and the per-item sampled fps (None for image-only samples).

    ``template``: one for all samples, or one per sample (a rollout shard's recorded ``prompt_template``).
    Frames are positioned in time as ``cache.sampling.temporal`` says.
    """
    templates = [template] * len(samples) if isinstance(template, PromptTemplate) else list(template)
    if len(templates) != len(samples):
        raise ValueError(f"{len(templates)} prompt templates for {len(samples)} samples")
    items, rates = [], []
    for sample, tmpl in zip(samples, templates, strict=True):
        try:
            media = cache.load(sample)
        except CacheMissError as exc:
            raise CareError(f"sample {sample.sample_id}: {exc}") from None
        items.append(prompt_item(sample, media, template=tmpl, temporal=cache.sampling.temporal))
        rates.append(media.fps)
    return items, rates


def row_template(row: dict) -> PromptTemplate:
    """The prompt template a rollout row was sampled with: its ``prompt_template``; ``care`` for rows written
    before that column existed, when ``care`` was the only template."""
    recorded = row.get("prompt_template")
    return template_by_id(recorded) if recorded else DEFAULT_TEMPLATE


class DataSpec(StageConfig):
    """Where a stage finds its samples and their frames: enough to rebuild them in any process."""

    data_root: str = Field(..., description="SEED-Bench-R1-layout root.")
    annotation_file: str = Field(..., description="Annotation file, relative to data_root/annotations or absolute.")
    cache_root: str = Field(..., description="Frame cache folder (Workspace.frame_cache_dir).")
    sampling: FrameSampling = Field(default_factory=FrameSampling, description="Frame sampling of the cache entries.")
    seed: int = Field(0, description="Seed of the per-row option shuffle.")
    shuffle_options: bool = Field(True, description="Shuffle the options of training rows.")
    benchmark: str | None = Field(None, description="A transfer benchmark (care.data.benchmarks): then "
                                  "annotation_file names its level.")

    def cache(self) -> FrameCache:
        return FrameCache(self.cache_root, self.sampling, self.data_root)

    def load(self) -> SampleSet:
        """The sample set, validated once per process and reused while nothing it was built from changed.

        Each RL stage (rollout, scoring, optimisation, replay) rebuilds its samples from this spec; validating
        2,000 rows and checking their media in the cache costs about 2 s, which was most of a demo iteration.
        The reuse is checked, not assumed (``_outer_fingerprint``, ``_media_fingerprint``): the annotation file, every media file
        and its folder, and the cache's entry folders are stat-ed (about 50 ms for 2,000 samples), and any
        change rebuilds the set. Hand-written because a plain ``lru_cache`` cannot notice those changes."""
        key = self.model_dump_json()
        known = _LOADED.get(key)
        outer = _outer_fingerprint(self)  # before loading: a change during the load makes the next call rebuild
        if known is not None and known.outer == outer and known.media == _media_fingerprint(known.paths):
            return known.samples
        samples, media = load_sample_set(self.data_root, self.annotation_file, self.cache(), seed=self.seed,
                                         shuffle_options=self.shuffle_options, with_media=True,
                                         benchmark=self.benchmark)
        paths = tuple(sorted(media))
        _LOADED[key] = _Loaded(samples=samples, paths=paths, outer=outer, media=_media_fingerprint(paths))
        return samples


@dataclass(frozen=True)
class _Loaded:
    samples: SampleSet
    paths: tuple[str, ...]  # the media of every valid row
    outer: tuple  # _outer_fingerprint when loaded
    media: tuple  # _media_fingerprint of paths


_LOADED: dict[str, _Loaded] = {}
"""DataSpec (as JSON) -> its sample set and what it was built from, in this process."""


def _stat(path: str | Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def _outer_fingerprint(spec: DataSpec) -> tuple:
    """The annotation file (its content) and the cache root's folders (entries and links: a file added, replaced
    or removed changes its folder's mtime)."""
    path = Path(spec.annotation_file)
    if not path.is_absolute():
        path = Path(spec.data_root) / "annotations" / path
    annotations = _stat(path)
    if spec.benchmark:
        annotations = tuple(_stat(p) for p in get_benchmark(spec.benchmark).annotation_files(Path(spec.data_root)))
    try:
        with os.scandir(spec.cache_root) as it:
            cache = tuple(sorted((e.name, e.stat().st_mtime_ns) for e in it if e.is_dir()))
    except OSError:
        cache = ()
    return annotations, _stat(spec.cache_root), cache


def _media_fingerprint(media: Sequence[str]) -> tuple:
    """Each media file (presence and identity: its cache key comes from its bytes, linked by path, size and
    mtime), the folders holding them and their parents (a symlinked source folder re-pointed changes its
    parent's mtime)."""
    folders = {os.path.dirname(m) for m in media}
    folders |= {os.path.dirname(f) for f in folders}
    return tuple(_stat(m) for m in media), tuple(_stat(f) for f in sorted(folders))


def shared_prompt_items(samples: Sequence[Sample], cache: FrameCache, *,
                        template: PromptTemplate | Sequence[PromptTemplate] = DEFAULT_TEMPLATE
                        ) -> tuple[list, list[float | None]]:
    """``prompt_items`` with each distinct (sample, template) read from the cache once and its item object
    repeated (``template``: one, or one per sample).

    The G rollouts of a prompt then share one ``PromptItem``, which ``encode_prompts`` processes once.
    """
    templates = [template] * len(samples) if isinstance(template, PromptTemplate) else list(template)
    if len(templates) != len(samples):
        raise ValueError(f"{len(templates)} prompt templates for {len(samples)} samples")
    keys = [(s.sample_id, t.template_id) for s, t in zip(samples, templates, strict=True)]
    distinct = list({k: (s, t) for k, s, t in zip(keys, samples, templates, strict=True)}.items())
    items, rates = prompt_items([s for _, (s, _) in distinct], cache, template=[t for _, (_, t) in distinct])
    by_key = {k: (item, rate) for (k, _), item, rate in zip(distinct, items, rates, strict=True)}
    pairs = [by_key[k] for k in keys]
    return [p[0] for p in pairs], [p[1] for p in pairs]
