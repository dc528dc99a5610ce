"""Consistency-rate summaries: every figure names the judge (name, version, settings) that produced it.

rate = consistent / judged, over JUDGED items only; unjudged items (the judge could not read them, or its
endpoint failed) are counted in ``n_unjudged`` with their reasons by code, never folded into the rate. The rate
comes with a Wilson interval like accuracy. ``rate`` is NaN when nothing was judged.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from care.eval.intervals import wilson_interval
from care.eval.judges import ConsistencyJudge, Verdict, judge_label
from care.eval.scoring import OVERALL_LEVEL, level_sort_key


@dataclass(frozen=True)
class ConsistencySummary:
    """Consistency rate of one level under one judge."""

    judge: str
    judge_version: str
    judge_label: str
    level: str
    n: int
    n_judged: int
    n_unjudged: int
    n_consistent: int
    rate: float
    ci_low: float
    ci_high: float
    unjudged_reasons: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def summarize_consistency(
    judge: ConsistencyJudge, verdicts: Sequence[Verdict], level: str = OVERALL_LEVEL, confidence: float = 0.95
) -> ConsistencySummary:
    """One summary record for ``verdicts`` (all from ``judge``).

    >>> from care.eval.judges import RuleJudge
    >>> v = [Verdict(True, "judged", ""), Verdict(False, "judged", ""), Verdict(None, "no_think", "")]
    >>> s = summarize_consistency(RuleJudge(), v, "L1")
    >>> (s.judge_label, s.n, s.n_judged, s.n_unjudged, s.rate, s.unjudged_reasons)
    ('rule@v1', 3, 2, 1, 0.5, {'no_think': 1})
    """
    judged = [v for v in verdicts if v.consistent is not None]
    k = sum(1 for v in judged if v.consistent)
    low, high = wilson_interval(k, len(judged), confidence)
    reasons = Counter(v.code for v in verdicts if v.consistent is None)
    return ConsistencySummary(
        judge=judge.name,
        judge_version=judge.version,
        judge_label=judge_label(judge),
        level=level,
        n=len(verdicts),
        n_judged=len(judged),
        n_unjudged=len(verdicts) - len(judged),
        n_consistent=k,
        rate=k / len(judged) if judged else math.nan,
        ci_low=low,
        ci_high=high,
        unjudged_reasons=dict(sorted(reasons.items())),
    )


def consistency_by_level(
    judge: ConsistencyJudge,
    levels: Sequence[str],
    verdicts: Sequence[Verdict],
    *,
    include_overall: bool = False,
    confidence: float = 0.95,
) -> list[ConsistencySummary]:
    """One summary per distinct level (natural order: L1, L2, L3), plus an ``"all"`` row when asked."""
    if len(levels) != len(verdicts):
        raise ValueError(f"{len(levels)} levels but {len(verdicts)} verdicts")
    groups: dict[str, list[Verdict]] = {}
    for level, verdict in zip(levels, verdicts, strict=True):
        groups.setdefault(level, []).append(verdict)
    out = [summarize_consistency(judge, groups[lv], lv, confidence) for lv in sorted(groups, key=level_sort_key)]
    if include_overall:
        out.append(summarize_consistency(judge, verdicts, OVERALL_LEVEL, confidence))
    return out
