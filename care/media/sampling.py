"""Frame sampling and resizing, following the reference Qwen-VL rules (``qwen_vl_utils.vision_process``).

* Frame count: ``nframes`` if given (rounded to an even count), else ``duration * fps`` clamped to
  ``[min_frames, max_frames]`` and to the clip's frame count, floored to an even count (the vision tower merges
  frames in temporal pairs). Indices are spread uniformly over the clip: ``round(linspace(0, n - 1, k))``.
* Resize: the Qwen-VL ``smart_resize`` rule: both sides multiples of 28, aspect ratio kept as closely as the
  grid allows, pixel count inside ``[min_pixels, max_pixels]``. The current-observation image has its own budget.

Departures from the reference, on purpose (the reference raises instead):
* a clip shorter than the requested count keeps every frame it has (fps mode) or repeats frames to reach an
  explicit ``nframes`` (so a batch built with ``nframes`` always has the same T);
* a one-frame clip is sampled as two copies of that frame (two is the smallest even count).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from care.config import StageConfig

PATCH_FACTOR = 28  # patch 14 x spatial merge 2: each side of a resized frame is a multiple of this
FRAME_FACTOR = 2  # temporal patch size: frame counts are even
MAX_ASPECT_RATIO = 200


class FrameSampling(StageConfig):
    """How frames are sampled and resized before they enter the frame cache (part of every cache key), and how
    the model positions them in time (``temporal``, not part of the cache key)."""

    fps: float = Field(2.0, gt=0, description="Target sampling rate in frames per second of video time.")
    min_frames: int = Field(4, ge=1, description="Fewest frames to sample (rounded up to even).")
    max_frames: int = Field(16, ge=2, description="Most frames to sample (rounded down to even).")
    nframes: int | None = Field(
        None, ge=1, description="Exact frame count (rounded to even); overrides fps/min_frames/max_frames."
    )
    min_pixels: int = Field(28 * 28, ge=28 * 28, description="Smallest pixel count of a resized video frame.")
    max_pixels: int = Field(128 * 28 * 28, ge=28 * 28, description="Largest pixel count of a resized video frame (the paper's: 128*28*28).")
    image_min_pixels: int = Field(28 * 28, ge=28 * 28, description="Smallest pixel count of the resized image.")
    image_max_pixels: int = Field(256 * 28 * 28, ge=28 * 28, description="Largest pixel count of the resized image (the paper's: 256*28*28).")
    codec: Literal["raw", "jpeg"] = Field(
        "raw", description="Frame storage in the cache: 'raw' (lossless uint8) or 'jpeg' (lossy, smaller)."
    )
    jpeg_quality: int = Field(90, ge=1, le=100, description="JPEG quality when codec is 'jpeg'.")
    temporal: Literal["real_fps", "fixed_1s"] = Field(
        "real_fps", description="Temporal positions (Qwen2.5-VL M-RoPE) of the video frames: 'real_fps' places "
        "them at their sampled rate (seconds per 2-frame patch = 2 / fps); 'fixed_1s' at 1 s per patch whatever "
        "the rate, as the reference code trains (its evaluation uses the real rate). Not part of the cache key: "
        "the cached frames are the same.")

    @model_validator(mode="after")
    def _check_ranges(self) -> FrameSampling:
        if self.min_frames > self.max_frames:
            raise ValueError(f"min_frames ({self.min_frames}) is larger than max_frames ({self.max_frames})")
        if self.min_pixels > self.max_pixels:
            raise ValueError(f"min_pixels ({self.min_pixels}) is larger than max_pixels ({self.max_pixels})")
        if self.image_min_pixels > self.image_max_pixels:
            raise ValueError("image_min_pixels is larger than image_max_pixels")
        return self

    def video_params(self) -> dict:
        """The options that change cached video frames (the cache key's parameter part)."""
        keys = ("fps", "min_frames", "max_frames", "nframes", "min_pixels", "max_pixels", "codec")
        return self._with_quality({k: getattr(self, k) for k in keys})

    def image_params(self) -> dict:
        """The options that change the cached image."""
        return self._with_quality({"image_min_pixels": self.image_min_pixels,
                                   "image_max_pixels": self.image_max_pixels, "codec": self.codec})

    def _with_quality(self, params: dict) -> dict:
        if self.codec == "jpeg":
            params["jpeg_quality"] = self.jpeg_quality
        return params


def _round_by(x: float, f: int) -> int:
    return round(x / f) * f


def _ceil_by(x: float, f: int) -> int:
    return math.ceil(x / f) * f


def _floor_by(x: float, f: int) -> int:
    return math.floor(x / f) * f


def smart_resize(height: int, width: int, min_pixels: int, max_pixels: int,
                 factor: int = PATCH_FACTOR) -> tuple[int, int]:
    """Target (height, width): multiples of ``factor``, pixel count in ``[min_pixels, max_pixels]``.

    >>> smart_resize(48, 64, 28 * 28, 56 * 56)
    (56, 56)
    >>> smart_resize(480, 640, 28 * 28, 128 * 28 * 28)
    (252, 364)
    >>> smart_resize(97, 63, 28 * 28, 56 * 56)   # portrait, odd sides
    (56, 28)
    >>> smart_resize(10, 10, 4 * 28 * 28, 16 * 28 * 28)
    (56, 56)
    """
    if min(height, width) < 1:
        raise ValueError(f"frame size {height}x{width} is empty")
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise ValueError(f"aspect ratio of {height}x{width} exceeds {MAX_ASPECT_RATIO}")
    h_bar = max(factor, _round_by(height, factor))
    w_bar = max(factor, _round_by(width, factor))
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, _floor_by(height / beta, factor))
        w_bar = max(factor, _floor_by(width / beta, factor))
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = _ceil_by(height * beta, factor)
        w_bar = _ceil_by(width * beta, factor)
    return h_bar, w_bar


