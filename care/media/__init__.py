"""Video/image decoding, frame sampling and resizing, and the Parquet frame cache.

Public API: ``FrameSampling`` (options), ``FrameCache`` (``.put(path, kind)`` fills, ``.load(sample)`` reads),
``CachedSample``, ``FrameDataset``, ``decode_video``, ``load_image``, ``probe_video``, ``MediaError``. The
pipeline's stages read frames through ``care.models.samples`` (``FrameCache.contains`` / ``.load``), not through
``FrameDataset`` (a torch ``Dataset`` view of the same reads that no stage uses).
"""

from care.media.cache import CACHE_VERSION, CacheMissError, cache_key, file_sha256
from care.media.decode import DecodedVideo, decode_video, load_image
from care.media.frame_cache import CachedSample, FrameCache, MediaResult
from care.media.probe import MediaError, VideoInfo, probe_video
from care.media.sampling import FrameSampling, frame_count, frame_indices, smart_resize

__all__ = [
    "CACHE_VERSION", "CacheMissError", "CachedSample", "DecodedVideo", "FrameCache", "FrameDataset",
    "FrameSampling", "MediaError", "MediaResult", "VideoInfo", "cache_key", "decode_video", "file_sha256",
    "frame_count", "frame_indices", "load_image", "probe_video", "smart_resize",
]


def __getattr__(name: str):
    # FrameDataset pulls in torch; keep it out of decoding worker processes that only need the cache.
    if name == "FrameDataset":
        from care.media.dataset import FrameDataset

        return FrameDataset
    raise AttributeError(name)
