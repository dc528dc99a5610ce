"""Group bookkeeping shared by the consistency bonus and the advantage estimators.

Shape legend: n = rollouts in the batch (any order), k = number of groups.
A group is the G rollouts of one prompt; ``group_ids`` are arbitrary integers, not necessarily contiguous.
"""

from __future__ import annotations

import torch
from torch import Tensor


def group_index(group_ids: Tensor) -> tuple[Tensor, int]:
    """Map arbitrary group ids [n] to dense indices 0..k-1 [n]; returns (index, k).

    >>> group_index(torch.tensor([7, 3, 7]))
    (tensor([1, 0, 1]), 2)
    """
    if group_ids.dim() != 1:
        raise ValueError(f"group_ids must be 1-D [n], got shape {tuple(group_ids.shape)}")
    uniq, index = torch.unique(group_ids, return_inverse=True)
    return index, int(uniq.numel())


def consecutive_pools(group_ids: Tensor, groups_per_pool: int) -> Tensor:
    """Pool index [n] putting groups ``0..m-1``, ``m..2m-1``, ... (ranked by id) in pools of ``m = groups_per_pool``.

    Group ids number the prompts in rollout order, so a pool is ``m`` consecutive prompts, like the prompts one
    device of the reference code scores together.

    >>> consecutive_pools(torch.tensor([4, 4, 9, 9, 7, 7]), 2)
    tensor([0, 0, 1, 1, 0, 0])
    """
    if groups_per_pool < 1:
        raise ValueError(f"groups_per_pool must be at least 1, got {groups_per_pool}")
    index, _ = group_index(group_ids)
    return torch.div(index, groups_per_pool, rounding_mode="floor")


def group_sum(values: Tensor, index: Tensor, k: int) -> Tensor:
    """Sum of ``values`` [n] per group -> [k] (float64 accumulation is the caller's choice of dtype)."""
    return torch.zeros(k, dtype=values.dtype, device=values.device).index_add_(0, index, values)


def group_count(index: Tensor, k: int, dtype: torch.dtype) -> Tensor:
    return group_sum(torch.ones_like(index, dtype=dtype), index, k)


def group_mean(values: Tensor, index: Tensor, k: int) -> Tensor:
    """Mean per group [k]."""
    return group_sum(values, index, k) / group_count(index, k, values.dtype)


def group_std(values: Tensor, index: Tensor, k: int) -> Tensor:
    """Unbiased (N-1) standard deviation per group [k]; 0 for groups of one rollout."""
    count = group_count(index, k, values.dtype)
    mean = group_sum(values, index, k) / count
    sq = group_sum((values - mean[index]) ** 2, index, k)
    return torch.sqrt(sq / (count - 1).clamp(min=1))


def group_is_constant(values: Tensor, index: Tensor, k: int) -> Tensor:
    """True [k] for groups whose values are all equal (exactly; no tolerance)."""
    lo = torch.full((k,), float("inf"), dtype=values.dtype, device=values.device)
    hi = torch.full((k,), float("-inf"), dtype=values.dtype, device=values.device)
    lo = lo.scatter_reduce(0, index, values, reduce="amin")
    hi = hi.scatter_reduce(0, index, values, reduce="amax")
    return lo == hi