def frame_count(sampling: FrameSampling, total_frames: int, video_fps: float) -> int:
    """How many frames to sample from a clip of ``total_frames`` at ``video_fps`` (always even, >= 2).

    >>> s = FrameSampling(fps=2.0, min_frames=4, max_frames=16)
    >>> frame_count(s, 240, 30.0)        # 8 s clip at 2 fps -> 16
    16
    >>> frame_count(s, 90, 30.0)         # 3 s -> 6
    6
    >>> frame_count(s, 3, 8.0)           # fewer frames than min_frames: keep what exists, even
    2
    >>> frame_count(FrameSampling(nframes=7), 3, 8.0)   # explicit count wins (rounded to even)
    8
    """
    if total_frames < 1:
        raise ValueError("clip has no frames")
    if sampling.nframes is not None:
        return max(FRAME_FACTOR, _round_by(sampling.nframes, FRAME_FACTOR))
    min_frames = _ceil_by(sampling.min_frames, FRAME_FACTOR)
    max_frames = _floor_by(sampling.max_frames, FRAME_FACTOR)
    wanted = total_frames / max(video_fps, 1e-6) * sampling.fps
    n = min(max(wanted, min_frames), max_frames, total_frames)
    return max(FRAME_FACTOR, _floor_by(n, FRAME_FACTOR))


def frame_indices(n_samples: int, total_frames: int) -> list[int]:
    """``n_samples`` indices spread uniformly over ``[0, total_frames - 1]`` (repeats when the clip is short).

    >>> frame_indices(4, 48)
    [0, 16, 31, 47]
    >>> frame_indices(4, 2)
    [0, 0, 1, 1]
    """
    return np.linspace(0, total_frames - 1, n_samples).round().astype(np.int64).tolist()


def sampled_fps(n_samples: int, total_frames: int, video_fps: float) -> float:
    """Effective sampling rate, as the reference reports it: ``n_samples / total_frames * video_fps``.

    >>> sampled_fps(16, 240, 30.0)
    2.0
    """
    return n_samples / max(total_frames, 1e-6) * video_fps
