"""EMA reference on one process: closed form after n updates, schedule, frozen mode, dtypes, mismatches."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from care.algo.ema import ReferenceUpdater, ema_update


def _pair():
    torch.manual_seed(0)
    policy = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2))
    return policy, copy.deepcopy(policy)


def test_closed_form_with_constant_policy():
    policy, reference = _pair()
    r0 = [p.detach().clone() for p in reference.parameters()]
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(1.0)
    decay, n = 0.9, 7
    for _ in range(n):
        ema_update(reference, policy, decay)
    for r, p, init in zip(reference.parameters(), policy.parameters(), r0, strict=True):
        torch.testing.assert_close(r, decay**n * init + (1 - decay**n) * p, rtol=1e-6, atol=1e-6)


def test_closed_form_with_moving_policy_and_schedule():
    policy, reference = _pair()
    r0 = [p.detach().clone().double() for p in reference.parameters()]
    updater = ReferenceUpdater(mode="ema", decay=0.8, every=3)
    snapshots = []  # policy parameters at each update
    for step in range(1, 11):
        with torch.no_grad():
            for p in policy.parameters():
                p.mul_(1.1).add_(0.05 * step)
        if updater.maybe_update(reference, policy, step):
            snapshots.append([p.detach().clone().double() for p in policy.parameters()])
    assert len(snapshots) == 3  # steps 3, 6, 9
    d, n = 0.8, len(snapshots)
    for i, r in enumerate(reference.parameters()):
        want = d**n * r0[i] + sum((1 - d) * d ** (n - 1 - j) * snapshots[j][i] for j in range(n))
        torch.testing.assert_close(r.double(), want, rtol=1e-5, atol=1e-6)


def test_frozen_never_moves_and_bad_modes_fail():
    policy, reference = _pair()
    before = [p.detach().clone() for p in reference.parameters()]
    updater = ReferenceUpdater(mode="frozen", every=1)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(1.0)
    assert not any(updater.maybe_update(reference, policy, s) for s in range(1, 20))
    assert all(torch.equal(a, b) for a, b in zip(before, reference.parameters(), strict=True))
    with pytest.raises(ValueError, match="unknown reference mode"):
        ReferenceUpdater(mode="ema_lite")
    with pytest.raises(ValueError, match="decay must be in"):
        ema_update(reference, policy, 1.5)


def test_bf16_reference_accumulates_in_float32():
    policy = nn.Linear(1, 1, bias=False)
    reference = copy.deepcopy(policy).to(torch.bfloat16)
    with torch.no_grad():
        reference.weight.fill_(1.0)
        policy.weight.fill_(2.0)
    ema_update(reference, policy, decay=0.99)
    # 1.01 is stored as the nearest bf16 (1.0078125), not lost as 1 + (a bf16-rounded 0.0) step.
    assert reference.weight.item() == torch.tensor(1.01).to(torch.bfloat16).item() != 1.0


def test_mismatched_models_are_rejected():
    policy, _ = _pair()
    with pytest.raises(ValueError, match="different parameters"):
        ema_update(nn.Linear(4, 5), policy, 0.9)
    other = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    with pytest.raises(ValueError, match=r"parameter 0.weight: reference \(6, 4\) vs policy \(5, 4\)"):
        ema_update(other, policy, 0.9)
