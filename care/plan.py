"""Budgets checked before any work starts: sequence length and memory per device of an RL or SFT run.

``care plan`` prints the table; ``care rl`` / ``care sft`` / ``care run`` print it and refuse a config that cannot
fit before a flow starts (``check`` raises ``PlanError`` naming the config fields to change). The formulas, their
sources and their error are in docs/plan.md. Three parts:

* **inputs** (small IO, no download): ``model_shape`` reads a local folder's ``config.json`` and processor configs,
  or takes a hub id's numbers from ``KNOWN_CONFIGS`` (published config.json files); ``prompt_shape`` tokenizes the
  prompt template for the longest question of the training file (or a built-in representative one);
  ``hardware`` reads the GPU's memory (or takes ``device_memory_gib``) and the host's RAM;
* **the plan** (pure): ``plan_rl`` / ``plan_sft`` turn a config and those inputs into a ``Plan``;
* ``render`` (the table) and ``check`` (the refusal).

Visual tokens come from the Hugging Face processors' own helpers (``Qwen2VLVideoProcessor.get_num_of_video_patches``,
``Qwen2VLImageProcessor.get_number_of_image_patches``) applied to the frame size care's resize produces
(``care.media.sampling.smart_resize``). Parameters are counted on a model built on the meta device from the config
(exact, no memory).
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from care.algo.prompt import (
    DEFAULT_TEMPLATE,
    PromptTemplate,
    build_messages,
    build_prompt_text,
    prompt_template,
)
from care.errors import CareError
from care.media.sampling import FRAME_FACTOR, FrameSampling, smart_resize

GB = 1e9
GIB = 1024**3
FP32 = 4
DDP_BUCKET_BYTES = 4  # torch DDP's gradient buckets: a second fp32 copy of the gradients (gradient_as_bucket_view=False)


class PlanError(CareError):
    """A config that cannot fit the model's context or the devices' memory; the message names the fields."""


# --------------------------------------------------------------------------------------------------------------
# inputs


@dataclass(frozen=True)
class ProcessorShape:
    """What the Qwen-VL image and video processors do to a frame: patching and their own pixel budgets."""

    patch_size: int = 14
    merge_size: int = 2
    temporal_patch_size: int = 2
    image_min_pixels: int = 3136
    image_max_pixels: int = 12845056
    video_min_pixels: int = 3136
    video_max_pixels: int = 12845056
    cap_pixels_per_frame: bool = False
    max_video_tokens: int = 128000


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a model the plan needs, and where they came from."""

    name: str
    source: str  # e.g. "config.json of /models/x" or "built-in table (published config.json)"
    exact: bool  # False when the numbers are an estimate (the table, or the tiny model not built yet)
    parameters: int
    vision_parameters: int
    root_parameters: int  # FSDP2 root unit: embeddings, LM head, final norm, vision merger (gathered for a whole pass)
    largest_unit_parameters: int  # largest FSDP2 unit (a decoder layer or a vision block)
    hidden_size: int
    num_layers: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int
    vision_hidden_size: int
    vision_depth: int
    vision_intermediate_size: int
    processor: ProcessorShape = field(default_factory=ProcessorShape)


_QWEN_PROCESSOR = ProcessorShape()  # preprocessor_config.json of the Qwen2.5-VL releases: 3136 .. 12845056 px

# Published config.json of each release (huggingface.co/Qwen/<name>/blob/main/config.json); docs/plan.md says which
# numbers were checked against what. ``tie`` = tie_word_embeddings.
KNOWN_CONFIGS: dict[str, dict[str, Any]] = {
    "Qwen/Qwen2.5-VL-3B-Instruct": dict(hidden=2048, inter=11008, layers=36, heads=16, kv=2, vocab=151936, tie=True,
                                        v_inter=3420, v_out=2048),
    "Qwen/Qwen2.5-VL-7B-Instruct": dict(hidden=3584, inter=18944, layers=28, heads=28, kv=4, vocab=152064, tie=False,
                                        v_inter=3420, v_out=3584),
    "Qwen/Qwen2.5-VL-32B-Instruct": dict(hidden=5120, inter=27648, layers=64, heads=40, kv=8, vocab=152064,
                                         tie=False, v_inter=3456, v_out=5120),
    "Qwen/Qwen2.5-VL-72B-Instruct": dict(hidden=8192, inter=29568, layers=80, heads=64, kv=8, vocab=152064,
                                         tie=False, v_inter=3456, v_out=8192),
}
TINY = "<tiny>"  # the pipeline's tiny model before it is built (care.models.tiny defaults)


def known_config(name: str):
    """A ``Qwen2_5_VLConfig`` from ``KNOWN_CONFIGS`` (the ``-Instruct`` suffix is optional)."""
    from transformers import Qwen2_5_VLConfig

    key = name if name in KNOWN_CONFIGS else f"{name}-Instruct"
    k = KNOWN_CONFIGS[key]
    text = dict(hidden_size=k["hidden"], intermediate_size=k["inter"], num_hidden_layers=k["layers"],
                num_attention_heads=k["heads"], num_key_value_heads=k["kv"], vocab_size=k["vocab"],
                max_position_embeddings=128000, tie_word_embeddings=k["tie"])
    vision = dict(depth=32, hidden_size=1280, intermediate_size=k["v_inter"], num_heads=16, out_hidden_size=k["v_out"],
                  patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                  fullatt_block_indexes=[7, 15, 23, 31])
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=k["tie"])


