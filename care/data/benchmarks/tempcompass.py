"""TempCompass (lmms-lab/TempCompass on Hugging Face), multiple-choice part: 1,580 questions on 410 videos
about five temporal aspects.

Layout under the root, as published (``tempcompass_videos.zip`` unpacks into ``videos/``)::

    multi-choice/test-00000-of-00001.parquet  columns video_id, question, answer, dim
    videos/<video_id>.mp4

``question`` is the question on its first line, then one lettered option per line (``"A. ..."``, in letter
order); ``answer`` is the lettered gold option (``"B. clockwise"``), whose text must be that option's. Level =
``dim`` (``action``, ``speed``, ``direction``, ``order``, ``attribute_change``). The yes/no, caption-matching and
captioning parts are not multiple-choice questions and are not read. A row has no id of its own, so the sample id
is ``<dim>/<video_id>/<row>``.
"""

from __future__ import annotations

import re
from pathlib import Path

from care.data.annotations import LoadResult, RowError, text_field
from care.data.benchmarks.common import (
    LETTERED,
    LETTERS,
    Benchmark,
    check_options,
    media_path,
    read_parquet_rows,
    unlettered,
)
from care.data.schema import Sample


def annotation_files(root: Path) -> list[Path]:
    return sorted((root / "multi-choice").glob("test-*.parquet"))


def read(root: Path) -> LoadResult:
    return read_parquet_rows(annotation_files(root), lambda path, i, row: _sample(root, path, i, row))


def _sample(root: Path, path: Path, row_no: int, row: dict) -> Sample:
    video_id = text_field(row, "video_id")
    dim = text_field(row, "dim").strip()
    if not dim:
        raise RowError("field 'dim' must be a non-empty string")
    lines = [line.strip() for line in text_field(row, "question").split("\n") if line.strip()]
    if not lines:
        raise RowError("field 'question' is empty")
    question, lines = lines[0], lines[1:]
    options = unlettered(check_options(lines, "question (its option lines)"),
                         lambda i: f"field 'question': option line {i + 1}")
    answer = text_field(row, "answer").strip()
    match = LETTERED.match(answer)
    if not match or match.group(1) not in LETTERS[: len(options)]:
        raise RowError(f"field 'answer' must be a lettered option ('A. ...' to "
                       f"'{LETTERS[len(options) - 1]}. ...'), got {answer!r}")
    letter, text = match.group(1), match.group(2).strip()
    if text and text != options[LETTERS.index(letter)]:
        raise RowError(f"field 'answer' {answer!r} does not match option {letter} "
                       f"{options[LETTERS.index(letter)]!r} of the question")
    video = media_path(root, f"videos/{video_id}.mp4", "video_id")
    return Sample(sample_id=f"{dim}/{video_id}/{row_no}", question=question, options=options, answer=letter,
                  video=video, image=None, split=dim, source_file=str(path), line=row_no,
                  meta={"benchmark": "tempcompass", "video_id": video_id, "dim": dim})


BENCHMARK = Benchmark(
    name="tempcompass", title="TempCompass", download="https://huggingface.co/datasets/lmms-lab/TempCompass",
    layout="multi-choice/test-*.parquet and videos/<video_id>.mp4 (unzip tempcompass_videos.zip into the root)",
    annotation_files=annotation_files, read=read)
