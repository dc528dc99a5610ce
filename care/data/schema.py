"""One typed sample for both SEED-Bench-R1 row shapes (training and validation).

The benchmark layout (see data/README.md):

    <root>/annotations/{training_6k,training_with_cot_6k,validation_L1,validation_L2,validation_L3}.jsonl
    <root>/videos/<video_source>/<video_basename>
    <root>/images/<video_source>/<current_observation_basename>

Training rows carry ``answer`` + ``negative_answers`` (options are built by a seeded shuffle);
validation rows carry ``choice_a``..``choice_d`` + ``golden_choice_idx``.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field

LETTERS = ("A", "B", "C", "D")

ANNOTATION_FILES = {
    "train": "training_6k.jsonl",
    "train_cot": "training_with_cot_6k.jsonl",
    "L1": "validation_L1.jsonl",
    "L2": "validation_L2.jsonl",
    "L3": "validation_L3.jsonl",
}


@dataclass(frozen=True)
class Sample:
    """A validated multiple-choice sample, paths relative to the data root.

    ``video`` is None for image-only samples (empty ``task_progress_metadata``); ``image`` is None for
    video-only samples (the transfer benchmarks of ``care.data.benchmarks`` have no current observation).
    ``answer`` is the gold letter; ``options`` holds the option texts in letter order: exactly four ("A".."D")
    for SEED-Bench-R1 rows, two or more for a transfer benchmark's.
    """

    sample_id: str
    question: str
    options: tuple[str, ...]
    answer: str
    video: str | None
    image: str | None
    split: str
    source_file: str
    line: int
    cot: str | None = None
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def answer_index(self) -> int:
        return string.ascii_uppercase.index(self.answer)

    @property
    def answer_text(self) -> str:
        return self.options[self.answer_index]


@dataclass(frozen=True)
class Reject:
    """A row that failed validation: where it is and why (one line, actionable)."""

    file: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"