class _VocabOnly:
    """Enough of a tokenizer for ``care.models.tiny.build_config``: a vocabulary size and token ids."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def convert_tokens_to_ids(self, token: str) -> int:
        return self.size - 1 - sum(token.encode()) % 8


def _tiny_config():
    from care.models.tiny import build_config

    return build_config(_VocabOnly(1024), hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                        vision_hidden_size=64, vision_depth=2)


def _count(config) -> tuple[int, int, int, int]:
    """(all, vision, root unit, largest unit) parameters of a model built on the meta device (no memory)."""
    import torch
    from transformers import AutoModelForImageTextToText

    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)

    def n(module) -> int:
        return sum(p.numel() for p in module.parameters())

    seen: set[int] = set()
    total = 0
    for p in model.parameters():  # tied weights count once, as parameters() yields them once
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    inner = model.model
    visual, text = inner.visual, inner.language_model
    units = [n(layer) for layer in text.layers] + [n(block) for block in visual.blocks]
    in_units = sum(units)
    return total, n(visual), total - in_units, max(units)


def _processor_shape(folder: Path) -> ProcessorShape:
    """Pixel budgets and patching from a folder's preprocessor_config.json / video_preprocessor_config.json."""

    def budget(cfg: dict) -> tuple[int | None, int | None]:
        size = cfg.get("size") or {}
        return (cfg.get("min_pixels", size.get("shortest_edge")), cfg.get("max_pixels", size.get("longest_edge")))

    # transformers 5 saves both in processor_config.json; older folders (the hub releases) in their own files
    nested = _read_json(folder / "processor_config.json")
    image = nested.get("image_processor") or _read_json(folder / "preprocessor_config.json")
    video = nested.get("video_processor") or _read_json(folder / "video_preprocessor_config.json") or image
    if not image:
        return _QWEN_PROCESSOR
    d = ProcessorShape()
    i_min, i_max = budget(image)
    v_min, v_max = budget(video)
    return ProcessorShape(
        patch_size=int(image.get("patch_size", d.patch_size)), merge_size=int(image.get("merge_size", d.merge_size)),
        temporal_patch_size=int(video.get("temporal_patch_size", d.temporal_patch_size)),
        image_min_pixels=int(i_min or d.image_min_pixels), image_max_pixels=int(i_max or d.image_max_pixels),
        video_min_pixels=int(v_min or d.video_min_pixels), video_max_pixels=int(v_max or d.video_max_pixels),
        cap_pixels_per_frame=bool(video.get("cap_pixels_per_frame") or False),
        max_video_tokens=int(video.get("max_video_tokens") or d.max_video_tokens))


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _shape(name: str, source: str, exact: bool, config, processor: ProcessorShape) -> ModelShape:
    text, vision = config.text_config, config.vision_config
    total, vis, root, unit = _count(config)
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return ModelShape(
        name=name, source=source, exact=exact, parameters=total, vision_parameters=vis, root_parameters=root,
        largest_unit_parameters=unit, hidden_size=text.hidden_size, num_layers=text.num_hidden_layers,
        num_kv_heads=text.num_key_value_heads, head_dim=head_dim, intermediate_size=text.intermediate_size,
        vocab_size=text.vocab_size, max_position_embeddings=text.max_position_embeddings,
        vision_hidden_size=vision.hidden_size, vision_depth=vision.depth,
        vision_intermediate_size=vision.intermediate_size, processor=processor)


@functools.lru_cache(maxsize=16)
def model_shape(model: str) -> ModelShape:
    """The shape of ``model``: a local save_pretrained folder (exact), a known hub id (the built-in table) or
    ``TINY`` (the pipeline's tiny model before it is made). Never downloads."""
    if model == TINY:
        # care.models.tiny.build_processor's defaults: 784 .. 56x56 pixels, frames capped per video
        proc = ProcessorShape(image_min_pixels=784, image_max_pixels=3136, video_min_pixels=784,
                              video_max_pixels=3136, cap_pixels_per_frame=True)
        return _shape("tiny Qwen2.5-VL (not built yet)", "care.models.tiny defaults (vocabulary 1024)", False,
                      _tiny_config(), proc)
    folder = Path(model).expanduser()
    if folder.is_dir():
        from transformers import AutoConfig

        if not (folder / "config.json").is_file():
            raise PlanError(f"model folder {folder} has no config.json; the folder must come from save_pretrained")
        config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
        return _shape(str(folder), f"config.json of {folder}", True, config, _processor_shape(folder))
    key = model if model in KNOWN_CONFIGS else f"{model}-Instruct"
    if key in KNOWN_CONFIGS:
        return _shape(model, "built-in table of published config.json files (estimate: the hub is not read)",
                      False, known_config(model), _QWEN_PROCESSOR)
    raise PlanError(f"model {model!r}: not a local folder and not in the built-in table ({', '.join(KNOWN_CONFIGS)}); "
                    "give a local save_pretrained folder to plan it")


