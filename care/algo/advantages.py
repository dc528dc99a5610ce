"""Advantage estimators, in a registry (``register_advantage``), one scalar advantage per rollout.

Shape legend: n = rollouts in the batch (any order), k = groups (prompts).

* ``grpo``: ``A_i = (r_i - mean_G r) / (std_G r + eps)``, unbiased std (N-1), eps = 1e-4 (GRPO_CARE.md
  section 6; DeepSeekMath eq. for outcome supervision).
* ``grpo_care``: the same estimator over rewards that include the consistency bonus
  (``r = r_acc + r_fmt + bonus``); :func:`compute_advantages` requires the bonus for it.
* ``dr_grpo``: ``A_i = r_i - mean_G r`` (Dr.GRPO, arXiv 2503.20783: no std scaling).
* ``rloo``: ``A_i = r_i - mean_{j != i} r_j = G/(G-1) (r_i - mean_G r)`` (Ahmadian et al. 2024).

Every estimator reports the groups whose rewards are all equal (zero variance): they carry no signal and
get exactly zero advantage.

>>> r = torch.tensor([2.5, 2.5, 2.0, 2.5, 2.0, 1.0, 1.0, 1.0])
>>> out = compute_advantages("dr_grpo", r, torch.zeros(8, dtype=torch.long))
>>> out.advantages
tensor([ 0.6875,  0.6875,  0.1875,  0.6875,  0.1875, -0.8125, -0.8125, -0.8125])
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from care.algo._groups import group_count, group_index, group_is_constant, group_mean, group_std

AdvantageFn = Callable[..., Tensor]

_ESTIMATORS: dict[str, AdvantageFn] = {}
# Estimators whose rewards must include the consistency bonus.
_NEEDS_BONUS = {"grpo_care"}


@dataclass(frozen=True)
class AdvantageResult:
    """``advantages`` [n]; ``zero_variance`` [n] True for rollouts of a constant-reward group;
    ``zero_variance_groups`` the number of such groups; ``n_groups`` the number of groups."""

    advantages: Tensor
    zero_variance: Tensor
    zero_variance_groups: int
    n_groups: int

    @property
    def zero_variance_fraction(self) -> float:
        return self.zero_variance_groups / max(self.n_groups, 1)


def register_advantage(name: str) -> Callable[[AdvantageFn], AdvantageFn]:
    """Register ``fn(rewards [n], index [n] dense group index, k, *, eps) -> advantages [n]``."""

    def decorate(fn: AdvantageFn) -> AdvantageFn:
        if name in _ESTIMATORS and _ESTIMATORS[name] is not fn:
            raise ValueError(f"advantage estimator {name!r} is already registered")
        _ESTIMATORS[name] = fn
        return fn

    return decorate


def registered_advantages() -> list[str]:
    """Names of the registered estimators.

    >>> registered_advantages()
    ['dr_grpo', 'grpo', 'grpo_care', 'rloo']
    """
    return sorted(_ESTIMATORS)


@register_advantage("grpo")
def grpo_advantage(rewards: Tensor, index: Tensor, k: int, *, eps: float = 1e-4) -> Tensor:
    """``(r - mean_G) / (std_G + eps)`` [n]."""
    mean = group_mean(rewards, index, k)
    std = group_std(rewards, index, k)
    return (rewards - mean[index]) / (std[index] + eps)


@register_advantage("grpo_care")
def grpo_care_advantage(rewards: Tensor, index: Tensor, k: int, *, eps: float = 1e-4) -> Tensor:
    """GRPO over rewards that already include the consistency bonus [n]."""
    return grpo_advantage(rewards, index, k, eps=eps)


@register_advantage("dr_grpo")
def dr_grpo_advantage(rewards: Tensor, index: Tensor, k: int, *, eps: float = 1e-4) -> Tensor:
    """``r - mean_G`` [n] (no std scaling; ``eps`` unused)."""
    return rewards - group_mean(rewards, index, k)[index]


@register_advantage("rloo")
def rloo_advantage(rewards: Tensor, index: Tensor, k: int, *, eps: float = 1e-4) -> Tensor:
    """Leave-one-out baseline ``r_i - mean_{j != i} r_j`` [n]; 0 for groups of one rollout."""
    count = group_count(index, k, rewards.dtype)[index]
    centred = rewards - group_mean(rewards, index, k)[index]
    return torch.where(count > 1, centred * count / (count - 1).clamp(min=1), torch.zeros_like(centred))


def compute_advantages(
    name: str,
    rewards: Tensor,
    group_ids: Tensor,
    *,
    bonus: Tensor | None = None,
    eps: float = 1e-4,
) -> AdvantageResult:
    """Advantages [n] of rollouts with rewards [n] in groups ``group_ids`` [n] by the estimator ``name``.

    ``bonus`` [n] (the consistency bonus) is added to ``rewards`` for ``grpo_care`` and must be absent for the
    others, so a baseline can never silently include it.
    """
    if name not in _ESTIMATORS:
        raise KeyError(f"unknown advantage estimator {name!r}; registered: {registered_advantages()}")
    if rewards.shape != group_ids.shape or rewards.dim() != 1:
        raise ValueError(f"rewards and group_ids must be [n]; got {tuple(rewards.shape)}, {tuple(group_ids.shape)}")
    if name in _NEEDS_BONUS:
        if bonus is None:
            raise ValueError(f"estimator {name!r} needs the consistency bonus (bonus=...)")
        rewards = rewards + bonus
    elif bonus is not None:
        raise ValueError(f"estimator {name!r} does not use a consistency bonus; use 'grpo_care' or drop bonus=")
    index, k = group_index(group_ids)
    values = _ESTIMATORS[name](rewards, index, k, eps=eps)
    constant = group_is_constant(rewards, index, k)
    values = torch.where(constant[index], torch.zeros_like(values), values)
    return AdvantageResult(
        advantages=values,
        zero_variance=constant[index],
        zero_variance_groups=int(constant.sum()),
        n_groups=k,
    )
