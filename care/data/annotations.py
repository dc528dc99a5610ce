"""Load and validate SEED-Bench-R1 annotation files into typed ``Sample`` rows, with rejects.

Two row shapes (see ``care.data.schema``):

- training rows: ``answer`` (gold text) + ``negative_answers``; the four options are the gold answer and three
  negatives drawn by a seeded RNG (``seed`` + ``sample_id``, so the draw is reproducible and independent of row
  order and of the other rows in the file), then shuffled with the same RNG. The chosen order is recorded in
  ``Sample.meta["option_sources"]`` (e.g. ``["negative_answers[4]", "answer", ...]``).
- validation rows: ``choice_a``..``choice_d`` + ``golden_choice_idx`` (a letter); options keep the given order.

``shuffle_options=False`` puts training options in a canonical order (sorted option texts) instead of a random
one. Why: with shuffled options the model must look up, in context, which letter the option it perceived has;
a 0.3 M-parameter demo model learns the visual part within minutes but not that lookup (measured:
``notes/tiny_model_on_cpu.md``), so the CPU demo trains with a fixed order. Real runs keep the shuffle.

Reasoning text of the CoT file (``training_with_cot_6k.jsonl``): the public SEED-Bench-R1 code does not show the
field name, so the first present of ``COT_FIELDS`` is read. ``<think>``/``<answer>`` tags are stripped and only
the reasoning is kept: the answer letter depends on the option order, which this loader decides, so SFT targets
are built as ``<think>{cot}</think><answer>{letter}</answer>`` from ``Sample.cot`` and ``Sample.answer``.

Every rejected row becomes a ``Reject(file, line, reason)`` and the good rows keep flowing; ``strict=True``
raises ``AnnotationError`` on the first reject instead. Whether media files exist is not checked here (the
preprocessing stage quarantines missing or broken media), but every path must stay inside the data root.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from care.data.schema import ANNOTATION_FILES, LETTERS, Reject, Sample
from care.errors import CareError

COT_FIELDS = ("cot", "reasoning", "think", "rationale", "chain_of_thought")
"""Names accepted for the reasoning text of CoT rows, first present wins."""

CHOICE_FIELDS = ("choice_a", "choice_b", "choice_c", "choice_d")

KNOWN_FIELDS = {
    "sample_id", "question", "answer", "negative_answers", "task_progress_metadata", "video_source",
    "video_basename", "current_observation_basename", "golden_choice_idx", *CHOICE_FIELDS, *COT_FIELDS,
}

_THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL)
_TAG = re.compile(r"</?(think|answer)>")
_ANSWER_BLOCK = re.compile(r"<answer>.*?</answer>", re.DOTALL)


class AnnotationError(CareError):
    """An annotation file is missing or (under ``strict``) a row is invalid; the message names file:line."""


class RowError(ValueError):
    """Internal: one row failed validation; ``str(exc)`` is the one-line reason."""


@dataclass
class LoadResult:
    """The good samples of one annotation file, in file order, and the rejected rows with reasons."""

    samples: list[Sample] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)


def split_from_filename(path: str | Path) -> str:
    """The split a file holds, from its name.

    >>> split_from_filename("data/annotations/training_6k.jsonl")
    'train'
    >>> split_from_filename("training_with_cot_6k.jsonl"), split_from_filename("validation_L2.jsonl")
    ('train_cot', 'L2')
    >>> split_from_filename("my_rows.jsonl")
    'my_rows'
    """
    name = Path(path).name
    for split, filename in ANNOTATION_FILES.items():
        if name == filename:
            return split
    stem = Path(name).stem
    if stem.startswith("validation_"):
        return stem.removeprefix("validation_")
    return stem


def load_annotations(
    path: str | Path,
    data_root: str | Path,
    *,
    split: str | None = None,
    strict: bool = False,
    seed: int = 0,
    shuffle_options: bool = True,
) -> LoadResult:
    """Parse and validate one JSONL annotation file; see the module docstring for the rules.

    ``split`` defaults from the file name (``split_from_filename``). Blank lines are skipped. Returned sample
    paths (``video``, ``image``) are relative to ``data_root`` (``videos/<source>/<basename>``).
    """
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"{path}: annotation file not found; check the data root layout (annotations/*.jsonl)")
    split = split or split_from_filename(path)
    resolved_root = Path(data_root).resolve()  # once per file: every row's media path is checked against it
    result = LoadResult()
    first_line_of: dict[str, int] = {}
    with path.open("rb") as fh:
        for line_no, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                sample = _parse_row(raw, split=split, file=str(path), line=line_no, seed=seed,
                                    shuffle_options=shuffle_options, data_root=resolved_root)
                if sample.sample_id in first_line_of:
                    raise RowError(f"duplicate sample_id {sample.sample_id!r} (first seen on line "
                                   f"{first_line_of[sample.sample_id]}); sample ids must be unique in a file")
            except RowError as exc:
                reject = Reject(file=str(path), line=line_no, reason=str(exc))
                if strict:
                    raise AnnotationError(str(reject)) from None
                result.rejects.append(reject)
                continue
            first_line_of[sample.sample_id] = line_no
            result.samples.append(sample)
    return result


def load_benchmark(data_root: str | Path, *, strict: bool = False, seed: int = 0,
                   shuffle_options: bool = True) -> dict[str, LoadResult]:
    """Load every annotation file of the SEED-Bench-R1 layout that exists under ``data_root/annotations``.

    Returns ``{split: LoadResult}`` in ``ANNOTATION_FILES`` order; raises when none exists.
    """
    root = Path(data_root)
    found = {split: root / "annotations" / name for split, name in ANNOTATION_FILES.items()
             if (root / "annotations" / name).is_file()}
    if not found:
        expected = ", ".join(ANNOTATION_FILES.values())
        raise AnnotationError(f"{root / 'annotations'}: no annotation file found (expected any of {expected})")
    return {split: load_annotations(p, root, split=split, strict=strict, seed=seed, shuffle_options=shuffle_options)
            for split, p in found.items()}


# --- one row ---------------------------------------------------------------------------------------------


def _parse_row(raw: bytes, *, split: str, file: str, line: int, seed: int, shuffle_options: bool,
               data_root: Path) -> Sample:  # data_root: resolved
    row = _decode(raw)
    sample_id = _sample_id(row)
    question = text_field(row, "question")
    progress = row.get("task_progress_metadata")
    if "task_progress_metadata" not in row:
        raise RowError("missing field 'task_progress_metadata' (use [] for an image-only sample)")
    if not isinstance(progress, list):
        raise RowError(f"field 'task_progress_metadata' must be a list, got {json_kind(progress)}")
    source = text_field(row, "video_source")
    image = _media_path(data_root, "images", source, text_field(row, "current_observation_basename"),
                        "current_observation_basename")
    video = None
    if progress:
        video = _media_path(data_root, "videos", source, text_field(row, "video_basename"), "video_basename")
    if "golden_choice_idx" in row or any(c in row for c in CHOICE_FIELDS):
        options, answer, meta = _validation_options(row)
    else:
        options, answer, meta = _training_options(row, sample_id, seed=seed, shuffle=shuffle_options)
    cot = _cot(row, required=split == "train_cot")
    meta.update(task_progress_metadata=progress, video_source=source,
                extra={k: v for k, v in row.items() if k not in KNOWN_FIELDS})
    return Sample(sample_id=sample_id, question=question, options=options, answer=answer, video=video,
                  image=image, split=split, source_file=file, line=line, cot=cot, meta=meta)


def _decode(raw: bytes) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RowError(f"not valid UTF-8 at byte offset {exc.start}; re-save the file as UTF-8") from None
    try:
        row = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RowError(f"malformed JSON: {exc.msg} at column {exc.colno}") from None
    if not isinstance(row, dict):
        raise RowError(f"row must be a JSON object, got {json_kind(row)}")
    return row


def json_kind(value: Any) -> str:
    """The JSON name of a value's type, for messages (``object``, ``list``, ``string``, ...)."""
    return {dict: "object", list: "list", str: "string", bool: "boolean", int: "integer", float: "number",
            type(None): "null"}.get(type(value), type(value).__name__)


