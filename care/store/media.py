"""Catalog tables of preprocessing: ``videos`` (every media file seen, ok or quarantined), ``rejects``
(annotation rows that failed validation) and the ``frames`` view over the Parquet frame cache.

``videos`` holds images too (``kind = 'image'``): the current-observation image of a sample is media that
can be bad in the same ways. One row per (data root, path); re-running preprocessing replaces it.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from care.store.catalog import connect, insert_rows, query, register_schema

VIDEOS_DDL = """
CREATE TABLE IF NOT EXISTS videos (
    id VARCHAR PRIMARY KEY,          -- sha256(absolute path)[:16]
    path VARCHAR NOT NULL,           -- absolute path
    rel_path VARCHAR,                -- path relative to the data root
    data_root VARCHAR,
    kind VARCHAR NOT NULL,           -- video | image
    sha256 VARCHAR,                  -- of the file's bytes (NULL when missing)
    size_bytes BIGINT,
    status VARCHAR NOT NULL,         -- ok | quarantined
    reason VARCHAR,                  -- one-line quarantine reason
    error_kind VARCHAR,              -- missing | zero_byte | not_video | truncated | audio_only | undecodable | ...
    n_frames_source INTEGER, fps DOUBLE, duration DOUBLE, width INTEGER, height INTEGER, codec VARCHAR,
    decoder VARCHAR,                 -- decord | pyav | pil
    n_frames_sampled INTEGER, sample_fps DOUBLE, frame_height INTEGER, frame_width INTEGER,
    cache_key VARCHAR, cache_file VARCHAR, cache_hit BOOLEAN,
    run_id VARCHAR, updated_at TIMESTAMP
)"""

REJECTS_DDL = """
CREATE TABLE IF NOT EXISTS rejects (
    id VARCHAR PRIMARY KEY, run_id VARCHAR, file VARCHAR NOT NULL, line INTEGER, reason VARCHAR NOT NULL,
    created_at TIMESTAMP
)"""

REJECT_COLUMNS = ("id", "run_id", "file", "line", "reason", "created_at")

register_schema("media", [VIDEOS_DDL, REJECTS_DDL])

VIDEO_COLUMNS = (
    "id", "path", "rel_path", "data_root", "kind", "sha256", "size_bytes", "status", "reason", "error_kind",
    "n_frames_source", "fps", "duration", "width", "height", "codec", "decoder", "n_frames_sampled",
    "sample_fps", "frame_height", "frame_width", "cache_key", "cache_file", "cache_hit", "run_id", "updated_at",
)


def media_id(path: str | os.PathLike) -> str:
    return hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:16]


def video_row(result: dict, data_root: str | os.PathLike | None, run_id: str) -> tuple:
    """A ``videos`` row from a ``MediaResult.as_dict()``."""
    src = result.get("source") or {}
    path = Path(result["path"]).resolve()
    rel = os.path.relpath(path, Path(data_root).resolve()) if data_root else None
    return (
        media_id(path), str(path), rel, str(data_root) if data_root else None, result["kind"],
        result.get("sha256") or None, result.get("size_bytes"), result["status"], result.get("reason") or None,
        result.get("error_kind") or None, src.get("n_frames"), src.get("fps"), src.get("duration"),
        src.get("width"), src.get("height"), src.get("codec"), result.get("decoder") or None,
        result.get("n_frames") or None, result.get("sample_fps") or None, result.get("height") or None,
        result.get("width") or None, result.get("cache_key") or None, result.get("cache_file") or None,
        bool(result.get("cache_hit")), run_id, datetime.now(UTC).replace(tzinfo=None),
    )


def record_media(results: Sequence[dict], *, data_root: str | os.PathLike | None, run_id: str,
                 path: str | os.PathLike | None = None) -> int:
    """Upsert ``videos`` rows for ``MediaResult`` dicts; return the count."""
    rows = [video_row(r, data_root, run_id) for r in results]
    return insert_rows("videos", VIDEO_COLUMNS, rows, key=("id",), path=path)


def record_rejects(rejects: Sequence[tuple[str, int, str]], *, run_id: str,
                   path: str | os.PathLike | None = None) -> int:
    """Append ``(file, line, reason)`` rows to ``rejects``."""
    now = datetime.now(UTC).replace(tzinfo=None)
    rows = [(uuid.uuid4().hex, run_id, f, line, reason, now) for f, line, reason in rejects]
    return insert_rows("rejects", REJECT_COLUMNS, rows, path=path)


def frames_glob(cache_dir: str | os.PathLike) -> str:
    return str(Path(cache_dir).resolve() / "*" / "*.parquet")


def refresh_frames_view(cache_dir: str | os.PathLike, *, path: str | os.PathLike | None = None) -> bool:
    """(Re)create the ``frames`` view over the cache's Parquet entries (absolute glob).

    DuckDB binds a view's files when it is created and refuses an empty glob, so the view exists only once the
    cache holds an entry; returns whether it was created.
    """
    if not any(Path(cache_dir).glob("*/*.parquet")):
        return False
    glob = frames_glob(cache_dir).replace("'", "''")  # a path, not a value: DDL cannot bind parameters
    with connect(path) as con:
        con.execute(f"CREATE OR REPLACE VIEW frames AS SELECT * FROM read_parquet('{glob}', union_by_name=true)")
    return True


def quarantined(*, path: str | os.PathLike | None = None) -> dict[str, str]:
    """Absolute path -> reason for every quarantined media file."""
    with connect(path) as con:
        rows = con.execute("SELECT path, reason FROM videos WHERE status = 'quarantined'").fetchall()
    return dict(rows)


def decoded_count(run_id: str, *, path: str | os.PathLike | None = None) -> int:
    """How many media files preprocessing run ``run_id`` really decoded: its ``ok`` ``videos`` rows that were not
    frame-cache hits (files of shards it skipped as unchanged are not counted either). Read-only."""
    sql = "SELECT count(*) FROM videos WHERE run_id = ? AND status = 'ok' AND NOT cache_hit"
    return query(sql, [run_id], path=path)[0][0]
