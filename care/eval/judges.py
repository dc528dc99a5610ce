"""Consistency judges: does a completion's reasoning support the answer it gives? One interface, named judges.

A judge has a ``name``, a ``version`` and ``settings`` (recorded with every figure it produces, see
:func:`judge_label`), and ``judge(items) -> list[Verdict]``, one verdict per item, in order. A verdict is
``consistent=True/False``, or ``None`` = **unjudged**, with a stable ``code`` and a human ``reason``. Unjudged
items are left out of the consistency rate and counted separately (:mod:`care.eval.consistency`): an item the
judge could not read is not evidence either way.

Judges here: ``rule`` (:class:`RuleJudge`) and ``reference_likelihood`` (:class:`ReferenceLikelihoodJudge`);
``llm`` lives in :mod:`care.eval.llm_judge`. Build any of them from a config with
:func:`care.eval.judge_config.make_judge`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from care.eval.reasoning import answer_letter, concluded_option, read_answer, think_block

# Stable verdict codes (what a summary counts unjudged items by).
JUDGED = "judged"
NO_THINK = "no_think"
NO_ANSWER = "no_answer"
ANSWER_NOT_OPTION = "answer_not_option"
NO_OPTION_NAMED = "no_option_named"
NO_LIKELIHOOD = "no_likelihood"


@dataclass(frozen=True)
class JudgeItem:
    """One completion to judge.

    ``options`` are the option texts in letter order (A, B, ...); ``likelihood`` is the CARE answer likelihood
    under a reference model (only :class:`ReferenceLikelihoodJudge` reads it; None or NaN = not available).
    """

    completion: str
    options: tuple[str, ...]
    question: str = ""
    likelihood: float | None = None
    sample_id: str = ""


@dataclass(frozen=True)
class Verdict:
    """``consistent`` is True/False, or None when the item is unjudged; ``code`` says why (see the constants)."""

    consistent: bool | None
    code: str
    reason: str

    @property
    def judged(self) -> bool:
        return self.consistent is not None


@runtime_checkable
class ConsistencyJudge(Protocol):
    """What every judge offers: identity for the records, and one verdict per item."""

    name: str
    version: str

    @property
    def settings(self) -> Mapping[str, str | float]: ...

    def judge(self, items: Sequence[JudgeItem]) -> list[Verdict]: ...


def judge_label(judge: ConsistencyJudge) -> str:
    """One string naming the judge, its version and settings: what every consistency figure carries.

    >>> judge_label(ReferenceLikelihoodJudge(threshold=0.5, reference="ema"))
    'reference_likelihood@v1[reference=ema,threshold=0.5]'
    >>> judge_label(RuleJudge())
    'rule@v1'
    """
    settings = ",".join(f"{k}={v}" for k, v in sorted(judge.settings.items()))
    return f"{judge.name}@{judge.version}" + (f"[{settings}]" if settings else "")


def unjudged(code: str, reason: str) -> Verdict:
    return Verdict(None, code, reason)


def read_for_judging(item: JudgeItem) -> tuple[str, str] | Verdict:
    """``(think block, answer letter)`` of an item, or the unjudged verdict saying which of the two is missing.

    Shared by the text-reading judges (rule, llm) so they leave out exactly the same items.
    """
    think = think_block(item.completion)
    if think is None or not think.strip():
        return unjudged(NO_THINK, "no <think> block (or an empty one): no reasoning to compare")
    answer = read_answer(item.completion)
    if answer is None:
        return unjudged(NO_ANSWER, "no <answer> tag: no answer to compare")
    letter = answer_letter(answer, item.options)
    if letter is None:
        return unjudged(ANSWER_NOT_OPTION, f"answer {answer[:40]!r} is not an option letter or option text")
    return think, letter


class RuleJudge:
    """``rule``: consistent iff the option the think block concludes on is the option answered.

    The concluded option is the last option mentioned in the think block, by letter, full text or
    distinguishing key (exact definition: :mod:`care.eval.reasoning`). Unjudged when there is no think block, no
    answer, an answer that is not an option, or a think block that names no option. Exact on the demo set, whose
    reasoning names the chosen step (``<think>The agent walks to the purple marker.</think>``).

    >>> opts = ("pick up the red marker", "pick up the green marker", "pick up the purple marker")
    >>> item = JudgeItem("<think>The agent walks to the purple marker.</think><answer>C</answer>", opts)
    >>> RuleJudge().judge([item])[0]
    Verdict(consistent=True, code='judged', reason="reasoning concludes on C ('purple'), answer C")
    """

    name = "rule"
    version = "v1"

    @property
    def settings(self) -> Mapping[str, str | float]:
        return {}

    def judge_one(self, item: JudgeItem) -> Verdict:
        read = read_for_judging(item)
        if isinstance(read, Verdict):
            return read
        think, answer = read
        concluded = concluded_option(think, item.options)
        if concluded is None:
            return unjudged(NO_OPTION_NAMED, "the think block names no option (no letter, text or key)")
        return Verdict(
            concluded.letter == answer,
            JUDGED,
            f"reasoning concludes on {concluded.letter} ({concluded.matched!r}), answer {answer}",
        )

    def judge(self, items: Sequence[JudgeItem]) -> list[Verdict]:
        return [self.judge_one(item) for item in items]


class ReferenceLikelihoodJudge:
    """``reference_likelihood``: consistent iff the CARE answer likelihood is strictly above ``threshold``.

    The likelihood p = exp(mean log-prob of the answer tokens) under a reference model, given the completion's own
    reasoning (GRPO_CARE.md section 4), is computed by the scoring code and passed in ``JudgeItem.likelihood``:
    this judge does no model work. ``reference`` names the model that produced the likelihoods (recorded in the
    label). Unjudged when the likelihood is None or NaN (e.g. the answer span could not be located).

    >>> j = ReferenceLikelihoodJudge(threshold=0.5)
    >>> [v.consistent for v in j.judge([JudgeItem("", (), likelihood=p) for p in (0.9, 0.5, None)])]
    [True, False, None]
    """

    name = "reference_likelihood"
    version = "v1"

    def __init__(self, threshold: float = 0.5, reference: str = "reference") -> None:
        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"threshold must be in [0, 1), got {threshold}")
        self.threshold = float(threshold)
        self.reference = reference

    @property
    def settings(self) -> Mapping[str, str | float]:
        return {"threshold": self.threshold, "reference": self.reference}

    def judge_one(self, item: JudgeItem) -> Verdict:
        p = item.likelihood
        if p is None or math.isnan(p):
            return unjudged(NO_LIKELIHOOD, "no reference likelihood for this completion")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"likelihood must be in [0, 1], got {p} (sample {item.sample_id!r})")
        relation = ">" if p > self.threshold else "<="
        return Verdict(p > self.threshold, JUDGED, f"likelihood {p:.4f} {relation} {self.threshold}")

    def judge(self, items: Sequence[JudgeItem]) -> list[Verdict]:
        return [self.judge_one(item) for item in items]
