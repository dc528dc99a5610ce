"""Video-MMMU (lmms-lab/VideoMMMU on Hugging Face): 300 lecture videos in 30 subjects of six disciplines, one
question per video in each of three tracks (Perception, Comprehension, Adaptation).

Layout under the root, as published (the video archives unpack into one folder per discipline)::

    <Track>/test-00000-of-00001.parquet  columns id, question, options, answer, question_type
    <Discipline>/<id>.mp4                Discipline = Art, Business, Science, Medicine, Humanities, Engineering

``id`` is ``<split>_<Subject>_<n>`` (``validation_Computer_Science_12``); its subject names the discipline folder
(``SUBJECT_DISCIPLINE``). Level = the track. Multiple-choice rows (``question_type`` ``multiple-choice`` or
``perception``) are evaluated: options = the non-empty ``options`` in order, their ``"A. "`` prefixes dropped when
every option has its own (the prompt letters them again), ``answer`` = the gold letter. Other rows (numerical or
open-ended answers) are rejects ``not supported: ...``. The Adaptation track's question refers to an image that the
benchmark appends to the end of the video, so the video carries it.
"""

from __future__ import annotations

import re
from pathlib import Path

from care.data.annotations import LoadResult, RowError, json_kind, text_field
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

TRACKS = ("Perception", "Comprehension", "Adaptation")
MULTIPLE_CHOICE = ("multiple-choice", "perception")

_DISCIPLINES = {
    "Art": ("Art", "Art_Theory", "Design", "Music"),
    "Business": ("Accounting", "Economics", "Finance", "Manage", "Marketing"),
    "Science": ("Biology", "Chemistry", "Geography", "Math", "Physics"),
    "Medicine": ("Basic_Medical_Science", "Clinical_Medicine", "Diagnostics_and_Laboratory_Medicine", "Pharmacy",
                 "Public_Health"),
    "Humanities": ("History", "Literature", "Sociology", "Psychology"),
    "Engineering": ("Agriculture", "Architecture_and_Engineering", "Computer_Science", "Electronics",
                    "Energy_and_Power", "Materials", "Mechanical_Engineering"),
}
SUBJECT_DISCIPLINE = {subject: discipline for discipline, subjects in _DISCIPLINES.items() for subject in subjects}
"""MMMU's 30 subjects -> the discipline folder their videos are published in."""

_ID = re.compile(r"^[A-Za-z]+_(.+)_\d+$")


def annotation_files(root: Path) -> list[Path]:
    return [path for track in TRACKS for path in sorted((root / track).glob("test-*.parquet"))]


def read(root: Path) -> LoadResult:
    return read_parquet_rows(annotation_files(root), lambda path, i, row: _sample(root, path, i, row))


def subject_of(sample_id: str) -> str:
    """
    >>> subject_of("validation_Computer_Science_12"), subject_of("test_Art_3")
    ('Computer_Science', 'Art')
    """
    match = _ID.match(sample_id)
    if not match:
        raise RowError(f"field 'id' must be <split>_<Subject>_<n>, got {sample_id!r}")
    return match.group(1)


def _options(row: dict) -> tuple[str, ...]:
    raw = row.get("options")
    if not isinstance(raw, list):
        raise RowError(f"field 'options' must be a list of option texts, got {json_kind(raw)}")
    texts = list(raw)
    while texts and not (isinstance(texts[-1], str) and texts[-1].strip()):
        texts.pop()
    options = check_options(texts, "options")
    lettered = [LETTERED.match(text.strip()) for text in options]
    if all(m and m.group(1) == LETTERS[i] for i, m in enumerate(lettered)):
        return unlettered(list(options), lambda i: f"field 'options[{i}]'")
    return options


def _sample(root: Path, path: Path, row_no: int, row: dict) -> Sample:
    sample_id = text_field(row, "id")
    question_type = text_field(row, "question_type")
    if question_type not in MULTIPLE_CHOICE:
        raise RowError(f"not supported: {question_type} question (no options); the letter rule cannot score it")
    subject = subject_of(sample_id)
    if subject not in SUBJECT_DISCIPLINE:
        raise RowError(f"field 'id': subject {subject!r} is not one of MMMU's 30 subjects, so its video folder "
                       "is unknown")
    options = _options(row)
    answer = text_field(row, "answer").strip()
    if answer not in LETTERS[: len(options)]:
        raise RowError(f"field 'answer' must be one of {', '.join(LETTERS[: len(options)])}, got {answer!r}")
    track = path.parent.name
    video = media_path(root, f"{SUBJECT_DISCIPLINE[subject]}/{sample_id}.mp4", "id")
    return Sample(sample_id=f"{track}/{sample_id}", question=text_field(row, "question"), options=options,
                  answer=answer, video=video, image=None, split=track, source_file=str(path), line=row_no,
                  meta={"benchmark": "videommmu", "subject": subject, "question_type": question_type})


BENCHMARK = Benchmark(
    name="videommmu", title="Video-MMMU", download="https://huggingface.co/datasets/lmms-lab/VideoMMMU",
    layout="<Track>/test-*.parquet (Perception, Comprehension, Adaptation) and <Discipline>/<id>.mp4",
    annotation_files=annotation_files, read=read)
