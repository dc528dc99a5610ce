"""A torch ``Dataset`` over samples that reads only the frame cache (never decodes video).

Not how the pipeline's stages read frames: SFT, the RL stages and evaluation use ``care.models.samples``
(``DataSpec.load()`` keeps the samples whose media are cached, ``prompt_items`` / ``shared_prompt_items`` read
them with ``FrameCache.load``). No stage uses this class; it is a torch ``Dataset`` view of the same cache reads
(the frame-cache and preprocessing tests use it).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch.utils.data import Dataset

from care.data.schema import Sample
from care.media.frame_cache import CachedSample, FrameCache


class FrameDataset(Dataset):
    """Items are ``(Sample, CachedSample)``; frames ``(T, H, W, 3)`` uint8 numpy, image ``(H, W, 3)``.

    With ``skip_uncached=True`` (default) samples whose media is not cached (quarantined videos, missing images)
    are dropped at construction and counted in ``excluded``; with ``False`` they raise ``CacheMissError`` on
    access. Items stay numpy: the model's processor takes uint8 frames directly; use a collate function that
    keeps lists.
    """

    def __init__(self, samples: Sequence[Sample], cache: FrameCache, *, skip_uncached: bool = True):
        self.cache = cache
        if skip_uncached:
            present = [(s, cache.contains(s)) for s in samples]
            self.samples = [s for s, ok in present if ok]
            self.excluded = [s.sample_id for s, ok in present if not ok]
        else:
            self.samples, self.excluded = list(samples), []

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Sample, CachedSample]:
        sample = self.samples[index]
        return sample, self.cache.load(sample)
