"""Decode the sampled frames of a video (decord first, PyAV fallback) and load images, resized to budget.

Shapes: frames ``(T, H, W, 3)`` uint8 RGB; image ``(H, W, 3)`` uint8 RGB. ``T`` is even (see ``sampling``).

Order of work for a video: ``probe_video`` (PyAV, demux only) rejects missing, empty, non-video, audio-only,
cut and container-corrupt files with an exact reason; then decord reads the sampled frames; if decord cannot
open or read the file, or counts a different number of frames than the container holds, PyAV decodes the
whole stream, which also finds frames the decoder cannot decode (``undecodable midway``).
decord runs inside the preprocessing worker processes (``care.media.workers``), so a crash in its native
code costs one worker, not the run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from PIL import Image, UnidentifiedImageError

from care.media.probe import MediaError, VideoInfo, _short, check_file, probe_video
from care.media.sampling import FrameSampling, frame_count, frame_indices, sampled_fps, smart_resize


@dataclass(frozen=True)
class DecodedVideo:
    """Sampled, resized frames of one video and where they came from."""

    frames: np.ndarray  # (T, H, W, 3) uint8
    indices: list[int]  # source frame index of each sampled frame
    timestamps: list[float]  # seconds, index / source fps
    sample_fps: float
    info: VideoInfo
    decoder: str  # "decord" or "pyav"
    note: str = ""  # why decord was not used, when it was not


def resize_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize ``(T, h, w, 3)`` uint8 frames to ``(T, height, width, 3)`` with bicubic filtering."""
    if frames.shape[1:3] == (height, width):
        return np.ascontiguousarray(frames)
    out = np.empty((len(frames), height, width, 3), dtype=np.uint8)
    for i, frame in enumerate(frames):
        out[i] = np.asarray(Image.fromarray(frame).resize((width, height), Image.BICUBIC))
    return out


def decode_video(path: str | os.PathLike, sampling: FrameSampling, *, prefer: str = "decord") -> DecodedVideo:
    """Sample, decode and resize the frames of ``path``; raise ``MediaError`` for a bad file.

    ``prefer="pyav"`` skips decord (used by the benchmark to time PyAV alone).
    """
    path = Path(path)
    info = probe_video(path)
    n = frame_count(sampling, info.n_frames, info.fps)
    indices = frame_indices(n, info.n_frames)
    note = ""
    frames = None
    if prefer == "decord":
        try:
            frames = read_decord(path, indices, info.n_frames)
        except _DecordFailed as exc:
            note = str(exc)
    decoder = "decord" if frames is not None else "pyav"
    if frames is None:
        frames = read_pyav(path, indices, info.n_frames)
    h, w = smart_resize(info.height, info.width, sampling.min_pixels, sampling.max_pixels)
    return DecodedVideo(
        frames=resize_frames(frames, h, w), indices=indices,
        timestamps=[i / info.fps for i in indices], sample_fps=sampled_fps(n, info.n_frames, info.fps),
        info=info, decoder=decoder, note=note,
    )


class _DecordFailed(Exception):
    pass


def read_decord(path: Path, indices: list[int], n_frames: int) -> np.ndarray:
    """Frames at ``indices`` via decord, ``(T, h, w, 3)``; raise ``_DecordFailed`` when decord cannot."""
    import decord  # imported here: only decoding workers need it

    try:
        reader = decord.VideoReader(str(path), num_threads=1)
        if len(reader) != n_frames:
            raise _DecordFailed(f"decord counts {len(reader)} frames, the container holds {n_frames}")
        return reader.get_batch(indices).asnumpy()
    except _DecordFailed:
        raise
    except Exception as exc:  # decord raises RuntimeError / DECORDError with multi-line native messages
        raise _DecordFailed(f"decord failed: {_short(exc)}") from exc


def read_pyav(path: Path, indices: list[int], n_frames: int) -> np.ndarray:
    """Decode every frame with PyAV, keep those at ``indices`` (repeats allowed), ``(T, h, w, 3)``."""
    wanted = set(indices)
    kept: dict[int, np.ndarray] = {}
    decoded = 0
    with av.open(str(path), metadata_errors="ignore") as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for frame in container.decode(stream):
                if decoded in wanted:
                    kept[decoded] = frame.to_ndarray(format="rgb24")
                decoded += 1
        except av.FFmpegError as exc:
            raise MediaError("undecodable", f"undecodable midway (decoder error at frame {decoded} of "
                             f"{n_frames}: {_short(exc)})", path) from exc
    if decoded < n_frames:
        raise MediaError("undecodable", f"undecodable midway (decoder produced {decoded} of {n_frames} frames)",
                         path)
    return np.stack([kept[i] for i in indices])


def load_image(path: str | os.PathLike, sampling: FrameSampling) -> np.ndarray:
    """The current-observation image as ``(H, W, 3)`` uint8 RGB, resized to the image pixel budget."""
    path = Path(path)
    check_file(path)
    try:
        with Image.open(path) as img:
            img.load()
            rgb = img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        kind = "truncated" if "truncated" in str(exc).lower() else "not_image"
        reason = "truncated (image data cut short)" if kind == "truncated" else "not an image (unrecognised format)"
        raise MediaError(kind, reason, path) from exc
    h, w = smart_resize(rgb.height, rgb.width, sampling.image_min_pixels, sampling.image_max_pixels)
    return np.asarray(rgb.resize((w, h), Image.BICUBIC) if (rgb.height, rgb.width) != (h, w) else rgb)
