"""Policy-gradient losses: token-level loss matrices, their aggregation, PPO clipping, optional KL.

Shape legend: b = sequences (rollouts), t = completion tokens (right-padded), v = vocabulary.
``mask`` [b, t] marks real completion tokens (the first EOS included, padding excluded).

What is on and off:

* One step per generation batch (the reference code): no behaviour log-probs are passed, the ratio is
  ``exp(logp - logp.detach())`` (identically 1, gradient ``grad logp``), no clipping:
  ``loss_it = -A_i * ratio_it``.
* Several steps per generation batch **[ours]**: pass the behaviour log-probs ``old_logp``; PPO's clipped
  surrogate (Schulman et al. 2017, eq. 7) with asymmetric bounds (DAPO, arXiv 2503.14476, eq. 10):
  ``loss_it = max(-A_i r_it, -A_i clip(r_it, 1 - eps_low, 1 + eps_high))``, ``r_it = exp(logp - old_logp)``.
* KL penalty against a reference: off by default (GRPO-CARE has no KL term, beta = 0). With ``kl_beta > 0``
  and ``ref_logp``, ``beta * KL_it`` is added per token, estimator ``k1 = logp - ref_logp`` or
  ``k3 = exp(ref - logp) - (ref - logp) - 1`` (Schulman, "Approximating KL divergence", 2020).

Aggregations of the loss matrix (:data:`AGGREGATIONS`):

* ``seq_mean_token_mean`` (reference code, GRPO): mean over tokens of each sequence, then over sequences.
* ``token_mean`` (DAPO): mean over all tokens of the batch.
* ``seq_mean_token_sum_norm`` (Dr.GRPO): per-sequence token sum divided by a constant length
  (``norm_length``, default the padded length ``t``), then mean over sequences.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

AGGREGATIONS = ("seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm")
KL_ESTIMATORS = ("k1", "k3")


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` where ``mask`` is set (0 when nothing is); any shape.

    >>> masked_mean(torch.tensor([1., 2., 30.]), torch.tensor([True, True, False]))
    tensor(1.5000)
    """
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1)


def aggregate_loss(loss_mat: Tensor, mask: Tensor, mode: str, *, norm_length: int | None = None) -> Tensor:
    """Reduce a token loss matrix [b, t] to a scalar by ``mode`` (see the module docstring).

    >>> m = torch.tensor([[1., 1., 0.], [1., 1., 1.]])
    >>> x = torch.tensor([[1., 3., 99.], [3., 3., 3.]])
    >>> [round(aggregate_loss(x, m, mode).item(), 4) for mode in AGGREGATIONS]
    [2.5, 2.6, 2.1667]
    """
    if loss_mat.shape != mask.shape or loss_mat.dim() != 2:
        raise ValueError(f"loss_mat and mask must both be [b, t]; got {tuple(loss_mat.shape)}, {tuple(mask.shape)}")
    maskf = mask.to(loss_mat.dtype)
    token_sums = (loss_mat * maskf).sum(dim=-1)
    if mode == "seq_mean_token_mean":
        # A sequence with no completion token contributes 0 (it still counts in the batch mean).
        return (token_sums / maskf.sum(dim=-1).clamp(min=1)).mean()
    if mode == "token_mean":
        return token_sums.sum() / maskf.sum().clamp(min=1)
    if mode == "seq_mean_token_sum_norm":
        length = loss_mat.shape[-1] if norm_length is None else norm_length
        if length <= 0:
            raise ValueError(f"norm_length must be positive, got {length}")
        return (token_sums / length).mean()
    raise ValueError(f"unknown aggregation {mode!r}; choose one of {AGGREGATIONS}")


def kl_penalty(logp: Tensor, ref_logp: Tensor, estimator: str = "k3") -> Tensor:
    """Per-token KL(pi || ref) estimate [b, t] from sampled-token log-probs.

    >>> kl_penalty(torch.tensor([0.0]), torch.tensor([-1.0]), "k1"), kl_penalty(torch.tensor([0.0]), torch.tensor([0.0]))
    (tensor([1.]), tensor([0.]))
    """
    log_ratio = ref_logp - logp
    if estimator == "k1":
        return -log_ratio
    if estimator == "k3":
        return torch.expm1(log_ratio) - log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}; choose one of {KL_ESTIMATORS}")