REPRESENTATIVE_QUESTION = (
    "Given the video of the task progress so far and the current observation, what is the most reasonable next "
    "action to take in order to complete the task of preparing a cup of coffee in the kitchen?")
REPRESENTATIVE_OPTIONS = ("pick up the coffee mug from the drying rack next to the sink",
                          "open the upper cabinet door to the left of the refrigerator",
                          "turn on the coffee machine on the counter beside the stove",
                          "put the milk carton back into the refrigerator and close it")


@dataclass(frozen=True)
class PromptShape:
    """Text tokens of one prompt (chat template, question, options, instruction), without the visual tokens."""

    text_tokens: int  # with one placeholder token per visual input (the processor expands each)
    source: str
    exact: bool
    completion_tokens: int | None = None  # SFT: tokens of the longest target in the file, when read


def _longest_row(path: Path, *, limit: int = 20000) -> tuple[str, list[str], str | None] | None:
    """(question, options, cot) of the row with the longest text in the first ``limit`` rows; None if unreadable."""
    best, best_len = None, -1
    try:
        with path.open("rb") as fh:
            for k, line in enumerate(fh):
                if k >= limit:
                    break
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(row, dict) or not isinstance(row.get("question"), str):
                    continue
                options = [row["answer"]] if isinstance(row.get("answer"), str) else []
                options += [o for o in row.get("negative_answers") or [] if isinstance(o, str)]
                options += [row[f"choice_{c}"] for c in "abcd" if isinstance(row.get(f"choice_{c}"), str)]
                cot = row.get("cot") if isinstance(row.get("cot"), str) else None
                size = len(row["question"]) + sum(len(o) for o in options[:4]) + len(cot or "")
                if size > best_len:
                    best, best_len = (row["question"], options[:4] or ["a", "b", "c", "d"], cot), size
    except OSError:
        return None
    return best


_SPECIAL = ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|video_pad|>", "<|image_pad|>")


def _byte_bound(question: str, options: Sequence[str], *, has_video: bool,
                template: PromptTemplate = DEFAULT_TEMPLATE) -> int:
    """Upper bound of the prompt's tokens for any byte-level BPE (Qwen's): one token per byte of ordinary text
    plus one per special token, for the Qwen chat template rendered by hand."""
    visual = ("<|vision_start|><|video_pad|><|vision_end|>" if has_video else "") + \
        "<|vision_start|><|image_pad|><|vision_end|>"
    text = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n" + visual
            + build_prompt_text(question, options, template) + "<|im_end|>\n<|im_start|>assistant\n")
    specials = sum(text.count(s) for s in _SPECIAL)
    for s in _SPECIAL:
        text = text.replace(s, "")
    return len(text.encode()) + specials


def prompt_shape(model: str, data_root: str | None, annotations: str | None, *,
                 template: PromptTemplate = DEFAULT_TEMPLATE) -> PromptShape:
    """Prompt text tokens for the longest question in ``data_root/annotations/<annotations>`` (or a built-in
    SEED-Bench-R1-like one) in ``template``, tokenized by the model folder's own processor when there is one."""
    row = None
    if data_root and annotations:
        from care.media.preprocess import resolve_annotation

        try:
            row = _longest_row(resolve_annotation(annotations, data_root))
        except (CareError, OSError):
            row = None
    question, options, cot = row if row else (REPRESENTATIVE_QUESTION, list(REPRESENTATIVE_OPTIONS), None)
    where = f"longest question of {annotations}" if row else "a representative SEED-Bench-R1 question"
    folder = Path(model).expanduser()
    if model != TINY and folder.is_dir() and any((folder / n).is_file() for n in ("tokenizer.json", "vocab.json")):
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(str(folder), local_files_only=True)
        text = processor.apply_chat_template(build_messages(question, options, has_video=True, template=template),
                                             add_generation_prompt=True, tokenize=False)
        n = len(processor.tokenizer(text, add_special_tokens=False)["input_ids"])
        target = None
        if cot is not None:
            target = len(processor.tokenizer(cot, add_special_tokens=False)["input_ids"]) + 1
        return PromptShape(n, f"{where}, tokenized by the model's processor", True, target)
    n = _byte_bound(question, options, has_video=True, template=template)
    target = len(cot.encode()) + 1 if cot is not None else None
    return PromptShape(n, f"{where}; no tokenizer: upper bound of 1 token per UTF-8 byte", False, target)


@dataclass(frozen=True)
class Hardware:
    """The memory the plan is checked against."""

    device: str  # "cuda", "gpu (given)" or "cpu"
    device_memory: int  # bytes per device (cpu: the host's RAM, shared by every local rank)
    devices_per_node: int | None  # visible GPUs; None when not known
    host_memory: int
    source: str


