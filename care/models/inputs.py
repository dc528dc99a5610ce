"""The one place that turns prompts + decoded frames (+ completions) into model tensors.

Rollouts, scoring, SFT and evaluation all call these, so a prompt is tokenised and positioned identically
everywhere. Shape legend: b = batch, p = prompt tokens (left-padded), c = completion tokens (right-padded),
v = vocabulary, n = patches.

Layout of a prompt+completion batch::

    [pad pad <prompt tokens ...> | <completion tokens ...> pad pad]
     <------------- p ---------->   <-------------- c ----------->

This is exactly what ``generate`` sees (left-padded prompt, then new tokens appended), so the M-RoPE position
ids the model derives from ``attention_mask`` match those used while sampling, and the logits of the completion
equal the per-sample unpadded ones (tested). ``second_per_grid_ts`` (seconds per temporal patch, which
scales Qwen2.5-VL's temporal M-RoPE positions) is set here, in one place: from the real sampled frame rate by
default (the processor assumes 24 fps for pre-decoded frames, which would compress the temporal positions), or
fixed by the item (``PromptItem.seconds_per_grid``: 1.0 with ``frames.temporal: fixed_1s``, what the reference
code's training passes, its processor's default 2 fps over 2-frame patches).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import BatchFeature

from care.models.shared_prompts import SharedPrompts

PER_TOKEN_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids")
FIXED_SECONDS_PER_GRID = 1.0  # frames.temporal: fixed_1s


@dataclass(frozen=True)
class PromptItem:
    """One prompt: chat messages (``care.algo.prompt.build_messages``) and its visual inputs.

    ``video``: uint8 (T, H, W, 3), already sampled and resized, or None. ``image``: uint8 (H, W, 3) or None.
    The messages must hold a ``{"type": "video"}`` item iff ``video`` is given (same for the image).
    ``seconds_per_grid``: the video's seconds per temporal patch for the M-RoPE positions; None = from the
    sampled fps (``temporal_patch_size / fps``).
    """

    messages: list[dict]
    video: np.ndarray | None = None
    image: np.ndarray | None = None
    seconds_per_grid: float | None = None


def _item(obj: PromptItem | Mapping[str, Any]) -> PromptItem:
    if isinstance(obj, PromptItem):
        return obj
    return PromptItem(messages=obj["messages"], video=obj.get("video"), image=obj.get("image"),
                      seconds_per_grid=obj.get("seconds_per_grid"))


def _count_placeholders(messages: list[dict], kind: str) -> int:
    return sum(1 for m in messages if not isinstance(m["content"], str)
               for c in m["content"] if c.get("type") == kind)


def _fps_list(fps: float | Sequence[float | None], n: int) -> list[float | None]:
    if isinstance(fps, int | float):
        return [float(fps)] * n
    if len(fps) != n:
        raise ValueError(f"fps has {len(fps)} values for {n} items")
    return list(fps)


def encode_prompts(processor, items: Sequence[PromptItem | Mapping[str, Any]], *,
                   fps: float | Sequence[float | None]) -> BatchFeature:
    """Left-padded prompt batch for ``generate`` (ends with the assistant turn's header).

    ``fps``: the sampling rate of the video frames (one value, or one per item; ignored for items without a
    video). Returns input_ids / attention_mask / mm_token_type_ids (b, p), pixel_values (n_img, d) and
    image_grid_thw (n_images, 3) when there are images, pixel_values_videos / video_grid_thw /
    second_per_grid_ts (n_videos,) when there are videos.

    An item that appears several times in ``items`` (the same object: a prompt repeated for each of its G
    rollouts) is processed once and its rows and patches are repeated; the result equals encoding every
    occurrence separately (tested), at 1/G of the image/video processor work.
    """
    return _encode_grouped(processor, items, fps)[0]


def _encode_grouped(processor, items: Sequence[PromptItem | Mapping[str, Any]],
                    fps: float | Sequence[float | None]) -> tuple[BatchFeature, SharedPrompts | None]:
    """``encode_prompts``, plus the distinct prompts' own encoding when some prompt repeats."""
    items = [_item(i) for i in items]
    rates = _fps_list(fps, len(items))
    first: dict[int, int] = {}
    inverse = [first.setdefault(id(item), len(first)) for item in items]
    if len(first) < len(items):
        unique = list({id(item): (item, rate) for item, rate in zip(items, rates, strict=True)}.values())
        enc = _encode_unique(processor, [u[0] for u in unique], [u[1] for u in unique])
        expanded = _repeat_rows(enc, [u[0] for u in unique], inverse)
        if expanded is not None:
            return expanded, SharedPrompts(inputs=dict(enc), rows=torch.tensor(inverse, dtype=torch.long))
    return _encode_unique(processor, items, rates), None


def _repeat_rows(enc: BatchFeature, unique: Sequence[PromptItem], inverse: Sequence[int]) -> BatchFeature | None:
    """``enc`` of the unique items expanded to rows ``inverse``; None when it holds a key this does not know."""
    index = torch.tensor(inverse, dtype=torch.long)
    out: dict[str, Any] = {}
    for kind, pixels, grid, extra in (("image", "pixel_values", "image_grid_thw", ()),
                                      ("video", "pixel_values_videos", "video_grid_thw", ("second_per_grid_ts",))):
        if grid not in enc:
            continue
        owners = [k for k, item in enumerate(unique) if getattr(item, kind) is not None]  # one per item at most
        slot = {k: j for j, k in enumerate(owners)}
        sizes = enc[grid].prod(dim=-1).tolist()
        parts = torch.split(enc[pixels], sizes)
        picked = [slot[k] for k in inverse if k in slot]
        out[pixels] = torch.cat([parts[j] for j in picked]) if picked else enc[pixels][:0]
        out[grid] = enc[grid][picked]
        for key in extra:
            if key in enc:
                out[key] = enc[key][picked]
    for key in PER_TOKEN_KEYS:
        if key in enc:
            out[key] = enc[key][index]
    if set(out) != set(enc.keys()):
        return None
    return BatchFeature(out)


def _encode_unique(processor, items: Sequence[PromptItem], rates: Sequence[float | None]) -> BatchFeature:
    texts, videos, images, seconds = [], [], [], []
    tps = processor.video_processor.temporal_patch_size
    for k, item in enumerate(items):
        for kind, value in (("video", item.video), ("image", item.image)):
            expected = 0 if value is None else 1
            if _count_placeholders(item.messages, kind) != expected:
                raise ValueError(f"item {k}: messages have {_count_placeholders(item.messages, kind)} {kind} "
                                 f"placeholders but {expected} {kind} input(s) were given")
        texts.append(processor.apply_chat_template(item.messages, add_generation_prompt=True, tokenize=False))
        if item.video is not None:
            if rates[k] is None or rates[k] <= 0:
                raise ValueError(f"item {k}: a video needs a positive fps, got {rates[k]}")
            videos.append(np.asarray(item.video))
            seconds.append(item.seconds_per_grid if item.seconds_per_grid is not None else tps / rates[k])
        if item.image is not None:
            images.append(np.asarray(item.image))
    enc = processor(
        text=texts, videos=videos or None, images=images or None, padding=True, padding_side="left",
        return_tensors="pt", videos_kwargs={"do_sample_frames": False},
    )
    if videos:
        # the processor reports temporal_patch_size / 24 fps for pre-decoded frames; use the real rate (or the
        # item's fixed value)
        enc["second_per_grid_ts"] = torch.tensor(seconds, dtype=torch.float32)
    return enc


def encode_prompt_completions(processor, items: Sequence[PromptItem | Mapping[str, Any]],
                              completion_ids: Sequence[Sequence[int] | torch.Tensor], *,
                              fps: float | Sequence[float | None]) -> BatchFeature:
    """``[left-padded prompt | right-padded completion]`` for scoring and training.

    ``completion_ids[i]``: the tokens of completion i as sampled (up to and including its EOS; no padding).
    Adds to the prompt batch: input_ids / attention_mask / mm_token_type_ids (b, p + c),
    ``completion_ids`` (b, c), ``completion_mask`` (b, c) (1 on real completion tokens) and
    ``prompt_length`` (an int, p). Completion token j of row i is predicted by logits[i, p - 1 + j].
    When some prompt repeats (a prompt's G rollouts), ``shared_prompts`` holds the distinct prompts for
    ``care.algo.likelihood.token_log_probs`` to run each once (``care.models.shared_prompts``); else None.
    """
    if len(completion_ids) != len(items):
        raise ValueError(f"{len(completion_ids)} completions for {len(items)} prompts")
    enc, shared = _encode_grouped(processor, items, fps)
    pad = processor.tokenizer.pad_token_id
    rows = [torch.as_tensor(ids, dtype=torch.long).flatten() for ids in completion_ids]
    width = max((len(r) for r in rows), default=0)
    comp = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        comp[i, : len(r)] = r
        mask[i, : len(r)] = 1
    prompt_length = enc["input_ids"].shape[1]
    enc["input_ids"] = torch.cat([enc["input_ids"], comp], dim=1)
    enc["attention_mask"] = torch.cat([enc["attention_mask"], mask.to(enc["attention_mask"].dtype)], dim=1)
    if "mm_token_type_ids" in enc:  # completions are text (type 0)
        tt = enc["mm_token_type_ids"]
        enc["mm_token_type_ids"] = torch.cat([tt, torch.zeros((len(rows), width), dtype=tt.dtype)], dim=1)
    enc["completion_ids"] = comp
    enc["completion_mask"] = mask
    enc["prompt_length"] = prompt_length
    enc["shared_prompts"] = shared
    return enc


BATCH_ONLY_KEYS = ("completion_ids", "completion_mask", "prompt_length", "shared_prompts")


def model_inputs(batch: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of a batch the model's forward takes (drops completion ids / mask, prompt length, shared prompts)."""
    return {k: v for k, v in batch.items() if k not in BATCH_ONLY_KEYS}


def completion_logits(model, batch: Mapping[str, Any]) -> torch.Tensor:
    """Logits predicting each completion token: (b, c, v). Position j is the distribution of completion[:, j]."""
    p = batch["prompt_length"]
    out = model(**model_inputs(batch), use_cache=False)
    return out.logits[:, p - 1 : -1, :]


def completion_logprobs(model, batch: Mapping[str, Any], *, temperature: float = 1.0) -> torch.Tensor:
    """Log-probability of every completion token under ``model``: (b, c); zero where ``completion_mask`` is 0.

    ``temperature`` divides the logits first, matching the distribution the tokens were sampled from.
    """
    logits = completion_logits(model, batch).float() / temperature
    logp = torch.log_softmax(logits, dim=-1).gather(-1, batch["completion_ids"].unsqueeze(-1)).squeeze(-1)
    return logp * batch["completion_mask"]


def split_completions(sequences: torch.Tensor, prompt_length: int, eos_token_id: int | Sequence[int]
                      ) -> list[list[int]]:
    """Cut ``generate`` output (b, p + n) into per-row completion ids, each ending at its first EOS (kept).

    >>> split_completions(torch.tensor([[9, 9, 5, 2, 0], [9, 9, 5, 6, 7]]), 2, 2)
    [[5, 2], [5, 6, 7]]
    """
    eos = {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id)
    result = []
    for row in sequences[:, prompt_length:].tolist():
        cut = next((j + 1 for j, t in enumerate(row) if t in eos), len(row))
        result.append(row[:cut])
    return result


def completion_target_mask(batch) -> torch.Tensor:
    """[b, p + c] bool marking the completion tokens of an ``encode_prompt_completions`` batch."""
    b, p = batch["input_ids"].shape[0], batch["prompt_length"]
    return torch.cat([torch.zeros(b, p, dtype=torch.bool), batch["completion_mask"].bool()], dim=1)
