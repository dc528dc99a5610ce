"""The consistency bonus of GRPO-CARE (GRPO_CARE.md section 4).

Shape legend: n = rollouts in the batch, k = pools of rollouts that share one statistic.

For each pool (**[ours]**: the G rollouts of one prompt):

* eligible set ``E = {i : acc_i > 0.1 and acc_i >= mean_pool(acc) and p_i is defined}``,
* ``pbar = mean(p_i for i in E)`` (nobody gets a bonus when ``E`` is empty),
* ``bonus_i = lambda * acc_i`` if ``i in E`` and ``p_i >= pbar - margin``, else 0,

where ``p_i = min(exp(mean answer log-prob under the reference), upper_bound)`` comes from
:func:`care.algo.likelihood.answer_likelihood`. A rollout whose answer span could not be located has
``p_i = NaN``: it is neither eligible nor counted in ``pbar``.

Ties. Both ``>=`` compare a value with a mean it took part in, so equal values must pass: in an all-correct
group every rollout is eligible, and when every eligible rollout sits at the clamp (0.95) every one of them
is at the mean. But a float64 mean rounds: 0.95 summed k times and divided by k is 0.9500000000000001 for
k = 6..9, and ``0.95 >= 0.9500000000000001`` is False, so nobody would get the bonus. **[ours]** compares in
float64 with a relative tolerance ``TIE_RTOL`` = 1e-9 of the mean: the rounding of a float64 mean of a few
values is ~1e-16 relative, far below it, and 1e-9 is far below any difference a likelihood can carry (the
reference model's log-probs are float32 at best, resolution ~6e-8), so the tolerance decides ties and
nothing else. The same holds for ``acc_i >= mean(acc)`` with fractional accuracies.

``reproduce_reference=True`` computes what the reference code computes on one device: one statistic over the
rollouts of ``prompts_per_device`` consecutive prompts (the released runs: 1 prompt of G rollouts per device),
in float32 like the reference's tensors: accuracy and p rounded to float32, ``acc > 0.1`` against
float32(0.1), each mean accumulated in float64 and rounded once to float32 (the correctly rounded mean), then
``p >= float32(pbar) - margin`` in float32. The reference's GPU mean accumulates in float32 in an order of its
own; for a pool of up to 8 values at the clamp (the released runs: G = 8) every order gives at most the
clamp, so all of them pass there as here; from 9 values on some orders round above it, a tie we keep a tie.

>>> acc = torch.tensor([1., 1, 1, 1, 1, 0, 0, 0])
>>> p = torch.tensor([.90, .95, .60, .80, .70, .5, .5, .5])
>>> consistency_bonus(acc, p, torch.zeros(8, dtype=torch.long))
tensor([0.5000, 0.5000, 0.0000, 0.5000, 0.0000, 0.0000, 0.0000, 0.0000])
"""

from __future__ import annotations

import torch
from torch import Tensor

from care.algo._groups import consecutive_pools, group_count, group_index, group_mean, group_sum

ELIGIBLE_ACCURACY = 0.1
TIE_RTOL = 1e-9
"""Relative tolerance of the float64 comparisons with a pool mean (module docstring, "Ties")."""


def consistency_bonus(
    accuracy: Tensor,
    likelihood: Tensor,
    group_ids: Tensor,
    *,
    lam: float = 0.5,
    margin: float = 0.0,
    reproduce_reference: bool = False,
    prompts_per_device: int = 1,
) -> Tensor:
    """Consistency bonus [n] for rollouts with accuracy rewards [n] and clamped likelihoods [n] (NaN = none).

    Args:
        accuracy: accuracy reward per rollout, [n] float.
        likelihood: ``p_i`` per rollout, already clamped to the upper bound, [n] float; NaN where the
            rollout has no answer span.
        group_ids: group (prompt) of each rollout, [n] int, numbering the prompts in rollout order.
        lam: bonus weight lambda (0.5 in the paper).
        margin: tolerance below the eligible mean (0 for SEED-Bench-R1, 0.01 for the transfer runs).
        reproduce_reference: the reference code's statistic: per ``prompts_per_device`` consecutive groups,
            in float32.
        prompts_per_device: groups pooled into one statistic with ``reproduce_reference`` (ignored otherwise).

    Returns:
        bonus [n], ``lam * acc_i`` or 0; never positive for a rollout with ``acc_i <= 0.1``.
    """
    if not (accuracy.shape == likelihood.shape == group_ids.shape) or accuracy.dim() != 1:
        raise ValueError(
            f"accuracy, likelihood and group_ids must all be [n]; got {tuple(accuracy.shape)}, "
            f"{tuple(likelihood.shape)}, {tuple(group_ids.shape)}"
        )
    if reproduce_reference:
        gets_bonus = _reference_selection(accuracy, likelihood, consecutive_pools(group_ids, prompts_per_device),
                                          margin)
    else:
        gets_bonus = _selection(accuracy.to(torch.float64), likelihood.to(torch.float64), group_ids, margin)
    acc = accuracy.to(torch.float64)
    return torch.where(gets_bonus, lam * acc, torch.zeros_like(acc)).to(accuracy.dtype)


def _at_least(x: Tensor, mean: Tensor, offset: float = 0.0) -> Tensor:
    """``x >= mean - offset``, with ties to ``mean`` within ``TIE_RTOL`` relative counted as equal."""
    return x >= mean - offset - TIE_RTOL * mean.abs()


def _selection(acc: Tensor, p: Tensor, group_ids: Tensor, margin: float) -> Tensor:
    """[ours] per group, float64, ties tolerated: who gets the bonus [n] bool."""
    index, k = group_index(group_ids)
    eligible = (acc > ELIGIBLE_ACCURACY) & _at_least(acc, group_mean(acc, index, k)[index]) & ~torch.isnan(p)
    n_eligible = group_count(index[eligible], k, torch.float64)
    pbar = group_sum(p[eligible], index[eligible], k) / n_eligible.clamp(min=1)  # 0 where E is empty: unused
    return eligible & _at_least(p, pbar[index], margin)


def _float32_mean(values: Tensor, index: Tensor, k: int) -> Tensor:
    """Mean [k] of float32 ``values`` per pool: float64 accumulation, one rounding to float32."""
    total = group_sum(values.to(torch.float64), index, k)
    return (total / group_count(index, k, torch.float64).clamp(min=1)).to(torch.float32)


def _reference_selection(accuracy: Tensor, likelihood: Tensor, pool: Tensor, margin: float) -> Tensor:
    """The reference code's selection on each pool, in its float32 precision: who gets the bonus [n] bool."""
    acc, p = accuracy.to(torch.float32), likelihood.to(torch.float32)
    index, k = group_index(pool)
    # python-float thresholds meet float32 tensors in float32, as in the reference (0.1 -> float32(0.1))
    eligible = (acc > ELIGIBLE_ACCURACY) & (acc >= _float32_mean(acc, index, k)[index]) & ~torch.isnan(p)
    pbar = _float32_mean(p[eligible], index[eligible], k)  # 0 where E is empty: unused
    return eligible & (p >= (pbar - margin)[index])
