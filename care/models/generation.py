"""Sampling completions with transformers ``generate``: the ``hf`` rollout backend's core.

Shape legend: p = prompts in the batch, g = completions per prompt (G), n = p * g, t = new tokens.

Every decoding parameter is passed explicitly (a checkpoint's generation_config would otherwise override
defaults silently). Sampling is seeded per call inside ``torch.random.fork_rng`` so it never disturbs the caller's
RNG stream. Behaviour log-probs are not taken from ``generate``: keeping its per-step logits costs
n * t * vocab floats (15 GB for 32 rollouts of 768 tokens over Qwen's 152k vocabulary); the rollout stage
computes them afterwards with one forward pass that applies the LM head only at completion positions, the same
function the optimisation stage uses, so the PPO ratio starts at exactly 1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Completion:
    """One sampled completion: tokens up to and including the first EOS (none when truncated)."""

    prompt_index: int
    sample_index: int
    token_ids: tuple[int, ...]
    text: str
    truncated: bool


@dataclass(frozen=True)
class Decoding:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 64
    do_sample: bool = True


def _trim(row: torch.Tensor, eos_ids: set[int]) -> tuple[int, bool]:
    """Length up to and including the first EOS, and whether the row was cut by max_new_tokens."""
    for i, tok in enumerate(row.tolist()):
        if tok in eos_ids:
            return i + 1, False
    return row.shape[0], True


@torch.no_grad()
def sample_completions(
    model: torch.nn.Module,
    inputs: Mapping[str, torch.Tensor],
    tokenizer,
    *,
    group_size: int,
    decoding: Decoding,
    seed: int,
    eos_token_ids: Sequence[int],
    pad_token_id: int,
    suppress_token_ids: Sequence[int] = (),
) -> list[Completion]:
    """Sample ``group_size`` completions for each left-padded prompt in ``inputs``.

    Returns n = p * g completions ordered prompt-major: (prompt 0, sample 0..g-1), (prompt 1, ...), ...
    """
    prompt_len = inputs["input_ids"].shape[1]
    n_prompts = inputs["input_ids"].shape[0]
    kwargs = {
        "do_sample": decoding.do_sample,
        "max_new_tokens": decoding.max_new_tokens,
        "num_return_sequences": group_size,
        "eos_token_id": list(eos_token_ids),
        "pad_token_id": pad_token_id,
        "suppress_tokens": list(suppress_token_ids) or None,
        "return_dict_in_generate": True,
    }
    if decoding.do_sample:
        kwargs.update(temperature=decoding.temperature, top_p=decoding.top_p, top_k=decoding.top_k)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if torch.cuda.is_available():
            torch.cuda.manual_seed_all(seed)
        out = model.generate(**inputs, **kwargs)
    new_tokens = out.sequences[:, prompt_len:]  # [n, t]
    eos = set(eos_token_ids)
    completions = []
    for row in range(new_tokens.shape[0]):
        length, truncated = _trim(new_tokens[row], eos)
        ids = tuple(new_tokens[row, :length].tolist())
        completions.append(
            Completion(
                prompt_index=row // group_size,
                sample_index=row % group_size,
                token_ids=ids,
                text=tokenizer.decode(list(ids), skip_special_tokens=True),
                truncated=truncated,
            )
        )
    assert len(completions) == n_prompts * group_size
    return completions
