"""Evaluation scoring: the prediction rule, exact match, Wilson intervals (hand-computed), per-level records."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from care.eval.intervals import wilson_interval, z_for_confidence
from care.eval.scoring import (
    LevelAccuracy,
    accuracy_by_level,
    eval_prediction,
    is_correct,
    level_accuracy,
    score_outputs,
)


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("<think>walks to the red marker</think><answer>A</answer>", "A"),
        ("<think>r</think><answer>\n  B \n</answer>", "B"),  # stripped inside the tag
        ("<answer>B</answer> then <answer>C</answer>", "B"),  # the FIRST tag wins
        ("<think>x</think>\n<answer>C. pick up</answer>", "C. pick up"),  # content kept as is
        ("  D  ", "D"),  # no tag: the whole output, stripped
        ("The answer is D", "The answer is D"),
        ("<answer>A</answer><|im_end|>", "A"),
        ("B<|im_end|>", "B"),  # special tokens removed before the no-tag fallback
        ("<answer></answer>", ""),
        ("<answer>A", "<answer>A"),  # an unclosed tag is not a tag
        ("", ""),
    ],
)
def test_prediction_rule(output, expected):
    assert eval_prediction(output) == expected


@pytest.mark.parametrize(
    ("output", "gold", "expected"),
    [
        ("<answer>C</answer>", "C", True),
        ("<answer>c</answer>", "C", False),  # case-sensitive
        ("<answer>C.</answer>", "C", False),
        ("<answer>(C)</answer>", "C", False),
        ("C", "C", True),
        ("C because", "C", False),
        ("<think>C</think><answer>B</answer>", "C", False),  # the think block is never read
    ],
)
def test_exact_match(output, gold, expected):
    assert is_correct(output, gold) is expected


# Hand-computed with z = 1.959964 (95 %): centre = (p + z^2/2n)/(1 + z^2/n),
# half = z/(1 + z^2/n) * sqrt(p(1-p)/n + z^2/4n^2).
@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [
        (5, 10, 0.236593, 0.763407),  # centre 0.5, half 0.263407
        (0, 10, 0.0, 0.277533),  # centre 0.138766, half 0.138766
        (10, 10, 0.722467, 1.0),
        (8, 10, 0.490162, 0.943318),  # centre 0.716740, half 0.226578
        (3, 4, 0.300642, 0.954413),
        (1, 1, 0.206549, 1.0),
        (50, 100, 0.403832, 0.596168),  # centre 0.5, half 0.096168
    ],
)
def test_wilson_hand_computed(k, n, low, high):
    got_low, got_high = wilson_interval(k, n)
    assert got_low == pytest.approx(low, abs=2e-6)
    assert got_high == pytest.approx(high, abs=2e-6)


def test_wilson_other_confidence_and_errors():
    assert z_for_confidence(0.9) == pytest.approx(1.644854, abs=1e-6)
    lo90, hi90 = wilson_interval(5, 10, confidence=0.9)
    lo95, hi95 = wilson_interval(5, 10)
    assert lo95 < lo90 < 0.5 < hi90 < hi95
    assert wilson_interval(0, 0) == (0.0, 1.0)
    for bad in [(-1, 3), (4, 3), (1, -1)]:
        with pytest.raises(ValueError):
            wilson_interval(*bad)
    with pytest.raises(ValueError):
        z_for_confidence(1.0)


@given(n=st.integers(1, 500), data=st.data())
def test_wilson_contains_the_estimate_and_stays_in_range(n, data):
    k = data.draw(st.integers(0, n))
    low, high = wilson_interval(k, n)
    assert 0.0 <= low <= k / n <= high <= 1.0
    # symmetric: k successes and n - k failures mirror each other
    mirror_low, mirror_high = wilson_interval(n - k, n)
    assert low == pytest.approx(1.0 - mirror_high, abs=1e-12)
    assert high == pytest.approx(1.0 - mirror_low, abs=1e-12)


def test_level_records():
    record = level_accuracy("L1", [True, True, True, False, True, False, True, True, False, True])
    assert record == LevelAccuracy("L1", 10, 7, 0.7, record.ci_low, record.ci_high, 0.95)
    # 7/10: centre 0.644493, half 0.247715 (hand-computed)
    assert record.ci_low == pytest.approx(0.396778, abs=2e-6)
    assert record.ci_high == pytest.approx(0.892209, abs=2e-6)
    assert record.as_dict()["level"] == "L1"

    empty = level_accuracy("L3", [])
    assert empty.n == 0 and math.isnan(empty.accuracy) and (empty.ci_low, empty.ci_high) == (0.0, 1.0)


def test_accuracy_by_level_orders_levels_naturally_and_adds_overall():
    levels = ["L10", "L2", "L1", "L2", "L1", "L1"]
    correct = [False, True, True, False, False, True]
    table = accuracy_by_level(levels, correct, include_overall=True)
    assert [(r.level, r.n, r.correct) for r in table] == [
        ("L1", 3, 2), ("L2", 2, 1), ("L10", 1, 0), ("all", 6, 3)
    ]
    assert table[-1].accuracy == 0.5
    with pytest.raises(ValueError, match="2 levels but 1"):
        accuracy_by_level(["L1", "L1"], [True])


def test_score_outputs_end_to_end():
    outputs = [
        "<think>The agent walks to the purple marker.</think><answer>C</answer>",
        "<think>The agent walks to the red marker.</think><answer>A</answer>",
        "B",
        "<think>no idea</think>",
    ]
    predictions, correct, table = score_outputs(outputs, ["C", "B", "B", "D"], ["L1", "L1", "L2", "L2"])
    assert predictions == ["C", "A", "B", "<think>no idea</think>"]
    assert correct == [True, False, True, False]
    assert [(r.level, r.accuracy) for r in table] == [("L1", 0.5), ("L2", 0.5)]
    with pytest.raises(ValueError, match="lengths differ"):
        score_outputs(outputs, ["C"], ["L1"])