def host_memory_bytes() -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def hardware(device_memory_gib: float | None = None, host_memory_gib: float | None = None) -> Hardware:
    """This machine's GPU memory (``torch.cuda``), or ``device_memory_gib`` of the target GPU, or the CPU."""
    host = int(host_memory_gib * GIB) if host_memory_gib else host_memory_bytes()
    host_src = f"host RAM {host / GB:.0f} GB ({'given' if host_memory_gib else '/proc/meminfo'})"
    if device_memory_gib:
        return Hardware("gpu (given)", int(device_memory_gib * GIB), None, host,
                        f"{device_memory_gib:g} GiB per GPU (given); {host_src}")
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        count = torch.cuda.device_count()
        return Hardware("cuda", int(props.total_memory), count, host,
                        f"{count} x {props.name}, {props.total_memory / GB:.0f} GB each; {host_src}")
    return Hardware("cpu", host, None, host, f"CPU: ranks share the {host_src}")


# --------------------------------------------------------------------------------------------------------------
# the plan (pure)


@dataclass(frozen=True)
class Sequence_:
    frames: int
    frame_size: tuple[int, int]
    image_size: tuple[int, int]
    video_tokens: int
    image_tokens: int
    text_tokens: int
    completion_tokens: int
    limit: int

    @property
    def prompt_tokens(self) -> int:
        return self.text_tokens - 2 + self.video_tokens + self.image_tokens  # each placeholder becomes N tokens

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Stage:
    name: str
    items: tuple[tuple[str, float], ...]  # (what, bytes per device)

    @property
    def total(self) -> float:
        return sum(b for _, b in self.items)


@dataclass(frozen=True)
class Plan:
    kind: str  # "rl" or "sft"
    model: ModelShape
    prompt: PromptShape
    hardware: Hardware
    sequence: Sequence_
    settings: tuple[tuple[str, str], ...]
    stages: tuple[Stage, ...]
    host: tuple[tuple[str, float], ...]
    problems: tuple[str, ...]
    notes: tuple[str, ...]

    @property
    def peak(self) -> Stage:
        return max(self.stages, key=lambda s: s.total)

    @property
    def ok(self) -> bool:
        return not self.problems


