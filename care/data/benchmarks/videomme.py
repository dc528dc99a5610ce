"""Video-MME (lmms-lab/Video-MME on Hugging Face): 900 videos, 2,700 four-option questions.

Layout under the root, as published (the ``videos_chunked_*.zip`` archives unpack into ``data/``)::

    videomme/test-00000-of-00001.parquet  columns video_id, duration, domain, sub_category, url, videoID,
                                          question_id, task_type, question, options, answer
    data/<videoID>.mp4

``options`` are lettered texts (``"A. ..."``, in letter order) and ``answer`` is the gold letter; the option
texts are kept without their ``"A. "`` prefix (the prompt letters them again, giving the same text). Level = the
``duration`` class (``short``, ``medium``, ``long``); ``domain`` and ``task_type`` stay in ``meta``. Subtitles
are not used (the reference evaluation has none).
"""

from __future__ import annotations

import re
from pathlib import Path

from care.data.annotations import LoadResult, RowError, text_field
from care.data.benchmarks.common import (
    LETTERS,
    Benchmark,
    check_options,
    media_path,
    read_parquet_rows,
    unlettered,
)
from care.data.schema import Sample

DURATIONS = ("short", "medium", "long")


def annotation_files(root: Path) -> list[Path]:
    return sorted((root / "videomme").glob("test-*.parquet"))


def read(root: Path) -> LoadResult:
    return read_parquet_rows(annotation_files(root), lambda path, i, row: _sample(root, path, i, row))


def _sample(root: Path, path: Path, row_no: int, row: dict) -> Sample:
    question_id = text_field(row, "question_id")
    duration = text_field(row, "duration")
    if duration not in DURATIONS:
        raise RowError(f"field 'duration' must be one of {', '.join(DURATIONS)}, got {duration!r}")
    lettered = check_options(row.get("options"), "options") if "options" in row else None
    if lettered is None:
        raise RowError("missing field 'options'")
    options = unlettered(lettered, lambda i: f"field 'options[{i}]'")
    answer = text_field(row, "answer").strip()
    if answer not in LETTERS[: len(options)]:
        raise RowError(f"field 'answer' must be one of {', '.join(LETTERS[: len(options)])}, got {answer!r}")
    video = media_path(root, f"data/{text_field(row, 'videoID')}.mp4", "videoID")
    meta = {"benchmark": "videomme", "domain": row.get("domain"), "sub_category": row.get("sub_category"),
            "task_type": row.get("task_type"), "video_id": row.get("video_id")}
    return Sample(sample_id=question_id, question=text_field(row, "question"), options=options,
                  answer=answer, video=video, image=None, split=duration, source_file=str(path), line=row_no,
                  meta=meta)


BENCHMARK = Benchmark(
    name="videomme", title="Video-MME", download="https://huggingface.co/datasets/lmms-lab/Video-MME",
    layout="videomme/test-*.parquet and data/<videoID>.mp4 (unzip videos_chunked_*.zip into the root)",
    annotation_files=annotation_files, read=read)
