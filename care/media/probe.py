"""Container-level checks with PyAV (demux only, no decoding) and the exact quarantine reasons.

PyAV is used to look at a file before decord touches it: PyAV reports every failure as a Python exception,
so a bad file becomes a one-line reason here rather than a crash or a silent short read in decord (decord
0.6 returns fewer frames than the file has for a cut or corrupted Matroska file, without an error).

Reasons (``MediaError.kind``: message), one line each:

* ``missing``: missing file
* ``zero_byte``: zero-byte file
* ``not_video``: not a video (no recognised container)
* ``audio_only``: audio-only (no video stream)
* ``truncated``: truncated (container index missing) | truncated (file ends at 0.38 s of 3.00 s)
* ``undecodable``: undecodable midway (container data unreadable after 0.50 s of 3.00 s) |
  undecodable midway (decoder error at frame 10 of 24: ...) | undecodable midway (decoder produced 10 of 24 frames)
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import av

from care.errors import CareError

# Leading bytes of the containers a video can come in; a file that starts like one of these but cannot be
# opened was cut short (e.g. an MP4 whose index, written last, is missing), not a non-video.
_SIGNATURES = (
    (4, b"ftyp"), (4, b"moov"), (4, b"mdat"), (4, b"free"), (4, b"wide"), (4, b"skip"),  # MP4 / MOV
    (0, b"\x1a\x45\xdf\xa3"),  # Matroska / WebM (EBML)
    (0, b"RIFF"),  # AVI
    (0, b"FLV"), (0, b"OggS"), (0, b"\x00\x00\x01\xba"), (0, b"\x00\x00\x01\xb3"),  # FLV, Ogg, MPEG-PS/ES
)


class MediaError(CareError):
    """A media file that cannot be used; ``kind`` is a short code, ``reason`` the one-line message."""

    def __init__(self, kind: str, reason: str, path: str | os.PathLike = ""):
        self.kind, self.reason, self.path = kind, reason, str(path)
        super().__init__(f"{path}: {reason}; the file is quarantined (replace or remove it)" if path else reason)


@dataclass(frozen=True)
class VideoInfo:
    """What the container says, checked against what can be demuxed."""

    n_frames: int  # video packets present (one per frame)
    fps: float
    duration: float  # seconds
    width: int
    height: int
    codec: str
    container: str

    def as_dict(self) -> dict:
        return asdict(self)


def check_file(path: Path) -> None:
    """Raise ``MediaError`` for a missing or empty file."""
    if not path.is_file():
        raise MediaError("missing", "missing file", path)
    if path.stat().st_size == 0:
        raise MediaError("zero_byte", "zero-byte file", path)


def has_container_signature(path: Path) -> bool:
    head = path.read_bytes()[:16] if path.stat().st_size < 16 else _read_head(path)
    if len(head) >= 8 and head[0] == 0x47 and path.stat().st_size > 188:  # MPEG-TS sync byte
        with path.open("rb") as f:
            f.seek(188)
            if f.read(1) == b"\x47":
                return True
    return any(head[off:off + len(sig)] == sig for off, sig in _SIGNATURES)


def _read_head(path: Path) -> bytes:
    with path.open("rb") as f:
        return f.read(16)


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Open ``path`` with PyAV and demux its first video stream; raise ``MediaError`` with the exact reason."""
    path = Path(path)
    check_file(path)
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except (av.FFmpegError, OSError, UnicodeDecodeError) as exc:
        if has_container_signature(path):
            raise MediaError("truncated", "truncated (container index missing)", path) from exc
        raise MediaError("not_video", "not a video (no recognised container)", path) from exc
    with container:
        streams = [s for s in container.streams if s.type == "video"]
        if not streams:
            kinds = sorted({s.type for s in container.streams})
            if "audio" in kinds:
                raise MediaError("audio_only", "audio-only (no video stream)", path)
            raise MediaError("not_video", "not a video (no video stream)", path)
        stream = streams[0]
        fps = float(stream.average_rate or stream.guessed_rate or stream.base_rate or 0) or 25.0
        declared = container.duration / 1e6 if container.duration else 0.0
        n, end_time, end_byte = _demux(container, stream, path, declared)
        duration = declared or n / fps
        _check_complete(path, stream.frames, n, end_time, end_byte, duration, fps)
        ctx = stream.codec_context
        return VideoInfo(n_frames=n, fps=fps, duration=duration, width=ctx.width, height=ctx.height,
                         codec=ctx.name, container=container.format.name)


def _demux(container, stream, path: Path, declared: float) -> tuple[int, float, int]:
    """Count the stream's packets; return (count, end time in s, byte offset after the last packet)."""
    n, end_time, end_byte = 0, 0.0, 0
    try:
        for packet in container.demux(stream):
            if packet.size == 0:
                continue  # flush packet at the end of the stream
            n += 1
            if packet.pts is not None and packet.time_base is not None:
                end_time = max(end_time, float((packet.pts + (packet.duration or 0)) * packet.time_base))
            if packet.pos is not None and packet.pos >= 0:
                end_byte = max(end_byte, packet.pos + packet.size)
    except av.FFmpegError as exc:
        raise MediaError("undecodable", f"undecodable midway (container read error after {end_time:.2f} s "
                         f"of {declared:.2f} s: {_short(exc)})", path) from exc
    if n == 0:
        raise MediaError("truncated", "truncated (no video frames in the file)", path)
    return n, end_time, end_byte


def _check_complete(path: Path, declared_frames: int, n: int, end_time: float, end_byte: int,
                    duration: float, fps: float) -> None:
    """Frames missing against the container's own count or duration: cut short, or lost in the middle."""
    short_by_count = declared_frames > 0 and n < declared_frames
    # Allow a frame or two (or 5%) of slack: container durations are rounded and may include audio.
    slack = max(2.0 / fps, 0.05 * duration)
    short_by_time = end_time > 0 and end_time < duration - slack
    if not (short_by_count or short_by_time):
        return
    size = path.stat().st_size
    # The demuxer stopped at the end of the file: the file was cut. It stopped with bytes left: corrupt.
    if end_byte == 0 or size - end_byte <= 64 + size // 50:
        raise MediaError("truncated", f"truncated (file ends at {end_time:.2f} s of {duration:.2f} s)", path)
    raise MediaError("undecodable", f"undecodable midway (container data unreadable after {end_time:.2f} s "
                     f"of {duration:.2f} s)", path)


def _short(exc: BaseException) -> str:
    """An FFmpeg error as one short line."""
    text = getattr(exc, "strerror", None) or str(exc)
    return " ".join(str(text).split())[:120]
