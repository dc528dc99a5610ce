"""Locate the answer tokens of a sampled completion in token space, for the reference likelihood.

Shape legend: b = completions, c = completion tokens (right-padded).

The span is found on the decoded text (special tokens kept, so character offsets line up with the token
sequence) and mapped back to the sampled tokens: a token belongs to the span when its decoded characters
overlap the span's characters. The tokens are the ones the policy sampled, never a re-tokenisation.

* **[ours]** the content of the FIRST ``<answer>\\s*(.*?)\\s*</answer>`` tag, the same tag accuracy reads,
  without the surrounding whitespace.
* ``reproduce_reference=True``: the reference code's span, from the ``>`` of the LAST ``<answer>`` tag to
  just before its ``</answer>`` (the ``>`` and any whitespace included).

A completion with no closed answer tag, or an empty one, has no span: its mask row is all False and its
likelihood is undefined (never 1.0).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from care.algo.rewards import ANSWER_PATTERN

OPEN_TAG, CLOSE_TAG = "<answer>", "</answer>"


def answer_char_span(text: str, *, reproduce_reference: bool = False) -> tuple[int, int] | None:
    """Character span ``[start, end)`` of the answer in ``text``, or None.

    >>> t = "<think>x</think><answer> B </answer>"
    >>> s = answer_char_span(t); t[s[0]:s[1]]
    'B'
    >>> s = answer_char_span(t + "<answer>C</answer>", reproduce_reference=True); (t + "<answer>C</answer>")[s[0]:s[1]]
    '>C'
    """
    if not reproduce_reference:
        match = ANSWER_PATTERN.search(text)
        if match is None or match.end(1) == match.start(1):
            return None
        return match.start(1), match.end(1)
    matches = list(ANSWER_PATTERN.finditer(text))
    if not matches:
        return None
    last = matches[-1]
    return last.start() + len(OPEN_TAG) - 1, last.end() - len(CLOSE_TAG)


def token_char_ends(token_ids: Sequence[int], tokenizer) -> list[int | None]:
    """End offset (characters of the full decode) of each token [c]: ``len(decode(ids[:k+1]))``, or None for a
    token that ends inside a multi-byte character (its prefix decodes to a trailing replacement character).

    Prefix decoding is used because per-token decoding cannot place partial characters.
    """
    ids = list(token_ids)
    text = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    prefixes = tokenizer.batch_decode(
        [ids[: k + 1] for k in range(len(ids))], skip_special_tokens=False, clean_up_tokenization_spaces=False
    )
    return [len(p) if not p.endswith("\ufffd") or text.startswith(p) else None for p in prefixes]


def answer_token_mask(token_ids: Sequence[int], tokenizer, *, reproduce_reference: bool = False) -> list[bool]:
    """Per-token answer membership [c] of one completion (no padding in ``token_ids``).

    Tokens that together make one character (byte pieces of a multi-byte character) are in or out together.
    """
    ids = list(token_ids)
    text = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    span = answer_char_span(text, reproduce_reference=reproduce_reference)
    mask = [False] * len(ids)
    if span is None:
        return mask
    start, end = span
    previous_end, pending_from = 0, 0
    for k, token_end in enumerate(token_char_ends(ids, tokenizer)):
        if token_end is None:  # an incomplete character: decide with the token that completes it
            continue
        if previous_end < end and token_end > start:
            mask[pending_from : k + 1] = [True] * (k + 1 - pending_from)
        previous_end, pending_from = max(previous_end, token_end), k + 1
    return mask


def answer_token_masks(
    completion_ids: Tensor, completion_mask: Tensor, tokenizer, *, reproduce_reference: bool = False
) -> Tensor:
    """Answer masks [b, c] bool for right-padded completions ``completion_ids`` [b, c] with ``completion_mask``
    [b, c] marking real tokens. Rows without an answer span are all False.

    To score with :func:`care.algo.likelihood.answer_likelihood`, place the mask at the completion's
    positions in the model input, e.g. ``torch.cat([zeros(b, prompt_len), mask], 1)`` for the
    ``[left-padded prompt | right-padded completion]`` layout.
    """
    if completion_ids.shape != completion_mask.shape or completion_ids.dim() != 2:
        raise ValueError(
            f"completion_ids and completion_mask must be [b, c]; got {tuple(completion_ids.shape)}, "
            f"{tuple(completion_mask.shape)}"
        )
    out = torch.zeros(completion_ids.shape, dtype=torch.bool)
    for row, (ids, real) in enumerate(zip(completion_ids.tolist(), completion_mask.bool().tolist(), strict=True)):
        kept = [i for i, keep in zip(ids, real, strict=True) if keep]
        positions = [j for j, keep in enumerate(real) if keep]
        row_mask = answer_token_mask(kept, tokenizer, reproduce_reference=reproduce_reference)
        for j, hit in zip(positions, row_mask, strict=True):
            out[row, j] = hit
    return out.to(completion_ids.device)
