"""MMVU (yale-nlp/MMVU on Hugging Face): expert-domain video questions in 27 subjects, validation split.

Layout under the root, as published::

    validation.json                 a list of {"id", "video", "question_type", "metadata": {"subject", ...},
                                    "question", "choices": {"A": ..., "E": ...}, "answer"}
    videos/<Subject>/<n>.mp4        ``video`` is the file's download address, .../resolve/main/videos/<Subject>/<n>.mp4

Only ``question_type: multiple-choice`` rows are evaluated: options = the non-empty ``choices`` in letter order
(trailing empty ones dropped), ``answer`` = the gold letter. Level = the subject with every run of characters
other than letters, digits, ``_`` and ``-`` replaced by ``_`` (``Computer Science`` -> ``Computer_Science``, as its
video folder). Open-ended rows (free-text answer, empty choices) are rejects ``not supported: ...``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from care.data.annotations import LoadResult, RowError, json_kind, text_field
from care.data.benchmarks.common import (
    LETTERS,
    Benchmark,
    Collector,
    check_options,
    media_path,
)
from care.data.schema import Sample

_PUBLISHED_PREFIX = "/resolve/main/"


def annotation_files(root: Path) -> list[Path]:
    return [root / "validation.json"] if (root / "validation.json").is_file() else []


def read(root: Path) -> LoadResult:
    out = Collector()
    path = root / "validation.json"
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        out.reject(path, 0, f"not a readable JSON file ({exc}); re-download it")
        return out.result
    if not isinstance(rows, list):
        out.reject(path, 0, f"must hold a JSON list of rows, got {json_kind(rows)}")
        return out.result
    for i, row in enumerate(rows, start=1):
        out.add(path, i, lambda row=row, i=i: _sample(root, path, i, row))
    return out.result


def level_of(subject: str) -> str:
    """
    >>> level_of("Computer Science"), level_of("Art")
    ('Computer_Science', 'Art')
    """
    return re.sub(r"[^A-Za-z0-9_\-]+", "_", subject.strip()).strip("_")


def _sample(root: Path, path: Path, row_no: int, row) -> Sample:
    if not isinstance(row, dict):
        raise RowError(f"row must be a JSON object, got {json_kind(row)}")
    question_type = text_field(row, "question_type")
    if question_type != "multiple-choice":
        raise RowError(f"not supported: {question_type} question (free-text answer); the letter rule cannot "
                       "score it")
    choices = row.get("choices")
    if not isinstance(choices, dict):
        raise RowError(f"field 'choices' must be an object of letter -> text, got {json_kind(choices)}")
    texts = [choices.get(letter, "") for letter in LETTERS]
    while texts and not (isinstance(texts[-1], str) and texts[-1].strip()):
        texts.pop()
    options = check_options(texts, "choices")
    answer = text_field(row, "answer").strip()
    if answer not in LETTERS[: len(options)]:
        raise RowError(f"field 'answer' must be one of {', '.join(LETTERS[: len(options)])}, got {answer!r}")
    video = text_field(row, "video")
    if _PUBLISHED_PREFIX in video:  # the published address; the file sits at the same path under the root
        video = video.split(_PUBLISHED_PREFIX, 1)[1]
    metadata = row.get("metadata") if isinstance(row.get("metadata"), dict) else {}
    subject = level_of(text_field(metadata, "subject")) if "subject" in metadata else ""
    if not subject:
        raise RowError("missing field 'metadata.subject'")
    return Sample(sample_id=text_field(row, "id"), question=text_field(row, "question"), options=options,
                  answer=answer, video=media_path(root, video, "video"), image=None, split=subject,
                  source_file=str(path), line=row_no, meta={"benchmark": "mmvu", "subject": metadata["subject"]})


BENCHMARK = Benchmark(
    name="mmvu", title="MMVU", download="https://huggingface.co/datasets/yale-nlp/MMVU",
    layout="validation.json and videos/<Subject>/<n>.mp4 (the Hugging Face repository as cloned)",
    annotation_files=annotation_files, read=read)
