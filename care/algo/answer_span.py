"""Locate the answer tokens of a sampled completion in token space, for the reference likelihood.

Shape legend: b = completions, c = completion tokens (right-padded).

The tokens are always the ones the policy sampled, never a re-tokenisation. Two rules:

* **[ours]** (default): the content of the FIRST ``<answer>\\s*(.*?)\\s*</answer>`` tag, the same tag accuracy
  reads, without the surrounding whitespace. The span is found on the decoded text (special tokens kept, so
  character offsets line up with the token sequence) and mapped back to the sampled tokens: a token belongs to
  the span when its decoded characters overlap the span's characters. A completion with no closed answer tag,
  or an empty one, has no span: its mask row is all False and its likelihood is undefined (never 1.0).
* ``reproduce_reference=True``: the reference code's rule, on token strings (``convert_ids_to_tokens``) with
  its index arithmetic (:func:`reference_answer_mask`). The opening tag is the LAST token containing
  ``answer`` whose window (previous token, itself, next token) contains ``<answer>``, searched up to the
  third-to-last token; the span runs from the token after it up to, not including, the 3 tokens before the
  first EOS (the reference takes those for ``</answer>``, which is ``</`` ``answer`` ``>`` with Qwen's
  tokenizer). It therefore starts with the ``>`` of the tag when ``>`` is a token of its own, and ends by
  counting tokens, not by finding ``</answer>``. Where the two rules part (tokens of the Qwen-style
  byte-level BPE, checked in tests/test_reference_exact.py):

  - ``<answer> B </answer><eos>``: [ours] ``B``; reference ``> B``.
  - ``<answer>B</answer>\\n<eos>``: [ours] ``B``; reference ``>B</`` where the newline is a token
    of its own.
  - ``<answer>B</answer> pick up the red marker.<eos>``: [ours] ``B``; reference ``>B</answer> pick up the``
    (into the text after the tag, up to its last 3 tokens).
  - ``<answer>C</answer> or <answer>B<eos>``: [ours] ``C`` (the first tag, which accuracy reads); reference
    empty (its last tag is unclosed).

  An empty reference span (an unclosed final tag, no tag at all) is scored as the reference scores it:
  mean log-prob 0, so p = min(1, upper bound) = 0.95 (``answer_likelihood(..., reproduce_reference=True)``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from care.algo.rewards import ANSWER_PATTERN

OPEN_TAG, CLOSE_TAG = "<answer>", "</answer>"


def answer_char_span(text: str) -> tuple[int, int] | None:
    """Character span ``[start, end)`` of the [ours] answer in ``text`` (first tag, content stripped), or None.

    >>> t = "<think>x</think><answer> B </answer>"
    >>> s = answer_char_span(t); t[s[0]:s[1]]
    'B'
    """
    match = ANSWER_PATTERN.search(text)
    if match is None or match.end(1) == match.start(1):
        return None
    return match.start(1), match.end(1)


def _is_reference_tag(pieces: Sequence[str], a: int) -> bool:
    return "answer" in pieces[a] and OPEN_TAG in "".join(pieces[max(a - 1, 0) : a + 2])


def reference_answer_mask(token_ids: Sequence[int], tokenizer) -> list[bool]:
    """The reference code's answer mask [c] of one completion (no batch padding in ``token_ids``).

    With ``m`` = completion tokens once pad tokens are dropped, ``tag`` = the last position ``a <= m - 3``
    (counted among those tokens) whose piece contains ``answer`` and whose pieces ``a-1..a+1`` joined contain
    ``<answer>`` (``m`` when there is none), and ``eos`` = the first EOS position (the length when there is
    none): positions ``j`` with ``tag < j < max(tag + 1, eos - 3)``.

    These are the reference's indices for a prompt without left padding (one prompt per device, the only
    layout its code scores correctly): it searches the whole prompt + completion with the pad tokens removed,
    from the end, and rejects a tag found in the prompt; its window never reaches the last 2 tokens, and the
    one before the first completion token is the generation header's newline, which cannot end a prefix of
    ``<answer>``. A pad token sampled before the tag shifts the span one position to the left, as there.

    >>> class Pieces:  # a tokenizer whose token ids index a list of pieces
    ...     pad_token_id, eos_token_id = 0, 1
    ...     pieces = ["<pad>", "<eos>", "<", "answer", ">", "B", "</", "x"]
    ...     def convert_ids_to_tokens(self, ids): return [self.pieces[i] for i in ids]
    >>> reference_answer_mask([2, 3, 4, 5, 6, 3, 4, 1], Pieces())  # <answer>B</answer><eos>
    [False, False, True, True, False, False, False, False]
    >>> reference_answer_mask([2, 3, 4, 5, 1], Pieces())  # <answer>B<eos>: unclosed, empty
    [False, False, False, False, False]
    """
    ids = list(token_ids)
    pieces = tokenizer.convert_ids_to_tokens([t for t in ids if t != tokenizer.pad_token_id])
    m = len(pieces)
    tag = next((a for a in range(m - 3, -1, -1) if _is_reference_tag(pieces, a)), m)
    eos = next((j for j, t in enumerate(ids) if t == tokenizer.eos_token_id), len(ids))
    end = max(tag + 1, eos - 3)
    return [tag < j < end for j in range(len(ids))]


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

    [ours]: tokens that together make one character (byte pieces of a multi-byte character) are in or out
    together. ``reproduce_reference``: :func:`reference_answer_mask`.
    """
    ids = list(token_ids)
    if reproduce_reference:
        return reference_answer_mask(ids, tokenizer)
    text = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    span = answer_char_span(text)
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
    [b, c] marking real tokens (the batch padding is not seen by either rule). Rows without an answer span are
    all False.

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
