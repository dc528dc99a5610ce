"""SEED-Bench-R1 evaluation scoring (GRPO_CARE.md section 8): predictions, exact match, accuracy per level.

Protocol (the decoding side - 16 frames, temperature 0.1, top_p 0.001, 1024 new tokens - is the generation
loop's job; this module only scores its text outputs):

* prediction = the content of the FIRST ``<answer>...</answer>`` tag, whitespace-stripped; when the output has no
  answer tag, the whole output, whitespace-stripped. Qwen special tokens (``<|im_end|>`` ...) that a decode
  kept are removed first, so ``"C<|im_end|>"`` predicts ``"C"`` as it would with ``skip_special_tokens``.
* correct = the prediction equals the gold letter exactly (case-sensitive; ``"C."`` or ``"C. pick up"`` is
  wrong, as in the benchmark's own scoring).
* accuracy per level (L1, L2, L3, ...) with a Wilson score interval (:mod:`care.eval.intervals`).

The answer extraction is shared with the RL accuracy reward (:mod:`care.algo.rewards`), so training and
evaluation read a completion the same way.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

from care.algo.rewards import prediction_from_output, strip_special_tokens
from care.eval.intervals import wilson_interval

OVERALL_LEVEL = "all"
# the annotation field a level is broken down by when its rows carry it (EgoPlan-Bench2's domain, in L3)
DOMAIN_FIELD = "domain"


def eval_prediction(output: str) -> str:
    """The predicted answer of one generated output (see the module docstring for the rule).

    >>> eval_prediction("<think>walks to red</think><answer> B </answer><answer>C</answer>")
    'B'
    >>> eval_prediction("  C<|im_end|>")
    'C'
    >>> eval_prediction("I think C")
    'I think C'
    """
    return prediction_from_output(strip_special_tokens(output))


def is_correct(output: str, gold: str) -> bool:
    """Exact match of :func:`eval_prediction` with the gold letter.

    >>> is_correct("<answer>C</answer>", "C"), is_correct("<answer>C.</answer>", "C"), is_correct("C", "C")
    (True, False, True)
    """
    return eval_prediction(output) == gold


@dataclass(frozen=True)
class LevelAccuracy:
    """Accuracy of one evaluation level with its Wilson interval (``accuracy`` is NaN when ``n == 0``)."""

    level: str
    n: int
    correct: int
    accuracy: float
    ci_low: float
    ci_high: float
    confidence: float = 0.95

    def as_dict(self) -> dict:
        return asdict(self)


def level_accuracy(level: str, correct: Iterable[bool], confidence: float = 0.95) -> LevelAccuracy:
    """Accuracy record of one level from per-sample correctness.

    >>> r = level_accuracy("L1", [True, False, True, True])
    >>> (r.n, r.correct, r.accuracy, round(r.ci_low, 4), round(r.ci_high, 4))
    (4, 3, 0.75, 0.3006, 0.9544)
    """
    flags = [bool(c) for c in correct]
    n, k = len(flags), sum(flags)
    low, high = wilson_interval(k, n, confidence)
    return LevelAccuracy(level, n, k, k / n if n else math.nan, low, high, confidence)


def level_sort_key(level: str) -> tuple:
    # Natural order, so L2 comes before L10; the overall row goes last.
    parts = re.split(r"(\d+)", level)
    return (level == OVERALL_LEVEL, [int(p) if p.isdigit() else p for p in parts])


def accuracy_by_level(
    levels: Sequence[str],
    correct: Sequence[bool],
    *,
    confidence: float = 0.95,
    include_overall: bool = False,
) -> list[LevelAccuracy]:
    """One :class:`LevelAccuracy` per distinct level (natural order), plus an ``"all"`` row when asked.

    ``levels[i]`` and ``correct[i]`` describe sample ``i``.

    >>> [(r.level, r.n, r.correct) for r in accuracy_by_level(["L2", "L1", "L2"], [True, True, False],
    ...                                                       include_overall=True)]
    [('L1', 1, 1), ('L2', 2, 1), ('all', 3, 2)]
    """
    if len(levels) != len(correct):
        raise ValueError(f"{len(levels)} levels but {len(correct)} correctness flags")
    groups: dict[str, list[bool]] = {}
    for level, flag in zip(levels, correct, strict=True):
        groups.setdefault(level, []).append(bool(flag))
    records = [level_accuracy(level, groups[level], confidence) for level in sorted(groups, key=level_sort_key)]
    if include_overall:
        records.append(level_accuracy(OVERALL_LEVEL, correct, confidence))
    return records


def score_outputs(
    outputs: Sequence[str],
    golds: Sequence[str],
    levels: Sequence[str],
    *,
    confidence: float = 0.95,
    include_overall: bool = False,
) -> tuple[list[str], list[bool], list[LevelAccuracy]]:
    """Predictions, per-sample correctness and per-level accuracy of a batch of generated outputs.

    >>> preds, ok, table = score_outputs(["<answer>A</answer>", "B"], ["A", "C"], ["L1", "L1"])
    >>> preds, ok, table[0].accuracy
    (['A', 'B'], [True, False], 0.5)
    """
    if not len(outputs) == len(golds) == len(levels):
        raise ValueError(f"lengths differ: {len(outputs)} outputs, {len(golds)} golds, {len(levels)} levels")
    predictions = [eval_prediction(o) for o in outputs]
    correct = [p == g for p, g in zip(predictions, golds, strict=True)]
    table = accuracy_by_level(levels, correct, confidence=confidence, include_overall=include_overall)
    return predictions, correct, table


def with_domains(records: Sequence[dict]) -> list[dict]:
    """Level records (manifests), each followed by its per-domain records (its ``groups``: level ``L3/Hobbies``,
    ...), for tables and catalog rows; the pooled ``all`` record pools levels only.

    >>> [r["level"] for r in with_domains([{"level": "L1"}, {"level": "L3", "groups": [{"level": "L3/Work"}]}])]
    ['L1', 'L3', 'L3/Work']
    """
    return [x for m in records for x in (m, *m.get("groups", ()))]
