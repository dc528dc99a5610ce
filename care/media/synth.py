"""Encode small synthetic media with PyAV, and make each kind of bad file (for tests, benchmarks, demos).

Frames show a bright square moving left to right over a background that changes with the frame index, so
the frame a sample came from can be read back from its pixels (``frame_marker``).
"""

from __future__ import annotations

import os
from pathlib import Path

import av
import numpy as np
from PIL import Image

# (codec, pixel format) per container; yuv444p lets H.264 take odd frame sizes.
CODECS = {"mp4": ("libx264", "yuv420p"), "avi": ("mpeg4", "yuv420p"), "webm": ("libvpx-vp9", "yuv420p"),
          "mkv": ("libx264", "yuv444p")}


def synthetic_frame(index: int, height: int, width: int) -> np.ndarray:
    """``(height, width, 3)`` uint8: background level encodes ``index`` (8 steps of 30), a moving square."""
    frame = np.empty((height, width, 3), dtype=np.uint8)
    frame[...] = (index * 30) % 240
    side = max(2, min(height, width) // 4)
    x = (index * 3) % max(1, width - side)
    frame[height // 3:height // 3 + side, x:x + side] = (255, 255, 0)
    return frame


def frame_marker(frame: np.ndarray) -> int:
    """Recover ``index % 8`` from a synthetic frame's top-left background (robust to lossy coding)."""
    level = float(frame[0, 0, 0])
    return round(level / 30) % 8


def write_video(path: str | os.PathLike, n_frames: int = 24, height: int = 48, width: int = 64,
                fps: int = 8, codec: str | None = None, pix_fmt: str | None = None,
                garble_from: int | None = None, texture: bool = False) -> Path:
    """Encode ``n_frames`` synthetic frames; the container follows the suffix.

    ``garble_from``: replace the bytes of every packet from that one on with noise (a file whose container is
    intact but whose frames cannot be decoded from there). ``texture``: add a drifting noise pattern, so the
    frames compress like camera footage rather than flat colour (for benchmarks).
    """
    path = Path(path)
    default_codec, default_pix = CODECS.get(path.suffix.lstrip("."), ("libx264", "yuv420p"))
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec or default_codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt or default_pix
        muxed = 0

        def mux(packets) -> None:
            nonlocal muxed
            for packet in packets:
                if garble_from is not None and muxed >= garble_from and packet.size:
                    memoryview(packet)[:] = rng.integers(0, 256, packet.size, dtype=np.uint8).tobytes()
                container.mux(packet)
                muxed += 1

        noise = rng.integers(0, 48, (height, 2 * width, 3), dtype=np.uint8) if texture else None
        for i in range(n_frames):
            frame = synthetic_frame(i, height, width)
            if noise is not None:
                shift = (2 * i) % width
                frame = np.clip(frame.astype(np.int16) + noise[:, shift:shift + width], 0, 255).astype(np.uint8)
            mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        mux(stream.encode())
    return path


def write_audio_only(path: str | os.PathLike, seconds: float = 1.0, rate: int = 16000) -> Path:
    """An AAC file (``.m4a``) with no video stream."""
    path = Path(path)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=rate)
        for i in range(int(seconds * rate / 1024)):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = rate, i * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_image(path: str | os.PathLike, height: int = 60, width: int = 80, index: int = 3) -> Path:
    path = Path(path)
    Image.fromarray(synthetic_frame(index, height, width)).save(path)
    return path


def truncate(src: str | os.PathLike, dst: str | os.PathLike, fraction: float = 0.5) -> Path:
    """Copy the first ``fraction`` of ``src``'s bytes to ``dst`` (a download cut short)."""
    data = Path(src).read_bytes()
    Path(dst).write_bytes(data[: int(len(data) * fraction)])
    return Path(dst)


def overwrite_middle(src: str | os.PathLike, dst: str | os.PathLike, start: float = 0.5,
                     length: float = 0.25) -> Path:
    """Copy ``src`` with a stretch of its bytes (from ``start``, ``length`` of the size) replaced by noise."""
    data = bytearray(Path(src).read_bytes())
    a, n = int(len(data) * start), int(len(data) * length)
    data[a:a + n] = np.random.default_rng(0).integers(0, 256, n, dtype=np.uint8).tobytes()
    Path(dst).write_bytes(bytes(data))
    return Path(dst)