def frame_plan(frames: FrameSampling, source: tuple[int, int] | None) -> tuple[int, tuple[int, int], tuple[int, int]]:
    """(frames per clip at most, video frame size, image size) after care's sampling and resize.

    ``source`` (height, width) of the clips; None plans the largest frame the budget allows (its pixel count at
    most ``max_pixels``), an upper bound for any source.
    """
    if frames.nframes is not None:
        n = max(FRAME_FACTOR, round(frames.nframes / FRAME_FACTOR) * FRAME_FACTOR)
    else:
        n = max(FRAME_FACTOR, (frames.max_frames // FRAME_FACTOR) * FRAME_FACTOR)
    if source is None:
        return n, _largest(frames.max_pixels), _largest(frames.image_max_pixels)
    h, w = source
    return n, smart_resize(h, w, frames.min_pixels, frames.max_pixels), smart_resize(
        h, w, frames.image_min_pixels, frames.image_max_pixels)


def _largest(max_pixels: int, factor: int = 28) -> tuple[int, int]:
    """The frame of most 28x28 cells within ``max_pixels``, as square as possible (the planning worst case)."""
    cells = max(1, max_pixels // (factor * factor))
    best = (1, cells)
    for a in range(1, math.isqrt(cells) + 1):
        b = cells // a
        if a * b > best[0] * best[1] or (a * b == best[0] * best[1] and b - a < best[1] - best[0]):
            best = (a, b)
    return best[0] * factor, best[1] * factor


def visual_tokens(shape: ProcessorShape, frames: int, frame: tuple[int, int], image: tuple[int, int]) -> tuple[int, int]:
    """(video tokens, image tokens) the processor emits, from its own helpers (HF ``get_num_of_video_patches``,
    ``get_number_of_image_patches``), with ``cap_pixels_per_frame`` applied as its ``resize`` does."""
    from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    common = dict(patch_size=shape.patch_size, merge_size=shape.merge_size, temporal_patch_size=shape.temporal_patch_size)
    video_max = shape.video_max_pixels
    if shape.cap_pixels_per_frame:
        factor = shape.patch_size * shape.merge_size
        total = int(shape.max_video_tokens * factor * factor * 0.9)
        video_max = max(min(video_max, total * shape.temporal_patch_size // frames), int(shape.video_min_pixels * 1.05))
    video_proc = Qwen2VLVideoProcessor(min_pixels=shape.video_min_pixels, max_pixels=shape.video_max_pixels,
                                       do_sample_frames=False, cap_pixels_per_frame=shape.cap_pixels_per_frame, **common)
    image_proc = Qwen2VLImageProcessor(min_pixels=shape.image_min_pixels, max_pixels=shape.image_max_pixels, **common)
    size = {"shortest_edge": shape.video_min_pixels, "longest_edge": video_max}
    merge = shape.merge_size**2
    v = video_proc.get_num_of_video_patches(frames, *frame, {"size": size}) // merge
    i = image_proc.get_number_of_image_patches(*image, {}) // merge
    return v, i


def _act_bytes(precision: str, hw: Hardware) -> int:
    if precision == "bf16" or (precision == "auto" and hw.device != "cpu"):
        return 2
    return 4


def layer_bytes(hidden: int, kv_dim: int, inter: int, act: int) -> int:
    """Activation bytes one token leaves for the backward pass in one decoder layer (or vision block), without
    gradient checkpointing: 8h + 3 kv_dim + 4I elements at ``act`` bytes (norm casts, q/k/v, rotary outputs, attention
    output; gate, up, SiLU and product of the MLP; SDPA keeps no s x s matrix) plus the two RMSNorms' fp32 inputs."""
    return act * (8 * hidden + 3 * kv_dim + 4 * inter) + 2 * FP32 * hidden


def kv_bytes(m: ModelShape, act: int, tokens: int, sequences: int) -> int:
    """KV cache: layers x 2 x kv_heads x head_dim x bytes x tokens x sequences."""
    return m.num_layers * 2 * m.num_kv_heads * m.head_dim * act * tokens * sequences


def _distinct_prompts(rows: int, group: int) -> int:
    """Most distinct prompts in ``rows`` consecutive rollouts of groups of ``group``."""
    return min(rows, (rows + group - 2) // group + 1) if rows > 1 else 1


def _train_activations(m: ModelShape, seq: Sequence_, act: int, *, rows: int, prompts: int, gc: bool) -> list:
    patches = (seq.video_tokens + seq.image_tokens) * m.processor.merge_size**2
    text_layer = layer_bytes(m.hidden_size, m.num_kv_heads * m.head_dim, m.intermediate_size, act)
    vis_layer = layer_bytes(m.vision_hidden_size, m.vision_hidden_size, m.vision_intermediate_size, act)
    if gc:  # every row runs its prompt (shared prompts need the cache, which checkpointing turns off)
        tokens, vis_tokens = rows * seq.total, rows * patches
        text = tokens * m.num_layers * FP32 * m.hidden_size + tokens * text_layer
        vision = vis_tokens * m.vision_depth * FP32 * m.vision_hidden_size + vis_tokens * vis_layer
        label = "checkpointed: layer inputs + one layer recomputed"
    else:
        tokens = prompts * seq.prompt_tokens + rows * seq.completion_tokens
        vis_tokens = prompts * patches
        text = tokens * m.num_layers * text_layer
        vision = vis_tokens * m.vision_depth * vis_layer
        label = (f"{rows} rows" if prompts == rows else f"{prompts} shared prompt(s) + {rows} completions")
    logits = rows * seq.completion_tokens * m.vocab_size * (act + 2 * FP32)
    return [(f"activations, text ({label})", text), ("activations, vision tower", vision),
            ("logits + log-softmax (completion positions)", logits)]


def _forward_only(m: ModelShape, seq: Sequence_, act: int, *, rows: int, prompts: int) -> list:
    """A no-grad pass over ``rows`` rollouts of ``prompts`` distinct prompts (shared-prompt forward)."""
    patches = (seq.video_tokens + seq.image_tokens) * m.processor.merge_size**2
    tokens = prompts * seq.prompt_tokens + rows * seq.completion_tokens
    cache = kv_bytes(m, act, seq.prompt_tokens, prompts) + kv_bytes(m, act, seq.completion_tokens, rows)
    transient = tokens * (2 * m.hidden_size + 3 * m.intermediate_size) * act * 2
    vision = prompts * patches * (2 * m.vision_hidden_size + 3 * m.vision_intermediate_size) * act * 2
    logits = rows * seq.completion_tokens * m.vocab_size * (act + FP32)
    return [("KV cache of the pass", cache), ("one layer's transient (text, vision)", transient + vision),
            ("logits + log-softmax (completion positions)", logits)]


def _resident(m: ModelShape, shard: int) -> list:
    p = m.parameters
    what = f"/{shard} (FSDP2 shard)" if shard > 1 else ""
    return [(f"policy fp32 master weights{what}", FP32 * p / shard),
            (f"EMA reference fp32{what}", FP32 * p / shard),
            (f"AdamW moments fp32 x2{what}", 2 * FP32 * p / shard)]


def _gib(b: float) -> str:
    return f"{b / GB:,.1f} GB" if b >= 0.1 * GB else f"{b / 1e6:,.1f} MB"


def _params(n: int) -> str:
    return f"{n / 1e9:.3f} B" if n >= 1e8 else f"{n / 1e6:.3f} M"


def _sequence(cfg_frames: FrameSampling, m: ModelShape, prompt: PromptShape, completion: int,
              source: tuple[int, int] | None) -> Sequence_:
    n, frame, image = frame_plan(cfg_frames, source)
    v, i = visual_tokens(m.processor, n, frame, image)
    return Sequence_(n, frame, image, v, i, prompt.text_tokens, completion, m.max_position_embeddings)


def _sequence_problems(seq: Sequence_, field_: str, m: ModelShape) -> list[str]:
    if seq.total <= seq.limit:
        return []
    over = seq.total - seq.limit
    return [f"{field_}={seq.completion_tokens} + {seq.prompt_tokens:,} prompt tokens ({seq.video_tokens:,} video, "
            f"{seq.image_tokens:,} image) = {seq.total:,} exceeds max_position_embeddings={seq.limit:,} of {m.name} "
            f"by {over:,}: lower {field_} or frames.max_frames / frames.max_pixels"]


def plan_rl(cfg, m: ModelShape, prompt: PromptShape, hw: Hardware, *,
            source: tuple[int, int] | None = None) -> Plan:
    """The plan of an ``RLConfig`` (pure: no IO beyond the processors' arithmetic)."""
    o, r, s = cfg.optim, cfg.rollout, cfg.scoring
    n = o.num_processes
    shard = n if (o.parallelism == "fsdp2" and n > 1) else 1
    act = _act_bytes(o.precision, hw)
    seq = _sequence(cfg.frames, m, prompt, r.sampling.max_new_tokens, source)
    p = m.parameters
    resident = _resident(m, shard)
    rows_per_rank = math.ceil(r.prompts_per_iteration * r.group_size / n)
    rows = min(o.micro_batch_size, rows_per_rank)
    full_copy = [("FSDP2 full fp32 copy gathered for the stage", FP32 * p)] if shard > 1 else []

    # the update
    grads = [(f"gradients fp32{f'/{shard}' if shard > 1 else ''}", FP32 * p / shard)]
    if n > 1 and shard == 1:
        grads.append(("DDP gradient buckets fp32", DDP_BUCKET_BYTES * p))
    if shard > 1:
        grads.append(("FSDP2 gathered: root unit + 2 layers fp32, 1 layer of gradients",
                      FP32 * (m.root_parameters + 3 * m.largest_unit_parameters)))
    update = Stage("optimisation (update)", tuple(resident + grads + _train_activations(
        m, seq, act, rows=rows, prompts=_distinct_prompts(rows, r.group_size), gc=o.gradient_checkpointing)))

    # rollouts
    chunk_prompts = r.generation_batch_prompts
    if r.backend == "hf":
        sequences = chunk_prompts * r.group_size
        prefill = chunk_prompts * r.group_size * seq.prompt_tokens * (2 * m.hidden_size + 3 * m.intermediate_size) * act
        rollout = Stage("rollouts (hf generate)", tuple(resident + full_copy + [
            (f"KV cache: {sequences} sequences x {seq.total:,} tokens", kv_bytes(m, act, seq.total, sequences)),
            ("prefill: one layer's transient", prefill)]))
        stages = [rollout]
    else:
        util = r.vllm_gpu_memory_utilization
        engine = util * hw.device_memory if hw.device != "cpu" else r.vllm_cpu_kvcache_gib * GIB + 2 * p
        label = f"vLLM engine: vllm_gpu_memory_utilization={util:g} of the GPU"
        stages = [Stage("rollouts (vLLM engine)", (*resident, (label, engine)))]
        if r.behaviour_logprobs == "forward":
            stages.append(Stage("behaviour log-probs (hf forward)", tuple(resident + full_copy + _forward_only(
                m, seq, act, rows=chunk_prompts * r.group_size, prompts=chunk_prompts))))
    scoring_rows = s.scoring_batch_size
    stages.append(Stage("scoring (reference forward)", tuple(resident + full_copy + _forward_only(
        m, seq, act, rows=scoring_rows, prompts=_distinct_prompts(scoring_rows, r.group_size)))))
    stages.append(update)

    problems = _sequence_problems(seq, "rollout.sampling.max_new_tokens", m)
    notes = []
    if r.backend == "vllm":
        weights = 2 * p / r.vllm_tensor_parallel_size
        kv_one = kv_bytes(m, 2, seq.total, 1) / r.vllm_tensor_parallel_size
        share = r.vllm_gpu_memory_utilization * hw.device_memory
        if hw.device != "cpu" and share < weights + kv_one:
            problems.append(
                f"rollout.vllm_gpu_memory_utilization={r.vllm_gpu_memory_utilization:g} gives vLLM {_gib(share)} per "
                f"GPU, less than its bf16 weights ({_gib(weights)}) plus the KV cache of one {seq.total:,}-token "
                f"sequence ({_gib(kv_one)}): raise it or rollout.vllm_tensor_parallel_size")
        notes.append(f"vLLM: bf16 weights {_gib(weights)} per GPU; its KV cache holds "
                     f"{max(0, int((share - weights) // max(kv_one, 1)))} sequences of {seq.total:,} tokens "
                     f"({r.generation_batch_prompts * r.group_size} per generation batch)")
    if rows_per_rank < o.micro_batch_size:
        notes.append(f"each rank updates {rows_per_rank} rollouts per iteration, so micro batches are {rows}, "
                     f"not optim.micro_batch_size={o.micro_batch_size}")
    if n > 1 and r.generation_batch_prompts * n > r.prompts_per_iteration:
        notes.append(f"rollout.generation_batch_prompts={r.generation_batch_prompts} leaves ranks idle at {n} "
                     f"processes: at most prompts_per_iteration / num_processes = {r.prompts_per_iteration // n or 1}")
    local = n // o.nnodes
    problems += _memory_problems(stages, hw, local, shard, o, act, rows, kind="rl")
    host = _host(m, hw, local, shard, checkpoint_background=cfg.checkpoint_background)
    problems += _host_problems(host, hw, local)
    settings = (("processes", f"{n} ({o.parallelism if n > 1 else 'one process'}), {local} per node"),
                ("precision", f"{o.precision} -> {'bf16 autocast' if act == 2 else 'fp32'}"),
                ("micro batch", f"{rows} rollouts (gradient checkpointing {'on' if o.gradient_checkpointing else 'off'})"),
                ("rollouts", f"{r.prompts_per_iteration} prompts x G={r.group_size}, backend {r.backend}, "
                             f"{r.generation_batch_prompts} prompts per generate call"),
                ("scoring", f"{s.scoring_batch_size} rollouts per reference forward"))
    return Plan("rl", m, prompt, hw, seq, settings, tuple(stages), tuple(host), tuple(problems), tuple(notes))


def plan_sft(cfg, m: ModelShape, prompt: PromptShape, hw: Hardware, *,
             source: tuple[int, int] | None = None, target_tokens: int | None = None) -> Plan:
    """The plan of an ``SFTConfig``: one process, full batch per step, target = the longest CoT (or 1024)."""
    act = _act_bytes(cfg.precision, hw)
    target = target_tokens or prompt.completion_tokens or 1024
    seq = _sequence(cfg.frames, m, prompt, target, source)
    p = m.parameters
    state = [("weights fp32", FP32 * p), ("gradients fp32", FP32 * p), ("AdamW moments fp32 x2", 2 * FP32 * p)]
    rows = cfg.batch_size
    stage = Stage("SFT step", tuple(state + _train_activations(m, seq, act, rows=rows, prompts=rows,
                                                                gc=cfg.gradient_checkpointing)))
    problems = _sequence_problems(seq, "CoT target", m) if seq.total > seq.limit else []
    problems += _memory_problems([stage], hw, 1, 1, cfg, act, rows, kind="sft")
    host = _host(m, hw, 1, 1, checkpoint_background=False)
    problems += _host_problems(host, hw, 1)
    notes = [] if prompt.completion_tokens else ["SFT target length not read from the data: 1024 tokens assumed"]
    settings = (("processes", "1"), ("precision", f"{cfg.precision} -> {'bf16 autocast' if act == 2 else 'fp32'}"),
                ("batch", f"{rows} samples per step (gradient checkpointing "
                          f"{'on' if cfg.gradient_checkpointing else 'off'})"))
    return Plan("sft", m, prompt, hw, seq, settings, (stage,), tuple(host), tuple(problems), tuple(notes))


def _memory_problems(stages: Sequence[Stage], hw: Hardware, local: int, shard: int, o, act: int, rows: int, *,
                     kind: str) -> list[str]:
    # on a CPU every local rank (and, with one process, the flow) shares the host's RAM
    budget = hw.device_memory / (local if hw.device == "cpu" else 1)
    where = "per rank of the host's RAM" if hw.device == "cpu" else "per GPU"
    out = []
    if hw.devices_per_node is not None and local > hw.devices_per_node and hw.device == "cuda":
        out.append(f"optim.num_processes={o.num_processes} runs {local} ranks per node on {hw.devices_per_node} "
                   f"GPU(s): one rank per GPU")
    for stage in stages:
        if stage.total <= budget:
            continue
        over = stage.total - budget
        prefix = "optim." if kind == "rl" else ""
        fix = []
        state = sum(b for w, b in stage.items if "fp32" in w and "copy" not in w and "gathered" not in w)
        if kind == "rl" and shard == 1 and state > budget * 0.5:
            fix.append(f"use {prefix}parallelism=fsdp2" + (" with more processes" if o.num_processes == 1 else ""))
        elif kind == "rl" and shard > 1 and state > budget * 0.5:
            fix.append(f"more {prefix}num_processes (the state is split over them)")
        big = max(stage.items, key=lambda it: it[1])
        if "activations" in big[0] or "logits" in big[0]:
            if not (o.gradient_checkpointing):
                fix.append(f"{prefix}gradient_checkpointing=true")
            fix.append(f"a smaller {prefix}micro_batch_size (now {rows})" if kind == "rl" else
                       f"a smaller batch_size (now {rows})")
        if "KV cache" in big[0]:
            fix.append("fewer rollout.generation_batch_prompts, a smaller rollout.sampling.max_new_tokens, or "
                       "rollout.backend=vllm")
        if "vLLM" in big[0]:
            fix.append("a smaller rollout.vllm_gpu_memory_utilization")
        if "reference forward" in stage.name and "logits" in big[0]:
            fix = ["a smaller scoring.scoring_batch_size"]
        if "full fp32 copy" in big[0]:
            fix.append("a GPU with more memory (the full copy does not shrink with more processes)")
        out.append(f"{stage.name} needs {_gib(stage.total)} {where}, {_gib(over)} more than the {_gib(budget)} there "
                   f"(largest: {big[0]}, {_gib(big[1])}): " + ("; ".join(fix) or "a larger device"))
    return out


def _host(m: ModelShape, hw: Hardware, local: int, shard: int, *, checkpoint_background: bool) -> list:
    p = m.parameters
    items = [(f"loading: an fp32 model built on the CPU by each of {local} local rank(s)", FP32 * p * local)]
    if checkpoint_background:
        items.append(("background checkpoint snapshot (16 B/param, per node)", 16 * p * (local / shard if shard > 1
                                                                                        else 1)))
    return items


def _host_problems(host, hw: Hardware, local: int) -> list[str]:
    if hw.device == "cpu":
        return []  # the device budget already is the host's RAM
    peak = max(b for _, b in host)
    if peak <= hw.host_memory:
        return []
    return [f"host RAM: {_gib(peak)} needed ({max(host, key=lambda it: it[1])[0]}), {_gib(hw.host_memory)} installed: "
            "fewer local ranks (optim.num_processes / optim.nnodes) or checkpoint_background=false"]


# --------------------------------------------------------------------------------------------------------------
# output


def render(plan: Plan) -> str:
    """The plan as a plain-text table (also fit for a flow's log)."""
    m, seq, hw = plan.model, plan.sequence, plan.hardware
    lines = [f"plan ({plan.kind}): {m.name}",
             f"  model       {_params(m.parameters)} parameters ({_params(m.vision_parameters)} vision), "
             f"{m.num_layers} layers, hidden {m.hidden_size}, {m.num_kv_heads} KV heads x {m.head_dim}"
             f"  [{m.source}{'' if m.exact else '; ESTIMATE'}]",
             f"  devices     {hw.source}"]
    lines += [f"  {k:<11} {v}" for k, v in plan.settings]
    lines += ["", "  sequence per sample                       tokens",
              f"    video: {seq.frames} frames of {seq.frame_size[0]}x{seq.frame_size[1]}".ljust(42)
              + f"{seq.video_tokens:>8,}",
              f"    image: {seq.image_size[0]}x{seq.image_size[1]}".ljust(42) + f"{seq.image_tokens:>8,}",
              "    text (template, question, options)".ljust(42) + f"{seq.text_tokens - 2:>8,}"
              + ("" if plan.prompt.exact else "  (upper bound)"),
              "    completion / target".ljust(42) + f"{seq.completion_tokens:>8,}",
              "    total".ljust(42) + f"{seq.total:>8,}  of max_position_embeddings {seq.limit:,}",
              f"    ({plan.prompt.source})"]
    budget = hw.device_memory
    lines += ["", f"  memory per device (of {_gib(budget)}{', shared by the ranks' if hw.device == 'cpu' else ''})"]
    for stage in plan.stages:
        lines.append(f"    {stage.name}".ljust(72) + f"{_gib(stage.total):>12}")
        for what, b in stage.items:
            lines.append(f"      {what}".ljust(72) + f"{_gib(b):>12}")
    lines.append(f"    peak: {plan.peak.name}".ljust(72) + f"{_gib(plan.peak.total):>12}")
    lines += ["", f"  host RAM (of {_gib(hw.host_memory)})"]
    lines += [f"    {what}".ljust(72) + f"{_gib(b):>12}" for what, b in plan.host]
    if plan.notes:
        lines += ["", *[f"  note: {n}" for n in plan.notes]]
    lines += ["", "  fits" if plan.ok else "  DOES NOT FIT:", *[f"  - {p}" for p in plan.problems]]
    return "\n".join(lines)


def check(plans: Sequence[Plan]) -> None:
    """Raise ``PlanError`` naming the fields to change when any plan does not fit."""
    problems = [f"{p.kind}: {q}" for p in plans for q in p.problems]
    if problems:
        raise PlanError("the config does not fit (see the plan above; docs/plan.md):\n  " + "\n  ".join(problems))


# --------------------------------------------------------------------------------------------------------------
# the entry points the CLI (and the flows) call


def plan_rl_config(cfg, hw: Hardware | None = None, *, source: tuple[int, int] | None = None) -> Plan:
    hw = hw or hardware()
    prompt = prompt_shape(cfg.model, cfg.data_root, cfg.train_annotations,
                          template=prompt_template(cfg.rollout.prompt, "train"))
    return plan_rl(cfg, model_shape(cfg.model), prompt, hw, source=source)


def plan_sft_config(cfg, hw: Hardware | None = None, *, source: tuple[int, int] | None = None) -> Plan:
    hw = hw or hardware()
    prompt = prompt_shape(cfg.model, cfg.data_root, cfg.annotations, template=prompt_template(cfg.prompt, "train"))
    return plan_sft(cfg, model_shape(cfg.model), prompt, hw, source=source)


def plan_pipeline_config(cfg, hw: Hardware | None = None, *, models_dir: Path | None = None,
                         demo_dir: Path | None = None, source: tuple[int, int] | None = None) -> list[Plan]:
    """The plans of a ``PipelineConfig``: its rl section (when run_rl) and its sft section (when run_sft)."""
    hw = hw or hardware()
    model = cfg.model
    if model is None:
        tiny = models_dir / f"tiny-seed{cfg.tiny_model_seed}" if models_dir else None
        model = str(tiny) if tiny is not None and (tiny / "config.json").is_file() else TINY
    data_root = cfg.data_root or (str(demo_dir) if demo_dir and demo_dir.is_dir() else None)
    plans = []
    if cfg.run_sft:
        plans.append(plan_sft_config(cfg.sft_config(model, data_root or "<data>"), hw, source=source))
    if cfg.run_rl:
        plans.append(plan_rl_config(cfg.rl_config(model, data_root or "<data>"), hw, source=source))
    return plans
