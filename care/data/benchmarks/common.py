"""What every transfer-benchmark adapter shares: the ``Benchmark`` record, row checks, media paths, letters."""

from __future__ import annotations

import re
import string
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from care.data.annotations import LoadResult, RowError, json_kind
from care.data.schema import Reject, Sample
from care.errors import CareError

MAX_OPTIONS = 10  # option letters A..J (care.algo.prompt.OPTION_LETTERS)
LETTERS = string.ascii_uppercase[:MAX_OPTIONS]
LETTERED = re.compile(r"^([A-J])\.\s*(.*)$", re.DOTALL)
"""An option or answer written with its letter: ``"B. clockwise"`` -> ("B", "clockwise")."""


class BenchmarkError(CareError):
    """A benchmark name is unknown, or its root or annotation files are missing or unreadable."""


@dataclass(frozen=True)
class Benchmark:
    """One transfer benchmark: its name (also its prompt template's), where its data comes from and goes,
    its frame protocol, and ``read(root) -> LoadResult`` (samples with ``split`` = category, rejects)."""

    name: str
    title: str
    download: str  # where to get it
    layout: str  # what the root must hold, one line
    annotation_files: Callable[[Path], list[Path]]  # the files read (they key the evaluation cache)
    read: Callable[[Path], LoadResult]
    max_frames: int = 32  # the reference general-video evaluation: 2 fps, at most 32 frames

    def load(self, data_root: str | Path) -> LoadResult:
        root = self.check_root(data_root)
        return self.read(root)

    def check_root(self, data_root: str | Path) -> Path:
        """``data_root`` as a path when it holds this benchmark's annotations; else an error saying where the
        data comes from and how it is laid out."""
        root = Path(data_root)
        if not root.is_dir():
            raise BenchmarkError(f"{root}: {self.title} data root not found; download it from {self.download} "
                                 f"and lay it out as {self.layout}")
        if not self.annotation_files(root):
            raise BenchmarkError(f"{root}: no {self.title} annotation file found; expected {self.layout} "
                                 f"(download: {self.download})")
        return root


def media_path(root: Path, rel: str, name: str) -> str:
    """``rel`` (POSIX, relative to the root) checked to stay inside the resolved root."""
    parts = PurePosixPath(rel.replace("\\", "/"))
    if parts.is_absolute() or ".." in parts.parts:
        raise RowError(f"field {name!r} must be a path inside the data root, got {rel!r}")
    if not (root.resolve() / parts).resolve().is_relative_to(root.resolve()):
        raise RowError(f"field {name!r}: {parts} resolves outside the data root {root}")
    return str(parts)


def check_options(options: list, name: str) -> tuple[str, ...]:
    if not isinstance(options, list) or not 2 <= len(options) <= MAX_OPTIONS:
        got = f"{len(options)} options" if isinstance(options, list) else json_kind(options)
        raise RowError(f"field {name!r} must be a list of 2 to {MAX_OPTIONS} options, got {got}")
    for i, option in enumerate(options):
        if not isinstance(option, str) or not option.strip():
            raise RowError(f"field '{name}[{i}]' must be a non-empty string, got {option!r}")
    return tuple(options)


def unlettered(texts: list[str], where: Callable[[int], str]) -> tuple[str, ...]:
    """Option texts written ``"A. ..."``, ``"B. ..."`` (in letter order) without their prefixes; ``where(i)`` names
    option ``i`` in the error when one lacks its own letter or its text.

    >>> unlettered(["A. left", "B.  right "], lambda i: f"field 'options[{i}]'")
    ('left', 'right')
    """
    options = []
    for i, text in enumerate(texts):
        match = LETTERED.match(text.strip())
        if not match or match.group(1) != LETTERS[i] or not match.group(2).strip():
            raise RowError(f"{where(i)} must start with '{LETTERS[i]}. ', got {text!r}")
        options.append(match.group(2).strip())
    return tuple(options)


class Collector:
    """Gathers one benchmark's samples and rejects (``row`` = 1-based position in the file); a duplicate sample
    id is a reject."""

    def __init__(self):
        self.result = LoadResult()
        self._seen: dict[str, str] = {}

    def add(self, file: Path, row_no: int, build: Callable[[], Sample]) -> None:
        try:
            sample = build()
            if sample.sample_id in self._seen:
                raise RowError(f"duplicate sample id {sample.sample_id!r} (first at {self._seen[sample.sample_id]})")
        except RowError as exc:
            self.reject(file, row_no, str(exc))
            return
        self._seen[sample.sample_id] = f"{file.name} row {row_no}"
        self.result.samples.append(sample)

    def reject(self, file: Path, row_no: int, reason: str) -> None:
        self.result.rejects.append(Reject(file=str(file), line=row_no, reason=reason))


def read_parquet_rows(paths: list[Path], sample: Callable[[Path, int, dict], Sample]) -> LoadResult:
    """Every row of the Parquet annotation files ``paths`` through ``sample(path, row number, row)``: good rows
    kept, bad ones rejected with file, row and reason; a file that cannot be read stops with what to do."""
    import pyarrow.parquet as pq

    out = Collector()
    for path in paths:
        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as exc:  # pyarrow raises several types for a damaged file
            raise BenchmarkError(f"{path}: not a readable Parquet file ({exc}); re-download it") from None
        for i, row in enumerate(rows, start=1):
            out.add(path, i, lambda path=path, row=row, i=i: sample(path, i, row))
    return out.result