def text_field(row: dict[str, Any], name: str) -> str:
    """``row[name]``, a non-empty string, or a RowError naming the field."""
    if name not in row:
        raise RowError(f"missing field {name!r}")
    value = row[name]
    if not isinstance(value, str):
        raise RowError(f"field {name!r} must be a string, got {json_kind(value)}")
    if not value.strip():
        raise RowError(f"field {name!r} is empty")
    return value


def _sample_id(row: dict[str, Any]) -> str:
    # Real files use strings; integer ids are accepted and kept as their decimal text.
    value = row.get("sample_id")
    if "sample_id" not in row:
        raise RowError("missing field 'sample_id'")
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return text_field(row, "sample_id")


def _media_path(resolved_root: Path, kind: str, source: str, basename: str, name: str) -> str:
    """``<kind>/<source>/<basename>`` relative to the root (given resolved); absolute paths and ``..`` are
    rejected."""
    for field_name, part in (("video_source", source), (name, basename)):
        if PurePosixPath(part).is_absolute() or PureWindowsPath(part).is_absolute() or PureWindowsPath(part).drive:
            raise RowError(f"field {field_name!r} is an absolute path ({part!r}); "
                           f"use a path relative to {kind}/<video_source>/")
        if ".." in PurePosixPath(part.replace("\\", "/")).parts:
            raise RowError(f"field {field_name!r} escapes the data root ({part!r}); remove the '..'")
    rel = PurePosixPath(kind, source, basename)
    if not (resolved_root / rel).resolve().is_relative_to(resolved_root):  # e.g. a symlinked source folder
        raise RowError(f"field {name!r}: {rel} resolves outside the data root {resolved_root}")
    return str(rel)


