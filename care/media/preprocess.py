"""The preprocessing stage's config and its pure parts: resolve annotation files, list distinct media,
shard them, key a shard by content, and sum shard results into the run summary.

The Prefect wiring is in ``tasks/preprocess.py`` and ``flows/preprocess.py``; everything here is plain Python.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

from pydantic import Field

from care.config import StageConfig
from care.data.schema import ANNOTATION_FILES, Sample
from care.errors import CareError
from care.media.cache import CACHE_VERSION
from care.media.sampling import FrameSampling


class PreprocessConfig(StageConfig):
    """Options of ``care preprocess`` / the ``preprocess`` flow."""

    data_root: str = Field(description="Dataset root in the SEED-Bench-R1 layout (annotations/, videos/, images/).")
    annotations: list[str] = Field(
        default_factory=lambda: list(ANNOTATION_FILES),
        description="Annotation files: paths, names under <data_root>/annotations, or split names (train, L1...).",
    )
    sampling: FrameSampling = Field(default_factory=FrameSampling, description="Frame sampling and storage.")
    shard_size: int = Field(64, ge=1, description="Media files per decode task (the unit of caching and retry).")
    workers: int = Field(2, ge=1, description="Decoding processes per shard.")
    seed: int = Field(0, description="Seed of the training-option shuffle (passed to the annotation loader).")
    shuffle_options: bool = Field(True, description="Shuffle training options (see care.data.annotations).")
    benchmark: str | None = Field(
        None, description="A transfer benchmark (care.data.benchmarks) in its published layout under data_root; "
        "`annotations` then names its levels (empty = all).")


class PreprocessError(CareError):
    """An annotation file or the data root cannot be used."""


def resolve_annotation(name: str, data_root: str | os.PathLike) -> Path:
    """A path as given, else ``<data_root>/annotations/<name>``, else a split name's standard file."""
    ann_dir = Path(data_root) / "annotations"
    for candidate in (Path(name), ann_dir / name, ann_dir / ANNOTATION_FILES.get(name, "\0")):
        if candidate.is_file():
            return candidate.resolve()
    raise PreprocessError(f"{name}: annotation file not found (looked at {name} and {ann_dir / name}); "
                          f"give a path, a file in {ann_dir}, or one of {', '.join(ANNOTATION_FILES)}")


def sample_media(sample: Sample, data_root: str | os.PathLike) -> list[tuple[str, str]]:
    """``(absolute path, kind)`` of every media file a sample needs."""
    root = Path(data_root).resolve()
    media = [(str(root / sample.video), "video")] if sample.video else []
    return [*media, (str(root / sample.image), "image")] if sample.image else media


def distinct_media(samples: Sequence[Sample], data_root: str | os.PathLike) -> list[tuple[str, str]]:
    """Each media file once, in first-seen order."""
    seen: dict[tuple[str, str], None] = {}
    for sample in samples:
        for item in sample_media(sample, data_root):
            seen.setdefault(item, None)
    return list(seen)


def shards(items: Sequence, size: int) -> list[list]:
    """
    >>> shards([1, 2, 3, 4, 5], 2)
    [[1, 2], [3, 4], [5]]
    """
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


def shard_fingerprint(items: Sequence[tuple[str, str]], sampling: FrameSampling) -> str:
    """Content key of a shard: each file's path, size and mtime, the sampling parameters, the cache version.

    A changed, added or removed file, or a changed parameter, gives a new key (size + mtime_ns stand in for the
    bytes: hashing every video to build a key would cost as much as the work it skips).
    """
    parts = []
    for path, kind in items:
        try:
            st = os.stat(path)
            parts.append((path, kind, st.st_size, st.st_mtime_ns))
        except OSError:
            parts.append((path, kind, None, None))
    # ``temporal`` positions the frames in the model, it does not change them
    params = sampling.model_dump(exclude={"temporal"})
    blob = json.dumps({"v": CACHE_VERSION, "items": parts, "sampling": params}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def summarize(shard_reports: Sequence[dict], validation: dict, run_id: str) -> dict:
    """The run summary from shard reports (see ``tasks.preprocess.cache_shard``) and the validation manifest."""
    results = [r for report in shard_reports for r in report["results"]]
    bad = {r["path"]: r["reason"] for r in results if r["status"] == "quarantined"}
    excluded = [s for s in validation["sample_media"] if any(p in bad for p in s["media"])]
    return {
        "run_id": run_id,
        "samples": validation["n_samples"],
        "rows_rejected": validation["n_rejected"],
        "media": len(results),
        "ok": sum(r["status"] == "ok" for r in results),
        "quarantined": len(bad),
        "cache_hits": sum(bool(r["cache_hit"]) for r in results),
        "shards": len(shard_reports),
        "shards_skipped": sum(report["run_id"] != run_id for report in shard_reports),
        "samples_excluded": len(excluded),
        "quarantine_reasons": dict(sorted(bad.items())),
    }


def format_summary(summary: dict) -> str:
    lines = [
        f"preprocess: {summary['media']} media files: {summary['ok']} ok, {summary['quarantined']} quarantined, "
        f"{summary['cache_hits']} cache hits; {summary['shards_skipped']}/{summary['shards']} shards skipped "
        "(unchanged since a finished run)",
        f"  {summary['samples']} samples valid, {summary['rows_rejected']} rows rejected, "
        f"{summary['samples_excluded']} samples excluded (quarantined media)",
    ]
    lines += [f"  quarantined {path}: {reason}" for path, reason in summary["quarantine_reasons"].items()]
    return "\n".join(lines)