@dataclass(frozen=True)
class PolicyLossOutput:
    """``loss`` (scalar, differentiable) and float ``metrics`` (token means over the mask).

    metrics: ``pg_loss``, ``clip_frac_low`` (ratio below 1 - eps_low with A < 0), ``clip_frac_high`` (ratio
    above 1 + eps_high with A > 0), ``approx_kl`` (k3 estimate of KL(behaviour || policy); 0 on-policy),
    ``kl`` (against the reference, when given), ``entropy`` (when given).
    """

    loss: Tensor
    metrics: dict[str, float]


def policy_loss(
    logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    old_logp: Tensor | None = None,
    ref_logp: Tensor | None = None,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    kl_beta: float = 0.0,
    kl_estimator: str = "k3",
    aggregation: str = "seq_mean_token_mean",
    norm_length: int | None = None,
    entropy: Tensor | None = None,
) -> PolicyLossOutput:
    """Policy-gradient loss of completion tokens.

    Args:
        logp: log-probs of the sampled tokens under the current policy, [b, t], with gradient.
        advantages: one advantage per sequence, [b] (broadcast over tokens).
        mask: real completion tokens, [b, t] bool.
        old_logp: behaviour-policy log-probs [b, t] (no gradient); ``None`` = one on-policy step, no clipping.
        ref_logp: reference log-probs [b, t], used only when ``kl_beta > 0``.
        eps_low, eps_high: clip range ``[1 - eps_low, 1 + eps_high]`` of the ratio.
        kl_beta: weight of the per-token KL penalty (0: off, the GRPO-CARE setting).
        kl_estimator: ``"k1"`` or ``"k3"``.
        aggregation: one of :data:`AGGREGATIONS`; ``norm_length`` for ``seq_mean_token_sum_norm``.
        entropy: per-token entropy [b, t] to report (not part of the loss).
    """
    if logp.shape != mask.shape or advantages.shape != logp.shape[:1]:
        raise ValueError(
            f"expected logp/mask [b, t] and advantages [b]; got {tuple(logp.shape)}, {tuple(mask.shape)}, "
            f"{tuple(advantages.shape)}"
        )
    adv = advantages.to(logp.dtype).unsqueeze(-1)
    metrics: dict[str, float] = {}
    if old_logp is None:
        ratio = torch.exp(logp - logp.detach())
        loss_mat = -adv * ratio
        metrics.update(clip_frac_low=0.0, clip_frac_high=0.0, approx_kl=0.0)
    else:
        log_ratio = logp - old_logp.detach()
        ratio = torch.exp(log_ratio)
        clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high)
        loss_mat = torch.maximum(-adv * ratio, -adv * clipped)
        with torch.no_grad():
            low = (ratio < 1.0 - eps_low) & (adv < 0)
            high = (ratio > 1.0 + eps_high) & (adv > 0)
            metrics["clip_frac_low"] = masked_mean(low.to(logp.dtype), mask).item()
            metrics["clip_frac_high"] = masked_mean(high.to(logp.dtype), mask).item()
            metrics["approx_kl"] = masked_mean(torch.expm1(log_ratio) - log_ratio, mask).item()
    metrics["pg_loss"] = aggregate_loss(loss_mat.detach(), mask, aggregation, norm_length=norm_length).item()
    if kl_beta > 0:
        if ref_logp is None:
            raise ValueError("kl_beta > 0 needs ref_logp (reference log-probs of the sampled tokens)")
        kl = kl_penalty(logp, ref_logp.detach(), kl_estimator)
        loss_mat = loss_mat + kl_beta * kl
        metrics["kl"] = masked_mean(kl.detach(), mask).item()
    if entropy is not None:
        metrics["entropy"] = masked_mean(entropy.detach().to(logp.dtype), mask).item()
    loss = aggregate_loss(loss_mat, mask, aggregation, norm_length=norm_length)
    return PolicyLossOutput(loss=loss, metrics=metrics)
