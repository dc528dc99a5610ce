"""``FrameCache``: fill the Parquet frame cache from media files, and read a sample back in one call.

Training, evaluation and rollouts read only this cache (``FrameCache.load`` / ``care.media.dataset``); no stage
after preprocessing decodes video. Shapes: frames ``(T, H, W, 3)`` uint8, image ``(H, W, 3)`` uint8.
"""

from __future__ import annotations

import os
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from cachetools import LRUCache

from care.data.schema import Sample
from care.media.cache import (
    CacheCorruptError,
    CacheMissError,
    PathLinks,
    cache_key,
    decode_frames,
    file_sha256,
    read_entry,
    write_entry,
)
from care.media.decode import decode_video, load_image
from care.media.probe import MediaError
from care.media.sampling import FrameSampling


def _memory_limit_bytes() -> int:
    return int(float(os.environ.get("CARE_FRAME_MEMORY_MB", "256")) * 2**20)


class DecodedEntries:
    """Recently read entries, verified and decoded, kept in memory (least recently used out first).

    The rollout, scoring and optimisation stages of one RL iteration read the same prompts' frames in turn; this
    serves the second and third reads from memory. Keyed by the entry file's (path, inode, size, mtime): entries
    are immutable and replaced only by renaming a new file into place, so a key never names changed bytes. Every
    reader gets its own copy of the arrays (a memory copy costs far less than reading and verifying the entry),
    so no reader can change what another one sees. ``CARE_FRAME_MEMORY_MB`` bounds the memory (default 256;
    0 turns it off).
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._items: LRUCache | None = None

    def _cache(self) -> LRUCache | None:
        limit = _memory_limit_bytes()
        if limit <= 0:
            return None
        if self._items is None or self._items.maxsize != limit:
            self._items = LRUCache(maxsize=limit, getsizeof=lambda v: v[0].nbytes + v[1].nbytes + 64)
        return self._items

    def read(self, entry: Path) -> tuple[np.ndarray, np.ndarray, float]:
        st = entry.stat()
        key = (str(entry), st.st_ino, st.st_size, st.st_mtime_ns)
        with self._lock:
            cache = self._cache()
            hit = cache.get(key) if cache is not None else None
        if hit is None:
            table, meta = read_entry(entry)
            hit = (decode_frames(table), table.column("timestamp").to_numpy(), float(meta.get("sample_fps", 0.0)))
            with self._lock:
                if cache is not None and hit[0].nbytes + hit[1].nbytes < cache.maxsize:
                    cache[key] = hit
        return hit[0].copy(), hit[1].copy(), hit[2]

    def clear(self) -> None:
        with self._lock:
            self._items = None


DECODED = DecodedEntries()


@dataclass(frozen=True)
class CachedSample:
    """What a stage needs of a sample's media. ``frames``/``timestamps``/``fps`` are None for image-only
    samples, ``image`` for video-only ones."""

    sample_id: str
    frames: np.ndarray | None  # (T, H, W, 3) uint8
    timestamps: np.ndarray | None  # (T,) float64 seconds in the source clip
    fps: float | None  # effective sampled frames per second
    image: np.ndarray | None  # (H, W, 3) uint8, the current observation


@dataclass
class MediaResult:
    """Outcome of caching one media file (small and picklable: crosses process boundaries)."""

    path: str
    kind: str  # "video" | "image"
    status: str = "ok"  # "ok" | "quarantined"
    reason: str = ""
    error_kind: str = ""
    sha256: str = ""
    size_bytes: int = 0
    cache_key: str = ""
    cache_file: str = ""
    cache_hit: bool = False
    decoder: str = ""
    note: str = ""
    n_frames: int = 0  # sampled
    sample_fps: float = 0.0
    height: int = 0  # resized
    width: int = 0
    source: dict = field(default_factory=dict)  # n_frames, fps, duration, width, height, codec, container

    def as_dict(self) -> dict:
        return asdict(self)


class FrameCache:
    """The frame cache under ``root`` for one ``FrameSampling``; paths of samples resolve under ``data_root``."""

    def __init__(self, root: str | os.PathLike, sampling: FrameSampling, data_root: str | os.PathLike | None = None):
        self.root = Path(root)
        self.sampling = sampling
        self.data_root = Path(data_root) if data_root is not None else None
        self.links = PathLinks(self.root)

    def entry_path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.parquet"

    def resolve(self, relpath: str) -> Path:
        path = Path(relpath)
        if not path.is_absolute() and self.data_root is not None:
            path = self.data_root / path
        return path

    def _key_of(self, path: Path, kind: str) -> str:
        return cache_key(self.links.sha256(path), kind, self.sampling)

    # -- writing ---------------------------------------------------------------------------------------------
    def put(self, path: str | os.PathLike, kind: str) -> MediaResult:
        """Decode ``path`` and write its entry unless present; bad media gives a quarantined result."""
        path = Path(path)
        result = MediaResult(path=str(path), kind=kind)
        try:
            if not path.is_file():
                raise MediaError("missing", "missing file", path)
            result.size_bytes = path.stat().st_size
            result.sha256 = file_sha256(path)
            self.links.put(path, result.sha256)
            key = cache_key(result.sha256, kind, self.sampling)
            result.cache_key, target = key, self.entry_path(key)
            result.cache_file = str(target)
            problem = self._entry_problem(result, target) if target.is_file() else "missing"
            if not problem:
                result.cache_hit = True
            elif kind == "video":
                self._write_video(result, path, target)
            else:
                self._write_image(result, path, target)
            if problem != "missing" and not result.cache_hit:
                result.note = f"rebuilt: {problem}"
        except MediaError as exc:
            result.status, result.reason, result.error_kind = "quarantined", exc.reason, exc.kind
            result.cache_key = result.cache_file = ""
        return result

    def _write_video(self, result: MediaResult, path: Path, target: Path) -> None:
        video = decode_video(path, self.sampling)
        info = video.info.as_dict()
        write_entry(target, video.frames, key=result.cache_key, media_sha256=result.sha256, kind="video",
                    indices=video.indices, timestamps=video.timestamps, sampling=self.sampling,
                    meta={"sample_fps": video.sample_fps, "source": info, "decoder": video.decoder})
        t, h, w, _ = video.frames.shape
        result.decoder, result.note, result.source = video.decoder, video.note, info
        result.n_frames, result.sample_fps, result.height, result.width = t, video.sample_fps, h, w

    def _write_image(self, result: MediaResult, path: Path, target: Path) -> None:
        image = load_image(path, self.sampling)
        write_entry(target, image[None], key=result.cache_key, media_sha256=result.sha256, kind="image",
                    indices=[0], timestamps=[0.0], sampling=self.sampling, meta={"sample_fps": 0.0, "source": {}})
        result.decoder, result.n_frames = "pil", 1
        result.height, result.width = image.shape[:2]

    def _entry_problem(self, result: MediaResult, target: Path) -> str:
        """Fill ``result`` from an existing entry; why it cannot be used ("" when it can; it is then rewritten)."""
        try:
            self._fill_from_entry(result, target)
        except CacheCorruptError as exc:
            return str(exc)
        return ""

    def _fill_from_entry(self, result: MediaResult, target: Path) -> None:
        table, meta = read_entry(target)
        result.n_frames = table.num_rows
        result.height, result.width = table.column("height")[0].as_py(), table.column("width")[0].as_py()
        result.sample_fps, result.source = meta.get("sample_fps", 0.0), meta.get("source", {})
        result.decoder = meta.get("decoder", "pil" if result.kind == "image" else "")

    # -- reading ---------------------------------------------------------------------------------------------
    def load_media(self, path: str | os.PathLike, kind: str) -> tuple[np.ndarray, np.ndarray, float]:
        """Frames ``(T, H, W, 3)``, timestamps ``(T,)`` and sampled fps of one cached media file."""
        path = Path(path)
        if not path.is_file():
            raise CacheMissError(f"{path}: media file not found; the frame cache is keyed by file content")
        entry = self.entry_path(self._key_of(path, kind))
        if not entry.is_file():
            raise CacheMissError(f"{path}: not in the frame cache {self.root} for these sampling parameters "
                                 "(quarantined, or not preprocessed: run `care preprocess`)")
        return DECODED.read(entry)

    def load(self, sample: Sample) -> CachedSample:
        """The sample's sampled frames, timestamps, sampled fps and current-observation image, from the cache."""
        frames = timestamps = fps = None
        if sample.video:
            frames, timestamps, fps = self.load_media(self.resolve(sample.video), "video")
        image = self.load_media(self.resolve(sample.image), "image")[0][0] if sample.image else None
        return CachedSample(sample_id=sample.sample_id, frames=frames, timestamps=timestamps, fps=fps,
                            image=image)

    def contains(self, sample: Sample) -> bool:
        """True when every media file of ``sample`` is cached (a quarantined file never is)."""
        paths = [(sample.video, "video")] if sample.video else []
        if sample.image:
            paths.append((sample.image, "image"))
        for rel, kind in paths:
            path = self.resolve(rel)
            if not path.is_file() or not self.entry_path(self._key_of(path, kind)).is_file():
                return False
        return True
