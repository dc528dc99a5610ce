"""Log-probabilities of chosen tokens without the full ``[b, t, vocab]`` logits, and the reference likelihood
of the answer (GRPO_CARE.md section 4).

Shape legend: b = sequences, t = input tokens (prompt + completion, padded), h = hidden size, v = vocabulary,
k = number of target tokens in the whole batch.

The decoder body runs once over the whole input (same inputs, hence same attention mask and M-RoPE
positions as a full forward: ``ForCausalLM.forward`` is ``lm_head(model(...))``); the LM head and the
log-softmax are then applied only to the hidden states that predict a target token (position ``j - 1``
for target ``j``), in chunks. Memory for logits is ``chunk_size * v`` instead of ``b * t * v``, which
matters at Qwen's v = 151,936.

``p = min(exp(mean answer log-prob), upper_bound)``; a row without answer tokens has ``p = NaN`` and
``has_answer = False``. ``reproduce_reference=True`` averages as the reference code does,
``sum / (n_tokens + 1e-6)``, so a row without answer tokens has mean log-prob 0 and ``p = min(1, upper_bound)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from care.algo.ema import unwrap_model

REFERENCE_COUNT_EPS = 1e-6
"""Added to the answer-token count by the reference code's mean (it makes an empty span's mean 0, not NaN)."""

LSE_BLOCK_ELEMENTS = 1 << 18
"""Logits per logsumexp call in ``selective_log_softmax`` (1 MiB of float32 temporaries)."""


def selective_log_softmax(logits: Tensor, index: Tensor) -> Tensor:
    """``log_softmax(logits)[..., index]`` [...] from logits [..., v], one row at a time.

    Only one row's log-softmax exists at a time for low-precision logits; for float32/64 the logsumexp is
    taken directly, so no second ``[..., v]`` tensor is allocated.

    >>> logits = torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    >>> selective_log_softmax(logits, torch.tensor([0, 1])).round(decimals=4)
    tensor([-0.6931, -0.3133])
    """
    if logits.dtype in (torch.float32, torch.float64):
        chosen = torch.gather(logits, -1, index.unsqueeze(-1)).squeeze(-1)
        # rows in blocks of about LSE_BLOCK_ELEMENTS values: the temporary stays small at Qwen's vocabulary
        # (one row per block), while a small vocabulary is not paid for with one Python iteration per row
        block = max(1, LSE_BLOCK_ELEMENTS // max(logits.shape[-1], 1))
        flat = logits.reshape(-1, logits.shape[-1])
        lse = torch.cat([torch.logsumexp(flat[i : i + block], dim=-1) for i in range(0, flat.shape[0], block)])
        return chosen - lse.reshape(chosen.shape)
    out = [
        torch.gather(torch.log_softmax(row.float(), dim=-1), -1, idx.unsqueeze(-1)).squeeze(-1)
        for row, idx in zip(logits, index, strict=True)
    ]
    return torch.stack(out)


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy [...] of the categorical distributions given by logits [..., v] (float32 arithmetic).

    >>> entropy_from_logits(torch.zeros(4)).item() == torch.log(torch.tensor(4.0)).item()
    True
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def _body_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    inner = unwrap_model(model)
    body, head = getattr(inner, "model", None), inner.get_output_embeddings()
    if body is None or head is None:
        raise TypeError(
            f"{type(inner).__name__} has no decoder body (.model) and LM head; expected a Hugging Face "
            "*ForCausalLM / *ForConditionalGeneration model"
        )
    return body, head


@dataclass(frozen=True)
class TokenLogProbs:
    """``logp`` [b, t]: log-prob of ``input_ids[:, j]`` given the tokens before it at target positions, 0
    elsewhere; ``entropy`` [b, t] at target positions (0 elsewhere) when asked, else None."""

    logp: Tensor
    entropy: Tensor | None


def token_log_probs(
    model: nn.Module,
    inputs: Mapping[str, Tensor],
    target_mask: Tensor,
    *,
    chunk_size: int = 1024,
    temperature: float = 1.0,
    with_entropy: bool = False,
    shared_prompts: Any | None = None,
) -> TokenLogProbs:
    """Per-token log-probs of the target tokens [b, t] with the LM head applied at those positions only.

    Args:
        model: a Hugging Face causal LM (Qwen2.5-VL included), possibly DDP-wrapped; gradients flow.
        inputs: the model inputs (``input_ids`` [b, t], ``attention_mask``, pixel values, grids, ...).
        target_mask: [b, t] bool, the tokens to score; column 0 cannot be a target (nothing predicts it).
        chunk_size: target positions per LM-head call (bounds the logits to ``chunk_size * v``).
        temperature: divides the logits first, to match the distribution the tokens were sampled from.
        with_entropy: also return the entropy of the predictive distribution at the target positions.
        shared_prompts: the batch's repeated prompts (``care.models.shared_prompts.SharedPrompts``, from
            ``encode_prompt_completions``): the decoder body then runs each distinct prompt once and the
            completions on its cache, with the same result. Targets must then lie after the prompt.
    """
    input_ids = inputs["input_ids"]
    if target_mask.shape != input_ids.shape:
        raise ValueError(f"target_mask {tuple(target_mask.shape)} must match input_ids {tuple(input_ids.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if target_mask[:, 0].any():
        raise ValueError("target_mask[:, 0] is set: the first token has no preceding position to predict it")
    body, head = _body_and_head(model)
    forward_inputs = {k: v for k, v in inputs.items() if k not in ("labels", "logits_to_keep")}
    shared = shared_prompts.hidden_states(body, forward_inputs) if shared_prompts is not None else None
    if shared is not None:
        hidden, offset = shared  # hidden[:, j] is position offset + j (the prompt's last token on)
        if target_mask[:, : offset + 1].any():
            raise ValueError("with shared_prompts, targets must be completion tokens (after the prompt)")
    else:
        hidden, offset = body(**forward_inputs, use_cache=False).last_hidden_state, 0  # [b, t, h]
    rows, cols = target_mask.nonzero(as_tuple=True)  # [k], [k]
    targets = input_ids[rows, cols]
    logp_parts, entropy_parts = [], []
    for start in range(0, rows.numel(), chunk_size):
        sl = slice(start, start + chunk_size)
        logits = head(hidden[rows[sl], cols[sl] - 1 - offset]).float() / temperature  # [chunk, v]
        logp_parts.append(selective_log_softmax(logits, targets[sl]))
        if with_entropy:
            entropy_parts.append(entropy_from_logits(logits.detach()))
    logp = torch.zeros(target_mask.shape, dtype=torch.float32, device=hidden.device)
    entropy = torch.zeros_like(logp) if with_entropy else None
    if rows.numel():
        logp = logp.index_put((rows, cols), torch.cat(logp_parts))
        if entropy is not None:
            entropy = entropy.index_put((rows, cols), torch.cat(entropy_parts))
    return TokenLogProbs(logp=logp, entropy=entropy)


@dataclass(frozen=True)
class AnswerLikelihood:
    """Per row [b]: ``p`` = min(exp(mean_logp), upper_bound) (NaN without answer tokens, except in reference
    mode), ``mean_logp`` (likewise), ``has_answer`` bool, ``n_tokens`` answer tokens scored."""

    p: Tensor
    mean_logp: Tensor
    has_answer: Tensor
    n_tokens: Tensor


@torch.no_grad()
def answer_likelihood(
    model: nn.Module,
    inputs: Mapping[str, Tensor],
    target_mask: Tensor,
    *,
    upper_bound: float = 0.95,
    chunk_size: int = 1024,
    shared_prompts: Any | None = None,
    reproduce_reference: bool = False,
) -> AnswerLikelihood:
    """Reference likelihood of each rollout's answer tokens (``target_mask`` [b, t], from
    :mod:`care.algo.answer_span`) under ``model``, in no-grad mode.

    ``reproduce_reference``: the mean is ``sum / (n_tokens + 1e-6)`` and every row gets a ``p``, an empty
    span ``min(exp(0), upper_bound)``, as in the reference code (in float32 here; the reference's are a bf16 model's log-probs).
    """
    if not 0.0 < upper_bound <= 1.0:
        raise ValueError(f"upper_bound must be in (0, 1], got {upper_bound}")
    logp = token_log_probs(model, inputs, target_mask, chunk_size=chunk_size, shared_prompts=shared_prompts).logp
    n_tokens = target_mask.sum(dim=-1)
    has_answer = n_tokens > 0
    if reproduce_reference:
        mean_logp = logp.sum(dim=-1) / (n_tokens + REFERENCE_COUNT_EPS)
        p = mean_logp.exp().clamp(max=upper_bound)
        return AnswerLikelihood(p=p, mean_logp=mean_logp, has_answer=has_answer, n_tokens=n_tokens)
    mean_logp = logp.sum(dim=-1) / n_tokens.clamp(min=1)
    nan = torch.full_like(mean_logp, float("nan"))
    mean_logp = torch.where(has_answer, mean_logp, nan)
    p = torch.where(has_answer, mean_logp.exp().clamp(max=upper_bound), nan)
    return AnswerLikelihood(p=p, mean_logp=mean_logp, has_answer=has_answer, n_tokens=n_tokens)
