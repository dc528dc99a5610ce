"""The offline tiny Qwen2.5-VL: random weights, a from-scratch tokenizer, the real processor, save_pretrained.

Everything downstream loads models through ``from_pretrained(path)`` (``care.models.loading``), so the tiny
model and ``Qwen/Qwen2.5-VL-7B-Instruct`` go through the same code; switching is a config change.

Default dimensions are the measured demo configuration (``notes/tiny_model_on_cpu.md``): text hidden 64,
2 layers, 4 heads / 2 KV heads, intermediate 128, M-RoPE sections [2, 3, 3] (they must sum to head_dim / 2),
tied embeddings; vision depth 2, hidden 64, 4 heads, intermediate 128. About 0.35 M parameters, most of them
the vision patch embedding (3 * 2 * 14 * 14 = 1176 -> 64).

Pixel budgets: 56x56 per video frame and per image, so 4 video frames become 2 (temporal) x 2 x 2 (merged)
= 8 video tokens and an image 4 image tokens. Frames are sampled by the caller (``do_sample_frames=False``).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import torch
from transformers import (
    GenerationConfig,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
)
from transformers.utils import logging as hf_logging

from care.models.tokenizer import (
    EOS_TOKEN,
    IMAGE_TOKEN,
    PAD_TOKEN,
    VIDEO_TOKEN,
    VISION_END,
    VISION_START,
    train_tokenizer,
)

PATCH, MERGE, TEMPORAL_PATCH = 14, 2, 2
TINY_MANIFEST = "care_tiny.json"
"""Written next to the weights: how the folder was made (seed, dimensions, corpus size)."""

TINY_VARIANTS: dict[str, dict[str, int]] = {
    "default": {},
    # vLLM's attention backends (CPU and GPU) refuse a head dimension below 32: hidden 128 over 4 heads, with
    # the vision tower widened to match (notes in docs/vllm.md). About 1.3 M parameters.
    "vllm": {"hidden_size": 128, "vision_hidden_size": 128},
}
"""Named dimension sets of ``make_tiny_model`` (``care models tiny --variant NAME``)."""


def mrope_section(head_dim: int) -> list[int]:
    """Split ``head_dim / 2`` rotary frequencies over (time, height, width) like Qwen2.5-VL (16:24:24 at 128).

    >>> mrope_section(16), mrope_section(32), mrope_section(128)
    ([2, 3, 3], [4, 6, 6], [16, 24, 24])
    """
    half = head_dim // 2
    t = half // 4
    h = (half - t) // 2
    return [t, h, half - t - h]


def build_processor(tokenizer, *, video_max_pixels: int = 56 * 56, image_max_pixels: int = 56 * 56,
                    min_pixels: int = 28 * 28) -> Qwen2_5_VLProcessor:
    """The real Qwen2.5-VL processor around ``tokenizer``; frames arrive already sampled (no file decoding)."""
    common = dict(patch_size=PATCH, merge_size=MERGE, temporal_patch_size=TEMPORAL_PATCH, min_pixels=min_pixels)
    image_processor = Qwen2VLImageProcessor(max_pixels=image_max_pixels, **common)
    # cap_pixels_per_frame given explicitly: the processor warns when it is left to its default
    video_processor = Qwen2VLVideoProcessor(max_pixels=video_max_pixels, do_sample_frames=False,
                                            cap_pixels_per_frame=True, **common)
    return Qwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                               video_processor=video_processor, chat_template=tokenizer.chat_template)


def build_config(tokenizer, *, hidden_size: int, num_layers: int, num_heads: int, num_kv_heads: int,
                 vision_hidden_size: int, vision_depth: int) -> Qwen2_5_VLConfig:
    ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in (
        ("pad", PAD_TOKEN), ("eos", EOS_TOKEN), ("image", IMAGE_TOKEN), ("video", VIDEO_TOKEN),
        ("vision_start", VISION_START), ("vision_end", VISION_END))}
    head_dim = hidden_size // num_heads
    text = dict(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
        max_position_embeddings=4096, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                       "mrope_section": mrope_section(head_dim)},
        bos_token_id=ids["pad"], eos_token_id=ids["eos"], pad_token_id=ids["pad"], tie_word_embeddings=True,
    )
    vision = dict(
        depth=vision_depth, hidden_size=vision_hidden_size, intermediate_size=2 * vision_hidden_size,
        num_heads=4, out_hidden_size=hidden_size, patch_size=PATCH, spatial_merge_size=MERGE,
        temporal_patch_size=TEMPORAL_PATCH, window_size=112, fullatt_block_indexes=[vision_depth - 1],
    )
    return Qwen2_5_VLConfig(
        text_config=text, vision_config=vision, image_token_id=ids["image"], video_token_id=ids["video"],
        vision_start_token_id=ids["vision_start"], vision_end_token_id=ids["vision_end"], tie_word_embeddings=True,
    )


def generation_config(tokenizer) -> GenerationConfig:
    """Explicit decoding defaults (greedy, stop at ``<|im_end|>``), so no library default decides silently.

    Callers of ``generate`` still pass their sampling parameters and ``suppress_tokens`` explicitly.
    """
    eos = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    pad = tokenizer.convert_tokens_to_ids(PAD_TOKEN)
    return GenerationConfig(bos_token_id=pad, eos_token_id=eos, pad_token_id=pad, do_sample=False,
                            max_new_tokens=64)


def make_tiny_model(
    out_dir: str | Path,
    *,
    corpus: Iterable[str],
    seed: int = 0,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    vision_hidden_size: int = 64,
    vision_depth: int = 2,
    vocab_size: int = 1024,
    video_max_pixels: int = 56 * 56,
    image_max_pixels: int = 56 * 56,
) -> Path:
    """Train the tokenizer on ``corpus``, build a random-weight model from ``seed``, save all to ``out_dir``.

    The folder holds config.json, generation_config.json, model.safetensors, the tokenizer and processor
    files, and ``care_tiny.json``. It is written to a temporary sibling and renamed, so a crash never leaves a
    half-written model behind; an existing ``out_dir`` is replaced. The same seed and corpus give
    byte-identical weight files. Returns ``out_dir``.
    """
    out_dir = Path(out_dir)
    texts = list(corpus)
    tokenizer = train_tokenizer(texts, vocab_size=vocab_size)
    config = build_config(tokenizer, hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads,
                          num_kv_heads=num_kv_heads, vision_hidden_size=vision_hidden_size, vision_depth=vision_depth)
    with torch.random.fork_rng(devices=[]):  # seed the init without disturbing the caller's RNG stream
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config).eval()
    model.generation_config = generation_config(tokenizer)
    processor = build_processor(tokenizer, video_max_pixels=video_max_pixels, image_max_pixels=image_max_pixels)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # one tiny shard: a progress bar is noise in CLI output
    try:
        model.save_pretrained(tmp, safe_serialization=True)
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
    processor.save_pretrained(tmp)
    manifest = {"seed": seed, "hidden_size": hidden_size, "num_layers": num_layers, "num_heads": num_heads,
                "num_kv_heads": num_kv_heads, "vision_hidden_size": vision_hidden_size,
                "vision_depth": vision_depth, "vocab_size": len(tokenizer), "corpus_texts": len(texts),
                "parameters": sum(p.numel() for p in model.parameters()),
                "video_max_pixels": video_max_pixels, "image_max_pixels": image_max_pixels}
    (tmp / TINY_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    if out_dir.exists():
        _remove_tree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path)