def _validation_options(row: dict[str, Any]) -> tuple[tuple[str, str, str, str], str, dict]:
    options = tuple(text_field(row, name) for name in CHOICE_FIELDS)
    gold = row.get("golden_choice_idx")
    if "golden_choice_idx" not in row:
        raise RowError("missing field 'golden_choice_idx' (a letter A-D)")
    if not isinstance(gold, str) or gold.strip() not in LETTERS:
        raise RowError(f"field 'golden_choice_idx' must be one of A, B, C, D, got {gold!r}")
    gold = gold.strip()
    if "answer" in row:  # validation rows also carry the gold text; it must agree with the letter
        answer = text_field(row, "answer")
        if answer not in options:
            raise RowError(f"answer {answer!r} is not among the options choice_a..choice_d")
        if options[LETTERS.index(gold)] != answer:
            raise RowError(f"answer {answer!r} is {CHOICE_FIELDS[options.index(answer)]} but golden_choice_idx "
                           f"is {gold!r}")
    return options, gold, {"option_sources": list(CHOICE_FIELDS), "row_shape": "validation"}  # type: ignore[return-value]


def _training_options(row: dict[str, Any], sample_id: str, *, seed: int,
                      shuffle: bool) -> tuple[tuple[str, str, str, str], str, dict]:
    answer = text_field(row, "answer")
    negatives = row.get("negative_answers")
    if "negative_answers" not in row:
        raise RowError("missing field 'negative_answers'")
    if not isinstance(negatives, list):
        raise RowError(f"field 'negative_answers' must be a list of strings, got {json_kind(negatives)}")
    for i, neg in enumerate(negatives):
        if not isinstance(neg, str) or not neg.strip():
            raise RowError(f"field 'negative_answers[{i}]' must be a non-empty string, got {neg!r}")
    # keep the first occurrence of each distinct text; the gold text never counts as a negative
    candidates = {}
    for i, neg in enumerate(negatives):
        if neg != answer and neg not in candidates:
            candidates[neg] = i
    if len(candidates) < 3:
        raise RowError(f"field 'negative_answers' has {len(candidates)} distinct answers other than the gold "
                       "answer; need at least 3")
    # str seeds hash with SHA-512 in random.seed: stable across processes and Python versions
    rng = random.Random(f"{seed}:{sample_id}")
    chosen = rng.sample(list(candidates), 3)  # dict order = first occurrence in the row
    entries = [(answer, "answer")] + [(neg, f"negative_answers[{candidates[neg]}]") for neg in chosen]
    if shuffle:
        rng.shuffle(entries)
    else:
        entries.sort(key=lambda e: e[0])
    options = tuple(text for text, _ in entries)
    gold = LETTERS[options.index(answer)]
    meta = {"option_sources": [src for _, src in entries], "row_shape": "training", "shuffled": shuffle,
            "option_seed": f"{seed}:{sample_id}"}
    return options, gold, meta  # type: ignore[return-value]


def _cot(row: dict[str, Any], *, required: bool) -> str | None:
    name = next((n for n in COT_FIELDS if n in row), None)
    if name is None:
        if required:
            raise RowError(f"missing reasoning field (one of {', '.join(COT_FIELDS)}) in a CoT row")
        return None
    text = text_field(row, name)
    match = _THINK.search(text)
    reasoning = match.group(1) if match else _ANSWER_BLOCK.sub("", text)
    reasoning = _TAG.sub("", reasoning).strip()
    if not reasoning:
        raise RowError(f"field {name!r} has no reasoning text outside the <answer> tag")
    return reasoning
