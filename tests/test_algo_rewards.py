"""Rewards: answer extraction, accuracy, format, and the registry / weighted combination."""

from __future__ import annotations

import math

import pytest

from care.algo import rewards as R


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("<think>a</think><answer>B</answer>", "B"),
        ("<answer>\n  C \n</answer>", "C"),
        ("<answer>A</answer> then <answer>D</answer>", "A"),  # first tag wins
        ("<answer>line1\nline2</answer>", "line1\nline2"),  # DOTALL
        ("<answer>A", None),
        ("", None),
    ],
)
def test_extract_answer(completion, expected):
    assert R.extract_answer(completion) == expected


def test_accuracy_is_exact_match_of_first_tag():
    assert R.accuracy_reward("<answer>A</answer><answer>B</answer>", gold="B") == 0.0
    assert R.accuracy_reward("<answer> b </answer>", gold="B") == 0.0  # case matters, as in the reference
    assert R.accuracy_reward("<answer> B </answer>", gold="B") == 1.0


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("<think>x</think><answer>A</answer>", 1.0),
        ("<think>x\ny</think>\n\n<answer>A</answer><|im_end|>", 1.0),
        ("<|im_start|><think>x</think><answer>A</answer><|endoftext|>", 1.0),
        (" <think>x</think><answer>A</answer>", 0.0),  # full match: nothing before
        ("<think>x</think><answer>A</answer>\n", 0.0),  # ... or after
        ("<think>x</think>", 0.0),
        ("<answer>A</answer><think>x</think>", 0.0),
    ],
)
def test_format_reward(completion, expected):
    assert R.format_reward(completion) == expected


def test_combine_weights_and_not_applicable():
    def only_long(completion, *, gold, **_):
        return None if len(completion) < 30 else 1.0

    R.register_reward("test_only_long")(only_long)
    try:
        out = R.combine_rewards(
            ["<think>reasoning here</think><answer>B</answer>", "<answer>B</answer>"],
            ["B", "B"],
            weights={"accuracy": 1.0, "format": 0.5, "test_only_long": 2.0},
        )
        assert out.total == [1.0 + 0.5 + 2.0, 1.0]
        assert out.components["test_only_long"][0] == 1.0
        assert math.isnan(out.components["test_only_long"][1])
        with pytest.raises(ValueError, match="already registered"):
            R.register_reward("test_only_long")(lambda c, **_: 0.0)
    finally:
        R._REWARDS.pop("test_only_long")


def test_combine_errors_name_the_problem():
    with pytest.raises(KeyError, match="unknown reward 'acc'"):
        R.combine_rewards(["x"], ["A"], weights={"acc": 1.0})
    with pytest.raises(ValueError, match="2 completions but 1 gold"):
        R.combine_rewards(["x", "y"], ["A"])
    R.register_reward("test_nan")(lambda c, **_: float("nan"))
    try:
        with pytest.raises(ValueError, match="'test_nan' returned nan for completion 0"):
            R.combine_rewards(["x"], ["A"], weights={"test_nan": 1.0})
    finally:
        R._REWARDS.pop("test_nan")


def test_prediction_falls_back_to_whole_output():
    assert R.prediction_from_output("<think>..</think><answer>C</answer>") == "C"
    assert R.prediction_from_output("  B\n") == "B"
