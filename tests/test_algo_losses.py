"""Policy losses: hand-computed values for every aggregation, PPO clipping, KL estimators, metrics."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from care.algo.losses import AGGREGATIONS, aggregate_loss, kl_penalty, policy_loss

MASK = torch.tensor([[True, True, False], [True, True, True]])
ADV = torch.tensor([1.0, -2.0], dtype=torch.float64)


def _logp(values):
    return torch.log(torch.tensor(values, dtype=torch.float64)).requires_grad_(True)


@pytest.mark.parametrize(
    ("mode", "loss", "grad_row0", "grad_row1"),
    [
        # loss_mat = -A: row0 -1 (2 tokens), row1 +2 (3 tokens).
        ("seq_mean_token_mean", (-1 + 2) / 2, -1 / 2 / 2, 2 / 3 / 2),
        ("token_mean", (-2 + 6) / 5, -1 / 5, 2 / 5),
        ("seq_mean_token_sum_norm", (-2 / 3 + 6 / 3) / 2, -1 / 3 / 2, 2 / 3 / 2),
    ],
)
def test_on_policy_aggregations(mode, loss, grad_row0, grad_row1):
    logp = _logp([[0.3, 0.6, 0.2], [0.5, 0.5, 0.9]])
    out = policy_loss(logp, ADV, MASK, aggregation=mode)
    assert out.loss.item() == pytest.approx(loss)
    out.loss.backward()
    # ratio = exp(logp - logp.detach()) = 1 with d ratio / d logp = 1: the gradient is -A / normaliser.
    expected = torch.tensor([[grad_row0, grad_row0, 0.0], [grad_row1] * 3], dtype=torch.float64)
    torch.testing.assert_close(logp.grad, expected)
    assert out.metrics["clip_frac_low"] == out.metrics["clip_frac_high"] == out.metrics["approx_kl"] == 0.0


def test_dr_grpo_norm_length_is_a_constant():
    x = torch.tensor([[1.0, 3.0, 0.0], [3.0, 3.0, 3.0]])
    assert aggregate_loss(x, MASK, "seq_mean_token_sum_norm", norm_length=10).item() == pytest.approx((4 + 9) / 10 / 2)
    with pytest.raises(ValueError, match="unknown aggregation 'mean'"):
        aggregate_loss(x, MASK, "mean")


def test_ppo_clipped_surrogate_hand_computed():
    ratios = [[1.5, 0.9, 1.0], [0.5, 1.1, 1.0]]
    logp = _logp(ratios)
    old = torch.zeros(2, 3, dtype=torch.float64)
    out = policy_loss(logp, ADV, MASK, old_logp=old, eps_low=0.2, eps_high=0.2, aggregation="token_mean")
    # row0 (A=+1): 1.5 clipped to 1.2 -> -1.2; 0.9 -> -0.9.  row1 (A=-2): 0.5 clipped to 0.8 -> 1.6; 1.1 -> 2.2; 1 -> 2.
    assert out.loss.item() == pytest.approx((-1.2 - 0.9 + 1.6 + 2.2 + 2.0) / 5)
    assert out.metrics["clip_frac_high"] == pytest.approx(1 / 5)
    assert out.metrics["clip_frac_low"] == pytest.approx(1 / 5)
    k3 = [r - 1 - math.log(r) for r in (1.5, 0.9, 0.5, 1.1, 1.0)]
    assert out.metrics["approx_kl"] == pytest.approx(sum(k3) / 5)
    out.loss.backward()
    # Clipped tokens get no gradient; others -A * ratio / 5.
    expected = torch.tensor([[0.0, -0.9 / 5, 0.0], [0.0, 2 * 1.1 / 5, 2 * 1.0 / 5]], dtype=torch.float64)
    torch.testing.assert_close(logp.grad, expected)


def test_ppo_asymmetric_bounds():
    logp = _logp([[1.25, 1.0, 1.0], [0.85, 1.0, 1.0]])
    old = torch.zeros(2, 3, dtype=torch.float64)
    # DAPO-style bounds: 1.25 < 1 + 0.28 is not clipped for A > 0, while 0.85 < 1 - 0.1 is clipped for A < 0.
    out = policy_loss(logp, ADV, MASK, old_logp=old, eps_low=0.1, eps_high=0.28)
    assert out.metrics["clip_frac_high"] == 0.0 and out.metrics["clip_frac_low"] == pytest.approx(1 / 5)
    out = policy_loss(logp, ADV, MASK, old_logp=old, eps_low=0.2, eps_high=0.2)
    assert out.metrics["clip_frac_high"] == pytest.approx(1 / 5) and out.metrics["clip_frac_low"] == 0.0


@pytest.mark.parametrize(("estimator", "per_token"), [("k1", math.log(2)), ("k3", 0.5 - 1 + math.log(2))])
def test_kl_penalty_added(estimator, per_token):
    logp = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    ref = torch.full((2, 3), math.log(0.5), dtype=torch.float64)
    out = policy_loss(logp, ADV, MASK, ref_logp=ref, kl_beta=0.1, kl_estimator=estimator, aggregation="token_mean")
    assert out.metrics["kl"] == pytest.approx(per_token)
    assert out.loss.item() == pytest.approx((-2 + 6) / 5 + 0.1 * per_token)
    with pytest.raises(ValueError, match="needs ref_logp"):
        policy_loss(logp, ADV, MASK, kl_beta=0.1)


def test_kl_estimators_zero_at_equal_policies_and_k3_nonnegative():
    x = torch.linspace(-3, 0, 7)
    assert kl_penalty(x, x, "k1").eq(0).all() and kl_penalty(x, x, "k3").eq(0).all()
    assert (kl_penalty(x, x.flip(0), "k3") >= 0).all()


def test_entropy_reported_and_shape_errors():
    logp = torch.zeros(2, 3, requires_grad=True)
    ent = torch.tensor([[1.0, 3.0, 100.0], [2.0, 2.0, 2.0]])
    out = policy_loss(logp, ADV.float(), MASK, entropy=ent)
    assert out.metrics["entropy"] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="advantages"):
        policy_loss(logp, torch.zeros(3), MASK)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 4),
    st.integers(1, 6),
    st.sampled_from(AGGREGATIONS),
    st.booleans(),
    st.integers(0, 10_000),
)
def test_loss_always_finite(b, t, mode, ppo, seed):
    g = torch.Generator().manual_seed(seed)
    logp = (-torch.rand(b, t, generator=g) * 20).requires_grad_(True)
    mask = torch.rand(b, t, generator=g) > 0.3  # rows may be all padding
    adv = torch.randn(b, generator=g) * 5
    old = logp.detach() + torch.randn(b, t, generator=g) * 3 if ppo else None
    out = policy_loss(logp, adv, mask, old_logp=old, aggregation=mode, ref_logp=torch.zeros(b, t), kl_beta=0.01)
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(logp.grad).all()
    assert all(math.isfinite(v) for v in out.metrics.values())
