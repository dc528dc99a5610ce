"""The consistency bonus of GRPO-CARE (GRPO_CARE.md section 4), computed per group.

Shape legend: n = rollouts in the batch, k = groups (prompts); rollouts of one prompt share a group id.

For each group (the G rollouts of one prompt):

* eligible set ``E = {i : acc_i > 0.1 and acc_i >= mean_group(acc) and p_i is defined}``,
* ``pbar = mean(p_i for i in E)`` (nobody gets a bonus when ``E`` is empty),
* ``bonus_i = lambda * acc_i`` if ``i in E`` and ``p_i >= pbar - margin``, else 0,

where ``p_i = min(exp(mean answer log-prob under the reference), upper_bound)`` comes from
:func:`care.algo.likelihood.answer_likelihood`. A rollout whose answer span could not be located has
``p_i = NaN``: it is neither eligible nor counted in ``pbar`` (the reference code would have scored it 1.0).

**[ours]** the statistics are per group, whatever the number of prompts in the batch.
``reproduce_reference=True`` computes them over the whole batch given (the reference code's per-device batch),
which equals per-group only when the batch holds one prompt.

>>> acc = torch.tensor([1., 1, 1, 1, 1, 0, 0, 0])
>>> p = torch.tensor([.90, .95, .60, .80, .70, .5, .5, .5])
>>> consistency_bonus(acc, p, torch.zeros(8, dtype=torch.long))
tensor([0.5000, 0.5000, 0.0000, 0.5000, 0.0000, 0.0000, 0.0000, 0.0000])
"""

from __future__ import annotations

import torch
from torch import Tensor

from care.algo._groups import group_count, group_index, group_mean, group_sum

ELIGIBLE_ACCURACY = 0.1


def consistency_bonus(
    accuracy: Tensor,
    likelihood: Tensor,
    group_ids: Tensor,
    *,
    lam: float = 0.5,
    margin: float = 0.0,
    reproduce_reference: bool = False,
) -> Tensor:
    """Consistency bonus [n] for rollouts with accuracy rewards [n] and clamped likelihoods [n] (NaN = none).

    Args:
        accuracy: accuracy reward per rollout, [n] float.
        likelihood: ``p_i`` per rollout, already clamped to the upper bound, [n] float; NaN where the
            rollout has no answer span.
        group_ids: group (prompt) of each rollout, [n] int; any integers.
        lam: bonus weight lambda (0.5 in the paper).
        margin: tolerance below the eligible mean (0 for SEED-Bench-R1, 0.01 for the transfer runs).
        reproduce_reference: one statistic over the whole batch instead of one per group.

    Returns:
        bonus [n], ``lam * acc_i`` or 0; never positive for a rollout with ``acc_i <= 0.1``.
    """
    if not (accuracy.shape == likelihood.shape == group_ids.shape) or accuracy.dim() != 1:
        raise ValueError(
            f"accuracy, likelihood and group_ids must all be [n]; got {tuple(accuracy.shape)}, "
            f"{tuple(likelihood.shape)}, {tuple(group_ids.shape)}"
        )
    acc = accuracy.to(torch.float64)
    p = likelihood.to(torch.float64)
    if reproduce_reference:
        group_ids = torch.zeros_like(group_ids)
    index, k = group_index(group_ids)
    eligible = (acc > ELIGIBLE_ACCURACY) & (acc >= group_mean(acc, index, k)[index]) & ~torch.isnan(p)
    n_eligible = group_count(index[eligible], k, torch.float64)
    p_sum = group_sum(p[eligible], index[eligible], k)
    # Groups with no eligible rollout get pbar = +inf, so nobody in them passes the threshold.
    pbar = torch.where(n_eligible > 0, p_sum / n_eligible.clamp(min=1), torch.full_like(p_sum, float("inf")))
    gets_bonus = eligible & (p >= pbar[index] - margin)
    return torch.where(gets_bonus, lam * acc, torch.zeros_like(acc)).to(accuracy.dtype)
