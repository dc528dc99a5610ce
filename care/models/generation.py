"""Sampling completions with transformers ``generate``: the ``hf`` rollout backend's core.

Shape legend: p = prompts in the batch, g = completions per prompt (G), n = p * g, t = new tokens.

Every decoding parameter is passed explicitly (a checkpoint's generation_config would otherwise override
defaults silently). Sampling is seeded per call inside ``torch.random.fork_rng`` so it never disturbs the caller's
RNG stream.

Behaviour log-probs (``record_logprobs``): the log-probability of each sampled token under the model's own
distribution at the sampling temperature, before top-k / top-p / suppression, i.e. what a separate forward pass
over prompt + completion computes. ``generate(output_logits=True)`` would keep n * t * vocab floats (15 GB for
32 rollouts of 768 tokens over Qwen's 152k vocabulary), so ``SampledTokenLogProbs`` streams them instead: a
forward hook on the LM head keeps the current step's log-softmax [n, vocab], and a stopping criterion (called by
``generate`` right after each token is chosen, with that token appended) gathers the chosen token's entry. Memory
is one step's distribution; the extra forward pass over every completion is gone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
from transformers import StoppingCriteria


def chunk_seed(seed: int, iteration: int, chunk: int) -> int:
    """A distinct, reproducible sampling seed per (run seed, iteration, chunk of prompts)."""
    return (seed * 1_000_003 + iteration * 10_007 + chunk) % (2**63 - 1)


@dataclass(frozen=True)
class Completion:
    """One sampled completion: tokens up to and including the first EOS (none when truncated)."""

    prompt_index: int
    sample_index: int
    token_ids: tuple[int, ...]
    text: str
    truncated: bool
    logprobs: tuple[float, ...] | None = None  # per token, when sampled with ``record_logprobs``


@dataclass(frozen=True)
class Decoding:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 64
    do_sample: bool = True


class SampledTokenLogProbs(StoppingCriteria):
    """Records log p(chosen token) under the raw next-token distribution at ``temperature`` while ``generate`` runs.

    Install with ``recording(model)``; pass the object in ``stopping_criteria``. It never stops generation.
    """

    def __init__(self, temperature: float):
        self.temperature = temperature
        self._current: torch.Tensor | None = None  # [n, vocab] log-softmax of the step being sampled
        self.steps: list[torch.Tensor] = []  # [n] per generated token

    def _hook(self, module, args, output) -> None:
        # LM-head output [n, k, vocab]; generate samples from position -1 (float32, as generate itself casts)
        self._current = torch.log_softmax(output[:, -1].float() / self.temperature, dim=-1)

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        if self._current is None:
            raise RuntimeError("no LM-head output seen for this step; was the hook installed on the sampling model?")
        self.steps.append(self._current.gather(-1, input_ids[:, -1:]).squeeze(-1))
        self._current = None
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    @contextmanager
    def recording(self, model: torch.nn.Module):
        head = model.get_output_embeddings()
        if head is None:
            raise TypeError(f"{type(model).__name__} has no LM head (get_output_embeddings) to record log-probs from")
        handle = head.register_forward_hook(self._hook)
        try:
            yield self
        finally:
            handle.remove()
            self._current = None

    def per_row(self) -> torch.Tensor:
        """[n, t] log-probs of the generated tokens (entries after a row's EOS belong to padding)."""
        if not self.steps:
            raise RuntimeError("nothing was recorded")
        return torch.stack(self.steps, dim=1).cpu()


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
    record_logprobs: bool = False,
) -> list[Completion]:
    """Sample ``group_size`` completions for each left-padded prompt in ``inputs``.

    Returns n = p * g completions ordered prompt-major: (prompt 0, sample 0..g-1), (prompt 1, ...), ...
    With ``record_logprobs`` each completion carries its behaviour log-probs (see the module docstring).
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
    recorder = None
    if record_logprobs:
        if not decoding.do_sample:
            raise ValueError("record_logprobs needs sampling (do_sample=True): greedy decoding has no temperature")
        recorder = SampledTokenLogProbs(decoding.temperature)
        kwargs["stopping_criteria"] = [recorder]
    with torch.random.fork_rng(devices=[]), recorder.recording(model) if recorder else nullcontext():
        torch.manual_seed(seed)
        if torch.cuda.is_available():
            torch.cuda.manual_seed_all(seed)
        out = model.generate(**inputs, **kwargs)
    new_tokens = out.sequences[:, prompt_len:]  # [n, t]
    logprobs = recorder.per_row() if recorder else None
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
                logprobs=None if logprobs is None else tuple(logprobs[row, :length].tolist()),
            )
        )
    assert len(completions) == n_prompts * group_size
    return completions
