"""Consistency bonus (GRPO_CARE.md section 4) and advantage estimators."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from care.algo.advantages import compute_advantages, registered_advantages
from care.algo.consistency import consistency_bonus

ACC = torch.tensor([1.0, 1, 1, 1, 1, 0, 0, 0])
P = torch.tensor([0.90, 0.95, 0.60, 0.80, 0.70, 0.3, 0.95, float("nan")])


def bonus_loop(acc, p, groups, lam=0.5, margin=0.0):
    """Straight transcription of the specification, one group at a time (the oracle); a value within 1e-9
    (relative) of a mean counts as equal to it."""
    out = [0.0] * len(acc)
    for g in set(groups):
        idx = [i for i in range(len(acc)) if groups[i] == g]
        mean_acc = sum(acc[i] for i in idx) / len(idx)
        elig = [i for i in idx if acc[i] > 0.1 and acc[i] >= mean_acc - 1e-9 * abs(mean_acc) and not math.isnan(p[i])]
        if not elig:
            continue
        pbar = sum(p[i] for i in elig) / len(elig)
        for i in elig:
            if p[i] >= pbar - margin - 1e-9 * abs(pbar):
                out[i] = lam * acc[i]
    return out


def test_worked_example_gives_exact_rewards():
    fmt = torch.ones(8)
    bonus = consistency_bonus(ACC, P, torch.zeros(8, dtype=torch.long))
    assert (ACC + fmt + bonus).tolist() == [2.5, 2.5, 2, 2.5, 2, 1, 1, 1]


def test_margin_and_lambda():
    bonus = consistency_bonus(ACC, P, torch.zeros(8, dtype=torch.long), lam=0.3, margin=0.1)
    # pbar = 0.79: with margin 0.1, p >= 0.69 qualifies (0.70 too); wrong answers never.
    assert bonus.tolist() == pytest.approx([0.3, 0.3, 0, 0.3, 0.3, 0, 0, 0])


def test_no_correct_group_gets_no_bonus_and_nan_is_never_eligible():
    acc = torch.zeros(4)
    assert consistency_bonus(acc, torch.tensor([0.9, 0.1, 0.5, 0.95]), torch.zeros(4, dtype=torch.long)).eq(0).all()
    acc = torch.tensor([1.0, 1.0, 1.0])
    p = torch.tensor([float("nan"), 0.5, 0.4])
    assert consistency_bonus(acc, p, torch.zeros(3, dtype=torch.long)).tolist() == [0.0, 0.5, 0.0]


def test_all_correct_group_gets_nonzero_advantages():
    acc = torch.ones(4)
    p = torch.tensor([0.9, 0.5, 0.8, 0.3])
    groups = torch.zeros(4, dtype=torch.long)
    base = acc + 1.0
    plain = compute_advantages("grpo", base, groups)
    assert plain.advantages.eq(0).all() and plain.zero_variance_groups == 1
    bonus = consistency_bonus(acc, p, groups)
    care = compute_advantages("grpo_care", base, groups, bonus=bonus)
    assert care.zero_variance_groups == 0
    assert (care.advantages[[0, 2]] > 0).all() and (care.advantages[[1, 3]] < 0).all()


def test_per_group_differs_from_per_batch_on_two_prompts():
    # Prompt 0 is easy (all correct, high p), prompt 1 hard (one correct, low p).
    acc = torch.tensor([1.0, 1, 1, 1, 1, 0, 0, 0])
    p = torch.tensor([0.9, 0.9, 0.8, 0.8, 0.5, 0.2, 0.2, 0.2])
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    ours = consistency_bonus(acc, p, groups)
    ref = consistency_bonus(acc, p, groups, reproduce_reference=True, prompts_per_device=2)
    # Per group: prompt 1's only correct sample is its own eligible mean, so it gets the bonus.
    assert ours.tolist() == [0.5, 0.5, 0, 0, 0.5, 0, 0, 0]
    # Both prompts on one device: pbar = 0.78 over all five correct samples; the hard prompt's sample loses it.
    assert ref.tolist() == [0.5, 0.5, 0.5, 0.5, 0, 0, 0, 0]
    assert ref.tolist() == bonus_loop(acc.tolist(), p.tolist(), [0] * 8)
    # The released runs had one prompt per device, the default: per prompt, like ours here.
    assert consistency_bonus(acc, p, groups, reproduce_reference=True).tolist() == ours.tolist()


def test_reference_pools_consecutive_prompts():
    # Four prompts of two rollouts; two prompts per device pool prompts {0, 1} and {2, 3} (ids in rollout
    # order, rows in any order).
    acc = torch.tensor([1.0, 0, 1, 1, 1, 0, 1, 1])
    p = torch.tensor([0.9, 0.1, 0.5, 0.6, 0.35, 0.1, 0.45, 0.2])
    groups = torch.tensor([10, 10, 11, 11, 12, 12, 13, 13])
    perm = torch.tensor([5, 2, 7, 0, 4, 1, 6, 3])
    got = consistency_bonus(acc[perm], p[perm], groups[perm], reproduce_reference=True, prompts_per_device=2)
    pools = [0, 0, 0, 0, 1, 1, 1, 1]
    want = bonus_loop(acc.tolist(), p.tolist(), pools)
    assert want == [0.5, 0, 0, 0, 0.5, 0, 0.5, 0]
    assert got.tolist() == [want[i] for i in perm.tolist()]
    # Per prompt, rollout 3 (0.6 against its prompt's 0.55) would have had one.
    assert consistency_bonus(acc, p, groups, reproduce_reference=True).tolist() == [0.5, 0, 0, 0.5, 0.5, 0, 0.5, 0]
    assert consistency_bonus(acc, p, groups, reproduce_reference=True, prompts_per_device=4).tolist() == \
        bonus_loop(acc.tolist(), p.tolist(), [0] * 8)
    with pytest.raises(ValueError, match="at least 1"):
        consistency_bonus(acc, p, groups, reproduce_reference=True, prompts_per_device=0)


@pytest.mark.parametrize("reproduce_reference", [False, True])
@pytest.mark.parametrize("k", range(1, 17))
def test_every_eligible_rollout_at_the_clamp_gets_the_bonus(k, reproduce_reference):
    # float64: sum([0.95] * k) / k is 0.9500000000000001 for k = 6..9; ties still pass.
    acc = torch.tensor([1.0] * k + [0.0] * 2, dtype=torch.float64)
    p = torch.tensor([0.95] * k + [0.2, 0.95], dtype=torch.float64)
    bonus = consistency_bonus(acc, p, torch.zeros(k + 2, dtype=torch.long), reproduce_reference=reproduce_reference)
    assert bonus.tolist() == [0.5] * k + [0.0, 0.0]
    # The same with the margin of the transfer runs, and for a tied fractional accuracy (all eligible).
    margin = consistency_bonus(acc, p, torch.zeros(k + 2, dtype=torch.long), margin=0.01,
                               reproduce_reference=reproduce_reference)
    assert margin.tolist() == [0.5] * k + [0.0, 0.0]
    frac = torch.full((k,), 0.7, dtype=torch.float64)
    got = consistency_bonus(frac, p[:k], torch.zeros(k, dtype=torch.long), reproduce_reference=reproduce_reference)
    assert got.tolist() == pytest.approx([0.35] * k)


def test_tie_tolerance_is_only_a_tolerance():
    # p a hair (1e-6 relative) below the mean does not pass; 1e-12 below counts as a tie.
    acc = torch.ones(2, dtype=torch.float64)
    assert consistency_bonus(acc, torch.tensor([0.5, 0.5 + 2e-6], dtype=torch.float64),
                             torch.zeros(2, dtype=torch.long)).tolist() == [0.0, 0.5]
    assert consistency_bonus(acc, torch.tensor([0.5, 0.5 + 2e-12], dtype=torch.float64),
                             torch.zeros(2, dtype=torch.long)).tolist() == [0.5, 0.5]


def test_reference_mode_compares_in_float32():
    # x and the next float32 up: their mean is halfway and rounds (to even) to x in float32, so in the
    # reference's precision both are at least the mean; in float64 x is 3e-8 below it.
    x = torch.tensor(0.5, dtype=torch.float32)
    up = torch.nextafter(x, torch.tensor(1.0))
    p = torch.stack([x, up]).to(torch.float64)
    acc, groups = torch.ones(2, dtype=torch.float64), torch.zeros(2, dtype=torch.long)
    assert consistency_bonus(acc, p, groups).tolist() == [0.0, 0.5]
    assert consistency_bonus(acc, p, groups, reproduce_reference=True).tolist() == [0.5, 0.5]
    # acc > 0.1 in float32: an accuracy of float32(0.1) is not above float32(0.1), so never eligible there.
    acc = torch.tensor([0.1, 0.1], dtype=torch.float32).to(torch.float64)
    assert consistency_bonus(acc, p, groups, reproduce_reference=True).tolist() == [0.0, 0.0]


group_batches = st.integers(1, 4).flatmap(
    lambda k: st.integers(2, 6).flatmap(
        lambda g: st.tuples(
            st.just(k * g),
            st.lists(st.sampled_from([0.0, 1.0, 0.05, 0.5]), min_size=k * g, max_size=k * g),
            st.lists(
                st.one_of(st.floats(0.0, 0.95, allow_nan=False), st.just(float("nan"))), min_size=k * g, max_size=k * g
            ),
            st.permutations([i // g for i in range(k * g)]),
        )
    )
)


@settings(max_examples=150, deadline=None)
@given(group_batches, st.sampled_from([0.0, 0.01]))
def test_vectorised_equals_loop_and_invariants(batch, margin):
    _n, acc, p, groups = batch
    acc_t, p_t, g_t = torch.tensor(acc, dtype=torch.float64), torch.tensor(p, dtype=torch.float64), torch.tensor(groups)
    bonus = consistency_bonus(acc_t, p_t, g_t, margin=margin)
    assert bonus.tolist() == pytest.approx(bonus_loop(acc, p, list(groups), margin=margin))
    # Never a bonus for a wrong answer (acc <= 0.1).
    assert all(b == 0 for b, a in zip(bonus.tolist(), acc, strict=True) if a <= 0.1)
    for name in registered_advantages():
        kwargs = {"bonus": bonus} if name == "grpo_care" else {}
        out = compute_advantages(name, acc_t + 1.0, g_t, **kwargs)
        assert torch.isfinite(out.advantages).all()
        for g in set(groups):
            sel = g_t == g
            assert out.advantages[sel].sum().abs().item() < 1e-9, f"{name}: group {g} not zero-mean"


def test_grpo_hand_computed():
    # Worked-example rewards: mean 1.8125, unbiased std = sqrt(3.46875 / 7).
    r = torch.tensor([2.5, 2.5, 2.0, 2.5, 2.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    std = math.sqrt(3.46875 / 7)
    out = compute_advantages("grpo", r, torch.zeros(8, dtype=torch.long))
    assert out.advantages.tolist() == pytest.approx([(x - 1.8125) / (std + 1e-4) for x in r.tolist()], abs=1e-12)
    rloo = compute_advantages("rloo", r, torch.zeros(8, dtype=torch.long)).advantages
    assert rloo[0].item() == pytest.approx(2.5 - (14.5 - 2.5) / 7)
    assert rloo[5].item() == pytest.approx(1.0 - (14.5 - 1.0) / 7)


def test_zero_variance_groups_reported_and_singletons_safe():
    r = torch.tensor([1.0, 1.0, 2.0, 0.0, 3.0])
    g = torch.tensor([5, 5, 9, 9, 2])  # group 2 has one rollout
    for name in ("grpo", "dr_grpo", "rloo"):
        out = compute_advantages(name, r, g)
        assert out.zero_variance.tolist() == [True, True, False, False, True]
        assert out.zero_variance_groups == 2 and out.n_groups == 3
        assert out.advantages[[0, 1, 4]].eq(0).all()
        assert torch.isfinite(out.advantages).all()


def test_bonus_only_with_grpo_care():
    r, g = torch.ones(4), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="needs the consistency bonus"):
        compute_advantages("grpo_care", r, g)
    with pytest.raises(ValueError, match="does not use a consistency bonus"):
        compute_advantages("grpo", r, g, bonus=torch.zeros(4))
    with pytest.raises(KeyError, match="unknown advantage estimator 'ppo'"):
        compute_advantages("ppo", r, g)
