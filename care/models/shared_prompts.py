"""Scoring G completions of one prompt without running the prompt G times.

A GRPO batch repeats every prompt for its G rollouts. A plain forward over ``[prompt | completion]`` rows runs the
vision encoder and the decoder over each prompt G times; for SEED-Bench-R1 prompts (16 video frames, thousands
of visual tokens) against a few hundred completion tokens, that is nearly all of the work. ``SharedPrompts``
runs the decoder body twice instead:

1. the distinct prompts once each (vision encoder included), keeping their key/value cache;
2. every row's completion on that cache, its rows picked per batch row (``Cache.reorder_cache``, the
   transformers beam-search API, which accepts repeated indices).

Position ids are the model's own M-RoPE index (``get_rope_index``) of the full ``[prompt | completion]`` rows,
the same function the plain forward calls, split at the prompt boundary, so both passes see exactly the
positions of the single pass. The result equals the single pass's hidden states to float rounding (tested,
values and gradients); gradients flow through the cache into the prompt pass.

Used when it applies: a model with ``get_rope_index`` (Qwen2-VL / Qwen2.5-VL), visual inputs in the batch
(the index function needs them), and no gradient checkpointing (which turns the cache off while training).
Otherwise ``hidden_states`` returns None and the caller runs the plain forward.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers import DynamicCache

VISUAL_GRIDS = ("image_grid_thw", "video_grid_thw")


def _cache_keyword(body: nn.Module) -> str:
    # transformers after 5.17 renamed the decoder body's ``past_key_values`` argument to ``cache``; a name it
    # does not know would land in its **kwargs unused, and the completion pass would run without the prompt
    return "cache" if "cache" in inspect.signature(type(body).forward).parameters else "past_key_values"


def _checkpointing(body: nn.Module) -> bool:
    # transformers 5 renamed is_gradient_checkpointing (deprecated) to is_activation_checkpointing
    name = "is_activation_checkpointing" if hasattr(type(body), "is_activation_checkpointing") else \
        "is_gradient_checkpointing"
    return bool(getattr(body, name, False))


@dataclass(frozen=True)
class SharedPrompts:
    """The distinct prompts of a batch whose rows repeat prompts.

    ``inputs``: the distinct prompts' encoding (input_ids / attention_mask / mm_token_type_ids [u, p], pixel
    values and grids of their images / videos), left-padded to the same width p as the batch's prompt part.
    ``rows``: [b] long, the distinct prompt of each batch row.
    """

    inputs: Mapping[str, Tensor]
    rows: Tensor

    @property
    def prompt_length(self) -> int:
        return int(self.inputs["input_ids"].shape[1])

    def applies(self, body: nn.Module, inputs: Mapping[str, Tensor]) -> bool:
        return (hasattr(body, "get_rope_index") and "mm_token_type_ids" in inputs
                and any(inputs.get(g) is not None for g in VISUAL_GRIDS)
                and not (body.training and _checkpointing(body)))

    def hidden_states(self, body: nn.Module, inputs: Mapping[str, Tensor]) -> tuple[Tensor, int] | None:
        """(hidden [b, t - p + 1, h], p - 1): the decoder body's last hidden states of the batch ``inputs`` from
        position p - 1 (the last prompt token) on, which is every position that predicts a completion token.
        None when this model or batch needs the plain forward (see the module docstring).
        """
        if not self.applies(body, inputs):
            return None
        device = inputs["input_ids"].device
        rows = self.rows.to(device)
        p = self.prompt_length
        if inputs["input_ids"].shape[0] != rows.numel() or inputs["input_ids"].shape[1] < p:
            raise ValueError(f"shared prompts of {rows.numel()} rows x {p} prompt tokens do not describe a batch of "
                             f"shape {tuple(inputs['input_ids'].shape)}")
        position_ids, _ = body.get_rope_index(
            inputs["input_ids"], inputs["mm_token_type_ids"], image_grid_thw=inputs.get("image_grid_thw"),
            video_grid_thw=inputs.get("video_grid_thw"), second_per_grid_ts=inputs.get("second_per_grid_ts"),
            attention_mask=inputs["attention_mask"])  # [3, b, t]: the single pass's positions
        order = rows.tolist()
        first = torch.tensor([order.index(k) for k in range(self.inputs["input_ids"].shape[0])], device=device)
        prompts = {k: v.to(device) if torch.is_tensor(v) else v for k, v in self.inputs.items()}
        cache = DynamicCache(config=body.config)
        key = _cache_keyword(body)
        head = body(**prompts, position_ids=position_ids[:, first, :p], **{key: cache}, use_cache=True)
        last_prompt = head.last_hidden_state[:, -1:][rows]  # [b, 1, h]
        if inputs["input_ids"].shape[1] == p:  # no completion tokens at all
            return last_prompt, p - 1
        cache.reorder_cache(rows)  # [u, ...] -> [b, ...], repeats allowed; differentiable indexing
        tail = body(input_ids=inputs["input_ids"][:, p:], attention_mask=inputs["attention_mask"],
                    position_ids=position_ids[:, :, p:], **{key: cache}, use_cache=True)
        return torch.cat([last_prompt, tail.last_hidden_state], dim=1), p - 1
