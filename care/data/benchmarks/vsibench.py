"""VSI-Bench (nyu-visionx/VSI-Bench on Hugging Face): spatial questions on indoor-scene videos.

Layout under the root, as published (the three scene archives unpack into their own folders)::

    test-00000-of-00001.parquet         columns id, dataset, scene_name, question_type, question, options,
                                        ground_truth
    <dataset>/<scene_name>.mp4          dataset = arkitscenes | scannet | scannetpp

Only the multiple-choice question types are evaluated (``options`` lettered ``"A. ..."``; ``ground_truth`` the
gold letter, or the gold option's text, which is mapped to its letter). Level = ``question_type`` (e.g.
``object_rel_distance``, ``route_planning``). Numerical questions (``object_counting``, ``object_abs_distance``,
``object_size_estimation``, ``room_size_estimation``: no options, scored by mean relative accuracy in the
reference evaluation) are rejects ``not supported: ...``.
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

_LEVEL = re.compile(r"[A-Za-z0-9_\-]+")


def annotation_files(root: Path) -> list[Path]:
    return sorted(root.glob("test-*.parquet"))


def read(root: Path) -> LoadResult:
    return read_parquet_rows(annotation_files(root), lambda path, i, row: _sample(root, path, i, row))


def _sample(root: Path, path: Path, row_no: int, row: dict) -> Sample:
    question_type = text_field(row, "question_type")
    if row.get("options") is None:
        raise RowError(f"not supported: numerical question ({question_type}); the letter rule cannot score it")
    if not _LEVEL.fullmatch(question_type):
        raise RowError(f"field 'question_type' must be letters, digits, '_' or '-', got {question_type!r}")
    options = unlettered(check_options(row["options"], "options"), lambda i: f"field 'options[{i}]'")
    gold = text_field(row, "ground_truth").strip()
    if gold not in LETTERS[: len(options)]:
        if options.count(gold) != 1:
            raise RowError(f"field 'ground_truth' must be an option letter or one option's text, got {gold!r}")
        gold = LETTERS[options.index(gold)]
    if "id" not in row or row["id"] is None:
        raise RowError("missing field 'id'")
    video = media_path(root, f"{text_field(row, 'dataset')}/{text_field(row, 'scene_name')}.mp4", "scene_name")
    return Sample(sample_id=f"vsibench-{row['id']}", question=text_field(row, "question"), options=options,
                  answer=gold, video=video, image=None, split=question_type, source_file=str(path), line=row_no,
                  meta={"benchmark": "vsibench", "dataset": row.get("dataset")})


BENCHMARK = Benchmark(
    name="vsibench", title="VSI-Bench", download="https://huggingface.co/datasets/nyu-visionx/VSI-Bench",
    layout="test-*.parquet and <dataset>/<scene_name>.mp4 (unzip arkitscenes.zip, scannet.zip, scannetpp.zip "
    "into the root)", annotation_files=annotation_files, read=read)
