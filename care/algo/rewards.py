"""Rewards of GRPO-CARE (GRPO_CARE.md section 3) and a registry to add more by name.

A reward is a plain function ``fn(completion: str, *, gold: str, **context) -> float | None``: one float per
completion, or ``None`` when it does not apply to that completion (it then adds nothing to the total and is
recorded as NaN). The base reward of the paper is ``accuracy + format``, each with weight 1, in [0, 2].

No IO here; the consistency bonus lives in :mod:`care.algo.consistency`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

RewardFn = Callable[..., float | None]

# First match wins (the reference code's accuracy reads the first tag); DOTALL so answers may span lines.
ANSWER_PATTERN = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.DOTALL)
FORMAT_PATTERN = re.compile(r"<think>.*?</think>\s*<answer>.*?</answer>", re.DOTALL)
# Qwen-style special tokens (``<|im_end|>``, ``<|endoftext|>``, ...) that a decode may have kept.
SPECIAL_TOKEN_PATTERN = re.compile(r"<\|[^<>|]*\|>")

_REWARDS: dict[str, RewardFn] = {}

DEFAULT_REWARD_WEIGHTS: dict[str, float] = {"accuracy": 1.0, "format": 1.0}


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Decorator registering ``fn`` under ``name`` (names are unique).

    Usage: ``@register_reward("brevity")`` above ``def brevity(completion, *, gold, **context): ...``, then
    give it a weight in :func:`combine_rewards`.

    >>> registered_rewards()[:2]
    ['accuracy', 'format']
    """

    def decorate(fn: RewardFn) -> RewardFn:
        if name in _REWARDS and _REWARDS[name] is not fn:
            raise ValueError(f"reward {name!r} is already registered")
        _REWARDS[name] = fn
        return fn

    return decorate


def get_reward(name: str) -> RewardFn:
    if name not in _REWARDS:
        raise KeyError(f"unknown reward {name!r}; registered: {sorted(_REWARDS)}")
    return _REWARDS[name]


def registered_rewards() -> list[str]:
    return sorted(_REWARDS)


def strip_special_tokens(text: str) -> str:
    """Remove ``<|...|>`` special tokens.

    >>> strip_special_tokens("<answer>B</answer><|im_end|>")
    '<answer>B</answer>'
    """
    return SPECIAL_TOKEN_PATTERN.sub("", text)


def extract_answer(completion: str) -> str | None:
    """Content of the FIRST ``<answer>...</answer>`` tag, whitespace-stripped; ``None`` without a tag.

    >>> extract_answer("<think>x</think><answer> B </answer><answer>C</answer>")
    'B'
    >>> extract_answer("no tag") is None
    True
    """
    match = ANSWER_PATTERN.search(completion)
    return None if match is None else match.group(1)


def prediction_from_output(output: str) -> str:
    """Evaluation prediction (section 8): the first answer-tag content, or the whole output without a tag.

    >>> prediction_from_output("<answer>D</answer>"), prediction_from_output(" C ")
    ('D', 'C')
    """
    answer = extract_answer(output)
    return output.strip() if answer is None else answer


@register_reward("accuracy")
def accuracy_reward(completion: str, *, gold: str, **_: Any) -> float:
    """1.0 when the first answer tag's content equals ``gold`` exactly, else 0.0 (no tag: 0.0).

    >>> accuracy_reward("<think>...</think><answer>B</answer>", gold="B")
    1.0
    >>> accuracy_reward("<answer>B. go left</answer>", gold="B"), accuracy_reward("B", gold="B")
    (0.0, 0.0)
    """
    return 1.0 if extract_answer(completion) == gold else 0.0


@register_reward("format")
def format_reward(completion: str, **_: Any) -> float:
    """1.0 when the whole completion (special tokens stripped) is ``<think>..</think> <answer>..</answer>``.

    >>> format_reward("<think>r</think>\\n<answer>A</answer><|im_end|>")
    1.0
    >>> format_reward("<think>r</think><answer>A</answer> trailing"), format_reward("<answer>A</answer>")
    (0.0, 0.0)
    """
    return 1.0 if FORMAT_PATTERN.fullmatch(strip_special_tokens(completion)) else 0.0


@dataclass(frozen=True)
class RewardBreakdown:
    """Per-reward values (NaN where a reward did not apply) and the weighted total, one entry per completion."""

    components: dict[str, list[float]]
    total: list[float]


def combine_rewards(
    completions: Sequence[str],
    golds: Sequence[str],
    weights: Mapping[str, float] | None = None,
    contexts: Sequence[Mapping[str, Any]] | None = None,
) -> RewardBreakdown:
    """Weighted sum of registered rewards; a ``None`` (not applicable) adds nothing and is recorded as NaN.

    ``contexts[i]`` holds extra keyword arguments for completion ``i`` (for user rewards).

    >>> out = combine_rewards(["<think>a</think><answer>B</answer>", "<answer>C</answer>"], ["B", "B"])
    >>> out.total, out.components["accuracy"]
    ([2.0, 0.0], [1.0, 0.0])
    """
    weights = dict(DEFAULT_REWARD_WEIGHTS if weights is None else weights)
    if len(golds) != len(completions):
        raise ValueError(f"{len(completions)} completions but {len(golds)} gold answers")
    if contexts is not None and len(contexts) != len(completions):
        raise ValueError(f"{len(completions)} completions but {len(contexts)} contexts")
    fns = {name: get_reward(name) for name in weights}
    components: dict[str, list[float]] = {name: [] for name in weights}
    total: list[float] = []
    for i, (completion, gold) in enumerate(zip(completions, golds, strict=True)):
        context = {} if contexts is None else dict(contexts[i])
        acc = 0.0
        for name, fn in fns.items():
            value = fn(completion, gold=gold, **context)
            if value is None:
                components[name].append(math.nan)
                continue
            value = float(value)
            if not math.isfinite(value):
                raise ValueError(f"reward {name!r} returned {value} for completion {i}; return a finite float or None")
            components[name].append(value)
            acc += weights[name] * value
        total.append(acc)
    return RewardBreakdown(components=components, total=total)
