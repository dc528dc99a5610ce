"""The Parquet frame cache: decoded, sampled, resized frames, keyed by content and sampling parameters.

Layout under the cache root (``Workspace.frame_cache_dir``)::

    <root>/<key[:2]>/<key>.parquet   one entry: the frames of one media file (a video, or one image)
    <root>/links/<link>              path shortcut: sha256(path, size, mtime_ns) -> sha256 of the bytes

``key = sha256(CACHE_VERSION, media sha256, kind, sampling parameters)``: a changed file (new bytes) or
changed parameters give a new key, so stale frames are never returned; two files with the same bytes share one
entry. Entries are written to a temp file in the same folder and renamed into place (atomic on POSIX), so a
reader sees a whole entry or none, and concurrent writers of the same entry are harmless.

Entry columns, one row per sampled frame: ``cache_key, media_sha256, kind, frame`` (position in the sample),
``source_index, timestamp`` (seconds), ``height, width, codec, data`` (raw RGB bytes or a JPEG).
The Parquet footer holds ``care.meta`` (JSON): sampled fps, source frame count, fps, duration, parameters.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from care.errors import CareError
from care.media.sampling import FrameSampling

CACHE_VERSION = 1
META_KEY = b"care.meta"
DIGEST_KEY = b"care.sha256"  # of the meta JSON and every frame's bytes: verified on each read

SCHEMA = pa.schema([
    ("cache_key", pa.string()), ("media_sha256", pa.string()), ("kind", pa.string()),
    ("frame", pa.int32()), ("source_index", pa.int32()), ("timestamp", pa.float64()),
    ("height", pa.int32()), ("width", pa.int32()), ("codec", pa.string()), ("data", pa.binary()),
])


class CacheMissError(CareError):
    """A sample's media is not in the frame cache for these sampling parameters."""


class CacheCorruptError(CareError):
    """A frame-cache entry is unreadable, truncated or altered (its checksum does not match)."""


def entry_digest(meta_json: bytes, table: pa.Table) -> str:
    """sha256 over an entry's footer metadata and every row (frame bytes and their per-frame columns)."""
    digest = hashlib.sha256(meta_json)
    columns = [c for c in SCHEMA.names if c != "data"]
    for row, blob in zip(table.select(columns).to_pylist(), table.column("data").to_pylist(), strict=True):
        digest.update(json.dumps(row, sort_keys=True).encode())
        digest.update(len(blob).to_bytes(8, "little"))
        digest.update(blob)
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def cache_key(media_sha256: str, kind: str, sampling: FrameSampling) -> str:
    """Entry key for media bytes of ``kind`` ("video" or "image") under ``sampling``.

    >>> s = FrameSampling()
    >>> cache_key("ab" * 32, "video", s) == cache_key("ab" * 32, "video", s)
    True
    >>> cache_key("ab" * 32, "video", s) != cache_key("ab" * 32, "video", FrameSampling(fps=1.0))
    True
    """
    params = sampling.video_params() if kind == "video" else sampling.image_params()
    blob = json.dumps({"v": CACHE_VERSION, "sha256": media_sha256, "kind": kind, "params": params},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def encode_frame(frame: np.ndarray, codec: str, quality: int) -> bytes:
    if codec == "raw":
        return np.ascontiguousarray(frame).tobytes()
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def decode_frames(table: pa.Table) -> np.ndarray:
    """The ``data`` column of an entry as ``(T, H, W, 3)`` uint8."""
    h, w = table.column("height")[0].as_py(), table.column("width")[0].as_py()
    codec = table.column("codec")[0].as_py()
    data = table.column("data").combine_chunks()
    t = len(data)
    if codec == "raw":
        # Frames are stored back to back in one buffer: view them without a per-frame copy.
        offsets = np.frombuffer(data.buffers()[1], dtype=np.int32, count=t + 1, offset=data.offset * 4)
        flat = np.frombuffer(data.buffers()[2], dtype=np.uint8, count=int(offsets[-1] - offsets[0]),
                             offset=int(offsets[0]))
        return flat.reshape(t, h, w, 3).copy()
    return np.stack([np.asarray(Image.open(io.BytesIO(b.as_py())).convert("RGB")) for b in data])


def write_entry(path: Path, frames: np.ndarray, *, key: str, media_sha256: str, kind: str,
                indices: list[int], timestamps: list[float], sampling: FrameSampling, meta: dict) -> int:
    """Write one entry atomically (temp file + rename); return its size in bytes. ``frames``: (T, H, W, 3)."""
    t, h, w, _ = frames.shape
    codec = sampling.codec
    table = pa.table({
        "cache_key": [key] * t, "media_sha256": [media_sha256] * t, "kind": [kind] * t,
        "frame": list(range(t)), "source_index": indices, "timestamp": timestamps,
        "height": [h] * t, "width": [w] * t, "codec": [codec] * t,
        "data": [encode_frame(f, codec, sampling.jpeg_quality) for f in frames],
    }, schema=SCHEMA)
    full_meta = {"version": CACHE_VERSION, "kind": kind, "params": sampling.model_dump(), **meta}
    meta_json = json.dumps(full_meta).encode()
    table = table.replace_schema_metadata({META_KEY: meta_json, DIGEST_KEY: entry_digest(meta_json, table).encode()})
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        # zstd level 1: raw frames compress well at low levels; higher levels cost write time for little gain.
        pq.write_table(table, tmp, compression="zstd", compression_level=1, use_dictionary=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path.stat().st_size


def read_entry(path: Path) -> tuple[pa.Table, dict]:
    """An entry's table and its footer metadata, verified against the entry's checksum.

    Raises ``CacheCorruptError`` naming the file when it cannot be read (truncated, not Parquet) or its frames,
    timestamps or metadata differ from what was written. Entries written before checksums existed are read
    unverified.
    """
    try:
        table = pq.read_table(path)
        stored = table.schema.metadata or {}
        meta_json = stored.get(META_KEY, b"{}")
        meta = json.loads(meta_json)
        want = stored.get(DIGEST_KEY)
        ok = want is None or entry_digest(meta_json, table).encode() == want
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise CacheCorruptError(f"{path}: unreadable frame-cache entry ({' '.join(str(exc).split())[:120]}); "
                                "delete it and run `care preprocess` again to rebuild it") from None
    if not ok:
        raise CacheCorruptError(f"{path}: frame-cache entry fails its checksum (altered or corrupted); "
                                "delete it and run `care preprocess` again to rebuild it")
    return table, meta


@dataclass(frozen=True)
class PathLinks:
    """Shortcut from (path, size, mtime) to the sha256 of the file's bytes, so readers need not re-hash."""

    root: Path

    def _link(self, path: Path) -> Path | None:
        try:
            st = path.stat()
        except OSError:
            return None
        ident = f"{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}"
        return self.root / "links" / hashlib.sha256(ident.encode()).hexdigest()[:40]

    def get(self, path: Path) -> str | None:
        link = self._link(path)
        if link is None or not link.is_file():
            return None
        return link.read_text().strip() or None

    def put(self, path: Path, sha: str) -> None:
        link = self._link(path)
        if link is None:
            return
        link.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".link.", dir=link.parent)
        with os.fdopen(fd, "w") as f:
            f.write(sha)
        os.replace(tmp, link)

    def sha256(self, path: Path) -> str:
        """sha256 of ``path``'s bytes, from the link when the file is unchanged, else hashed (and linked)."""
        sha = self.get(path)
        if sha is None:
            sha = file_sha256(path)
            self.put(path, sha)
        return sha
