"""GPU check: one random-weight Qwen2.5-VL of a real shape through care's own rollout and update code.

For a lent GPU machine (docs/gpu_check.md): minutes of device time, no package registry, its own Python with
torch and transformers but no pydantic, prefect, duckdb, decord or PyAV. In one process it

1. builds a random-weight Qwen2.5-VL with the published shape of Qwen2.5-VL-3B-Instruct (``--shape 7b``:
   -7B-Instruct), with a tokenizer and the real processor built offline as ``care.models.tiny`` builds the tiny
   model's, fp32 master weights (``care.train.toolkit.to_master``) and an fp32 EMA reference copy;
2. samples G completions for each of P video prompts (synthetic uint8 frames and image, through the real
   processor) with ``care.models.generation.sample_completions`` (HF ``generate``, the ``hf`` rollout backend),
   under bf16 autocast, recording the behaviour log-probs;
3. checks that the shared prompt pass (each distinct prompt once, its completions on the prompt's KV cache: what
   scoring and the update run) gives the plain forward's log-probs, in fp32;
4. scores the rollouts with advantages of +1 / -1 and takes bf16-autocast GRPO-CARE updates on them with
   ``care.train.optimise.update_steps`` (the optimisation stage's function; EMA every step), then checks that
   every weight, reference weight and AdamW moment is still fp32, that the loss and gradient norm are finite
   and that the weights (and the EMA reference) moved;
5. shards policy and reference with FSDP2 (``optim.parallelism: fsdp2``: care's ``_shard``, i.e.
   ``care.train.sharded.shard_model`` over a 1-D mesh) in a 1-rank process group (NCCL on a GPU, gloo on the
   CPU) and takes one update through the FSDP2 branch of the update (same checks, plus: the parameters are
   DTensors);
6. prints tokens/s of generation and of the updates and the peak GPU memory, and writes them as JSON to
   ``--out`` (also when a step fails: then with ``"ok": false`` and the traceback, and the exit status is 1).

``--dry-run`` prints the plan (shapes, parameter count from a meta-device model, fp32 bytes of weights,
gradients, AdamW moments and reference, the batch with its exact token counts) and exits without building the
model. ``--shape tiny --device cpu`` runs the whole check for real on a few-layer model in seconds (the test).

    python benchmarks/gpu_check.py [--shape 3b|7b|tiny] [--device auto|cuda|cpu] [--dry-run] [--out FILE]
    python benchmarks/gpu_check.py --wheel-requirements   # the packages the device lacks, as name==version

Run it as ``make gpu-check`` (``DRY_RUN=1``; ``GPU_CHECK_ARGS="--shape 7b --layers 14"``).
"""

from __future__ import annotations

import argparse
import copy
import gc
import importlib
import json
import math
import os
import platform
import re
import sys
import tempfile
import time
import traceback
import types
import weakref
from dataclasses import dataclass, replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_OUT = HERE / "results" / "gpu_check.json"
H200_GIB = 139
USABLE = 0.8  # of GPU memory for the estimate below; the rest: activations, snapshots, fragmentation
SHARED_PROMPT_TOLERANCE = 1e-3  # fp32 log-probs; a prompt-less completion pass is off by ~0.1 or more
EMA_DECAY = 0.995  # the paper's; applied after every optimizer step here (ema_every 1)

# What care's modules import that the device machine's Python lacks (KINDS.md, "Python packages already there"),
# as distribution names: `make gpu-wheels` downloads these, at the versions installed here, for CPython 3.12.
CARRIED_WHEELS = (
    "pydantic",  # care.config (StageConfig), care.train.config (OptimConfig), care.media.sampling
    "pydantic-core",  # pydantic's compiled core (exactly the version pydantic pins)
    "annotated-types",  # required by pydantic
    "typing-inspection",  # required by pydantic
    "typing-extensions",  # pydantic needs >= 4.16; the device's own may be older (the carried one shadows it)
    "cachetools",  # care.media.frame_cache (the decoded-entry LRU), imported by care.train.optimise
)
# Imported at module level on the way to care.train.optimise, never called by the check, absent on the device:
# PyAV by care.media.decode / care.media.probe (through the care.media package; the check's frames are
# synthetic, nothing is decoded) and DuckDB by care.store.catalog (through the care.store package, whose
# rollout_log the update reads from; the check writes no catalog). Where one cannot be imported, a placeholder
# that raises ImportError on first use stands in for it.
PLACEHOLDER_MODULES = ("av", "duckdb")


@dataclass(frozen=True)
class Shape:
    """Text and vision dimensions (the published config.json values for 3b and 7b)."""

    name: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    vocab_size: int | None  # None: the tokenizer's size (tiny)
    tie_word_embeddings: bool
    rope_theta: float
    max_position_embeddings: int
    vision_depth: int
    vision_hidden_size: int
    vision_intermediate_size: int
    vision_heads: int
    fullatt_block_indexes: tuple[int, ...]
    # workload defaults for this shape
    frame_size: int
    max_new_tokens: int
    group_size: int
    micro_batch_size: int


SHAPES = {
    # Qwen/Qwen2.5-VL-3B-Instruct config.json
    "3b": Shape("3b", hidden_size=2048, intermediate_size=11008, num_layers=36, num_heads=16, num_kv_heads=2,
                vocab_size=151936, tie_word_embeddings=True, rope_theta=1_000_000.0, max_position_embeddings=128000,
                vision_depth=32, vision_hidden_size=1280, vision_intermediate_size=3420, vision_heads=16,
                fullatt_block_indexes=(7, 15, 23, 31), frame_size=252, max_new_tokens=128, group_size=8,
                micro_batch_size=8),
    # Qwen/Qwen2.5-VL-7B-Instruct config.json
    "7b": Shape("7b", hidden_size=3584, intermediate_size=18944, num_layers=28, num_heads=28, num_kv_heads=4,
                vocab_size=152064, tie_word_embeddings=False, rope_theta=1_000_000.0, max_position_embeddings=128000,
                vision_depth=32, vision_hidden_size=1280, vision_intermediate_size=3420, vision_heads=16,
                fullatt_block_indexes=(7, 15, 23, 31), frame_size=252, max_new_tokens=128, group_size=8,
                micro_batch_size=8),
    # the demo's tiny dimensions (care.models.tiny defaults): the whole check on a CPU in seconds
    "tiny": Shape("tiny", hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
                  vocab_size=None, tie_word_embeddings=True, rope_theta=10000.0, max_position_embeddings=4096,
                  vision_depth=2, vision_hidden_size=64, vision_intermediate_size=128, vision_heads=4,
                  fullatt_block_indexes=(1,), frame_size=56, max_new_tokens=16, group_size=4, micro_batch_size=4),
}

QUESTIONS = (
    ("The robot holds a red cup over the table. What should it do next to finish setting the table?",
     ("put the cup on the tray", "open the drawer", "wipe the window", "pick up the towel")),
    ("The person has filled the kettle with water. Which step comes next?",
     ("switch the kettle on", "close the fridge", "fold the shirt", "water the plant")),
    ("Two boxes stand by the door and one is open. What is the next action?",
     ("tape the open box", "turn off the light", "sweep the floor", "hang the coat")),
    ("The drawer is open and the spoon is on the counter. What should happen next?",
     ("put the spoon in the drawer", "open the oven", "take out the trash", "close the curtain")),
)


class CheckFailed(AssertionError):
    """A property the check requires does not hold (the message says which and by how much)."""


def wheel_requirements() -> list[str]:
    """``name==version`` of each carried package, at the version installed in this environment."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in CARRIED_WHEELS]


def stand_in_for_missing(names=PLACEHOLDER_MODULES) -> list[str]:
    """Put a placeholder module in ``sys.modules`` for each of ``names`` that cannot be imported; returns them.

    The placeholder lets modules that import it at module level load; any use of it raises ImportError.
    """
    missing = []
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            module = types.ModuleType(name, f"placeholder: {name} is not installed in this environment")

            def _missing(attr, _name=name):
                if attr.startswith("__"):
                    raise AttributeError(attr)
                raise ImportError(f"{_name} is not installed here: {_name}.{attr} is not available "
                                  "(benchmarks/gpu_check.py never calls it)")

            module.__getattr__ = _missing
            sys.modules[name] = module
            missing.append(name)
    return missing


def log(message: str) -> None:
    print(message, flush=True)


def gib(n_bytes: float) -> float:
    return n_bytes / 2**30


def size(n_bytes: float) -> str:
    """``14.0 GiB``, ``1.3 MiB``."""
    return f"{gib(n_bytes):.1f} GiB" if n_bytes >= 2**30 else f"{n_bytes / 2**20:.1f} MiB"


# ---------------------------------------------------------------------------------------------------- building

def shape_for(args) -> Shape:
    shape = SHAPES[args.shape]
    changes = {}
    if args.layers is not None:
        changes["num_layers"] = args.layers
    if args.vision_depth is not None:
        depth = args.vision_depth
        changes["vision_depth"] = depth
        changes["fullatt_block_indexes"] = tuple(i for i in shape.fullatt_block_indexes if i < depth) or (depth - 1,)
    return replace(shape, **changes) if changes else shape


def build_tokenizer():
    from care.models.tokenizer import train_tokenizer

    corpus = [q + " " + " ".join(opts) for q, opts in QUESTIONS]
    return train_tokenizer(corpus * 4, vocab_size=1024)


def build_config(shape: Shape, tokenizer):
    """A Qwen2_5_VLConfig of ``shape``, its special token ids taken from ``tokenizer`` (as care.models.tiny)."""
    from transformers import Qwen2_5_VLConfig

    from care.models.tiny import MERGE, PATCH, TEMPORAL_PATCH, mrope_section
    from care.models.tokenizer import EOS_TOKEN, IMAGE_TOKEN, PAD_TOKEN, VIDEO_TOKEN, VISION_END, VISION_START

    ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in (
        ("pad", PAD_TOKEN), ("eos", EOS_TOKEN), ("image", IMAGE_TOKEN), ("video", VIDEO_TOKEN),
        ("vision_start", VISION_START), ("vision_end", VISION_END))}
    vocab = shape.vocab_size or len(tokenizer)
    if len(tokenizer) > vocab:
        raise CheckFailed(f"tokenizer has {len(tokenizer)} tokens, more than the model's vocabulary {vocab}")
    head_dim = shape.hidden_size // shape.num_heads
    text = dict(
        vocab_size=vocab, hidden_size=shape.hidden_size, intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers, num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads, max_position_embeddings=shape.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": shape.rope_theta,
                         "mrope_section": mrope_section(head_dim)},
        rms_norm_eps=1e-6, bos_token_id=ids["pad"], eos_token_id=ids["eos"], pad_token_id=ids["pad"],
        tie_word_embeddings=shape.tie_word_embeddings,
    )
    vision = dict(
        depth=shape.vision_depth, hidden_size=shape.vision_hidden_size,
        intermediate_size=shape.vision_intermediate_size, num_heads=shape.vision_heads,
        out_hidden_size=shape.hidden_size, patch_size=PATCH, spatial_merge_size=MERGE,
        temporal_patch_size=TEMPORAL_PATCH, window_size=112, tokens_per_second=2,
        fullatt_block_indexes=list(shape.fullatt_block_indexes),
    )
    return Qwen2_5_VLConfig(
        text_config=text, vision_config=vision, image_token_id=ids["image"], video_token_id=ids["video"],
        vision_start_token_id=ids["vision_start"], vision_end_token_id=ids["vision_end"],
        tie_word_embeddings=shape.tie_word_embeddings,
    )


def count_parameters(config) -> dict:
    """Parameter counts from a model on the meta device (no memory): total, per decoder layer, vision."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(config)
    total = sum(p.numel() for p in model.parameters())
    layer = sum(p.numel() for n, p in model.named_parameters() if re.search(r"(^|\.)layers\.0\.", n))
    vision = sum(p.numel() for n, p in model.named_parameters() if ".visual." in f".{n}")
    return {"total": total, "per_decoder_layer": layer, "vision": vision}


def memory_estimate(parameters: int) -> dict:
    """fp32 bytes of the resident training state and the update's peak, from the parameter count alone.

    weights, gradients, AdamW exp_avg + exp_avg_sq and the EMA reference are fp32 (care.train.toolkit); the step
    adds AdamW's foreach temporaries (one fp32 tensor per parameter) and bf16 autocast keeps a bf16 copy of the
    weights during forward and backward. Activations come on top (small at this batch).
    """
    p = parameters
    parts = {"weights_fp32": 4 * p, "gradients_fp32": 4 * p, "adamw_moments_fp32": 8 * p,
             "ema_reference_fp32": 4 * p, "adamw_step_temporaries_fp32": 4 * p, "autocast_bf16_weight_copies": 2 * p}
    resident = parts["weights_fp32"] + parts["gradients_fp32"] + parts["adamw_moments_fp32"] + \
        parts["ema_reference_fp32"]
    return {**parts, "resident_training_state": resident, "update_peak_without_activations": sum(parts.values())}


def layers_that_fit(counts: dict, num_layers: int, budget_bytes: float) -> int:
    """The most decoder layers whose update peak (``memory_estimate``) stays within ``budget_bytes``."""
    rest = counts["total"] - num_layers * counts["per_decoder_layer"]
    per_param = memory_estimate(1)["update_peak_without_activations"]
    return max(0, int((budget_bytes / per_param - rest) // counts["per_decoder_layer"]))


class SyntheticFrames:
    """The frame cache's ``load`` for synthetic samples: seeded uint8 video frames and image, in memory."""

    def __init__(self, *, frames: int, size: int, fps: float = 2.0, seed: int = 0):
        from care.media.sampling import FrameSampling

        self.frames, self.size, self.fps, self.seed = frames, size, fps, seed
        self.sampling = FrameSampling(nframes=frames)  # what a FrameCache carries: the temporal rule among it

    def contains(self, sample) -> bool:
        return True

    def load(self, sample):
        import numpy as np

        from care.media.frame_cache import CachedSample

        rng = np.random.default_rng([self.seed, int(sample.sample_id.rsplit("-", 1)[-1])])
        video = rng.integers(0, 256, size=(self.frames, self.size, self.size, 3), dtype=np.uint8)
        image = rng.integers(0, 256, size=(self.size, self.size, 3), dtype=np.uint8)
        return CachedSample(sample_id=sample.sample_id, frames=video, image=image, fps=self.fps,
                            timestamps=np.arange(self.frames, dtype=np.float64) / self.fps)


def synthetic_samples(n: int):
    from care.data.schema import Sample

    out = []
    for k in range(n):
        question, options = QUESTIONS[k % len(QUESTIONS)]
        out.append(Sample(sample_id=f"gpu-check-{k}", question=question, options=options, answer="A",
                          video=f"synthetic/{k}.mp4", image=f"synthetic/{k}.jpg", split="train",
                          source_file="gpu_check", line=k))
    return out


def build_model(config, tokenizer, device, *, seed: int):
    """Random weights built directly on ``device``, cast to the fp32 master dtype, eval mode."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    from care.models.tiny import generation_config
    from care.train.toolkit import to_master

    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config)
    model = to_master(model).eval()
    model.generation_config = generation_config(tokenizer)
    return model


# ---------------------------------------------------------------------------------------------------- measuring

class Clock:
    """Wall time of a block, the device synchronised at both ends; peak GPU memory of the block."""

    def __init__(self, device):
        self.device = device

    def __enter__(self):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self.peak = None
        self.seconds = time.perf_counter() - self.t0
        return False


WATCHED = (r"(^|\.)layers\.0\.", r"(^|\.)layers\.{last}\.", r"(^|\.)blocks\.0\.", r"(^|\.)merger\.",
           r"embed_tokens\.weight$", r"language_model\.norm\.weight$|(^|\.)model\.norm\.weight$")


def watched_names(model, num_layers: int) -> list[str]:
    """Parameters whose values are compared before and after an update: first and last decoder layer, first
    vision block, the merger, the embedding and the final norm. Every pattern must match something."""
    names = [n for n, _ in model.named_parameters()]
    picked = []
    for pattern in WATCHED:
        rx = re.compile(pattern.replace("{last}", str(num_layers - 1)))
        hits = [n for n in names if rx.search(n)]
        if not hits:
            raise CheckFailed(f"no parameter name matches {rx.pattern!r} (names like {names[:3]})")
        picked += [n for n in hits if n not in picked]
    return picked


def _local(t):
    to_local = getattr(t, "to_local", None)
    return to_local() if callable(to_local) else t


def snapshot(model, names) -> dict:
    params = dict(model.named_parameters())
    return {n: _local(params[n]).detach().clone() for n in names}


def moved(model, before: dict) -> dict:
    """Which watched parameters changed, and the fraction of their elements that did."""
    params = dict(model.named_parameters())
    unchanged, changed_elems, total = [], 0, 0
    for n, old in before.items():
        new = _local(params[n]).detach()
        diff = int((new != old).sum())
        changed_elems += diff
        total += old.numel()
        if diff == 0:
            unchanged.append(n)
    max_abs = max(float((_local(params[n]).detach() - old).abs().max()) for n, old in before.items())
    return {"tensors": len(before), "unchanged_tensors": unchanged, "changed_fraction": changed_elems / total,
            "max_abs_change": max_abs}


def dtype_report(trainer) -> dict:
    """Dtypes of policy and reference parameters (local shards too) and of AdamW's moments."""
    import torch

    def dtypes(module):
        return sorted({str(p.dtype) for p in module.parameters()} | {str(_local(p).dtype) for p in module.parameters()})

    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    moments = set()
    for state in optimizer.state.values():
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                moments |= {str(state[key].dtype), str(_local(state[key]).dtype)}
    out = {"policy": dtypes(trainer.policy), "reference": dtypes(trainer.reference), "adamw_moments": sorted(moments),
           "adamw_states": len(optimizer.state)}
    fp32 = str(torch.float32)
    out["all_fp32"] = out["policy"] == [fp32] and out["reference"] == [fp32] and out["adamw_moments"] == [fp32]
    return out


def require(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def ema_deviation(trainer, ref_before: dict, decay: float) -> float:
    """Largest |reference - lerp(reference before, policy, 1 - decay)| over the watched tensors: the EMA step
    ``ref <- decay * ref + (1 - decay) * policy`` recomputed in fp32 from the weights after the update."""
    policy, reference = dict(trainer.policy.named_parameters()), dict(trainer.reference.named_parameters())
    worst = 0.0
    for n, old in ref_before.items():
        want = old.lerp(_local(policy[n]).detach().to(old.dtype), 1.0 - decay)
        worst = max(worst, float((_local(reference[n]).detach() - want).abs().max()))
    return worst


def check_update(name: str, trainer, step: dict, before: dict, ref_before: dict, *, decay: float) -> dict:
    """fp32 master weights, finite loss and gradient norm, no skipped step, every watched weight moved, the EMA
    reference moved by exactly one fp32 EMA step (small steps of weights near 1, the norms, round away in it)."""
    dt = dtype_report(trainer)
    require(dt["all_fp32"], f"{name}: not all fp32 after the update: {dt}")
    require(dt["adamw_states"] > 0, f"{name}: AdamW holds no state: was a step taken?")
    require(math.isfinite(step["loss"]), f"{name}: loss {step['loss']} is not finite")
    require(math.isfinite(step["grad_norm"]) and step["grad_norm"] > 0,
            f"{name}: gradient norm {step['grad_norm']} is not finite and positive")
    require(step["skipped_nonfinite"] == 0.0, f"{name}: the optimizer step was skipped (non-finite)")
    policy_moved = moved(trainer.policy, before)
    require(not policy_moved["unchanged_tensors"],
            f"{name}: weights did not move: {policy_moved['unchanged_tensors'][:5]}")
    reference_moved = moved(trainer.reference, ref_before)
    require(reference_moved["changed_fraction"] > 0, f"{name}: the EMA reference did not move")
    deviation = ema_deviation(trainer, ref_before, decay)
    require(deviation <= 1e-6, f"{name}: the reference is {deviation:g} away from one EMA step of the policy")
    return {"dtypes": dt, "policy_moved": policy_moved, "reference_moved": reference_moved,
            "ema_max_deviation": deviation}


# ---------------------------------------------------------------------------------------------------- phases

def generate(trainer, samples, cache, args, device) -> tuple[list[dict], dict]:
    """The hf rollout backend's sampling on video prompts; rollouts with advantages +1 / -1."""
    import torch

    from care.models.generation import Decoding, sample_completions
    from care.models.inputs import encode_prompts
    from care.models.loading import suppressed_token_ids
    from care.models.samples import prompt_items
    from care.train.toolkit import autocast

    processor, model = trainer.processor, trainer.policy
    tokenizer = processor.tokenizer
    items, rates = prompt_items(samples, cache)
    enc = encode_prompts(processor, items, fps=rates)
    inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in enc.items()}
    decoding = Decoding(temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=args.max_new_tokens)
    video_tokens = int((enc["input_ids"] == model.config.video_token_id).sum()) // len(samples)
    image_tokens = int((enc["input_ids"] == model.config.image_token_id).sum()) // len(samples)
    with Clock(device) as clock, autocast(device, torch.bfloat16):
        completions = sample_completions(
            model, inputs, tokenizer, group_size=args.group_size, decoding=decoding, seed=args.seed,
            eos_token_ids=[tokenizer.eos_token_id], pad_token_id=tokenizer.pad_token_id,
            suppress_token_ids=suppressed_token_ids(processor), record_logprobs=True)
    new_tokens = sum(len(c.token_ids) for c in completions)
    require(len(completions) == len(samples) * args.group_size, "generate returned the wrong number of rows")
    require(all(len(c.logprobs) == len(c.token_ids) and all(math.isfinite(x) for x in c.logprobs)
                for c in completions), "behaviour log-probs missing or not finite")
    rows = [{"sample_id": samples[c.prompt_index].sample_id, "completion_ids": list(c.token_ids),
             "behaviour_logprobs": list(c.logprobs), "advantage": 1.0 if c.sample_index % 2 == 0 else -1.0,
             "prompt_tokens": int(enc["attention_mask"][c.prompt_index].sum())} for c in completions]
    result = {"seconds": clock.seconds, "sequences": len(completions), "new_tokens": new_tokens,
              "tokens_per_second": new_tokens / clock.seconds, "prompt_tokens_per_prompt": int(enc["input_ids"].shape[1]),
              "video_tokens_per_prompt": video_tokens, "image_tokens_per_prompt": image_tokens,
              "truncated": sum(c.truncated for c in completions), "peak_gpu_memory_bytes": clock.peak}
    return rows, result


def shared_prompt_consistency(trainer, rows, samples, cache, args, device) -> dict:
    """Log-probs of the first micro-batch's completions by the shared prompt pass (each distinct prompt once,
    the completions on its KV cache; what scoring and the update use) against the plain forward, in fp32.
    A transformers whose forward arguments differ from what care passes shows up here as a large difference."""
    import torch

    from care.algo.likelihood import token_log_probs
    from care.models.inputs import completion_target_mask, encode_prompt_completions, model_inputs
    from care.models.samples import shared_prompt_items

    by_id = {s.sample_id: s for s in samples}
    mb = rows[: args.micro_batch_size]
    items, rates = shared_prompt_items([by_id[r["sample_id"]] for r in mb], cache)
    batch = encode_prompt_completions(trainer.processor, items, [r["completion_ids"] for r in mb], fps=rates)
    require(batch["shared_prompts"] is not None, "the micro-batch repeats no prompt: no shared prompt pass to check")
    inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in model_inputs(batch).items()}
    target = completion_target_mask(batch).to(device)
    with Clock(device) as clock, torch.no_grad():
        shared = token_log_probs(trainer.policy, inputs, target, shared_prompts=batch["shared_prompts"]).logp
        plain = token_log_probs(trainer.policy, inputs, target).logp
    diff = float((shared - plain).abs().max())
    require(math.isfinite(diff) and diff <= SHARED_PROMPT_TOLERANCE,
            f"shared prompt pass and plain forward differ by {diff:g} in log-prob (fp32; at most "
            f"{SHARED_PROMPT_TOLERANCE:g} expected)")
    return {"rows": len(mb), "max_abs_logprob_difference": diff, "seconds": clock.seconds,
            "peak_gpu_memory_bytes": clock.peak}


def optim_config(args, parallelism: str):
    from care.train.config import OptimConfig

    return OptimConfig(learning_rate=args.lr, precision="bf16", micro_batch_size=args.micro_batch_size,
                       ema_every=1, ema_decay=EMA_DECAY, lr_scheduler="constant", warmup_steps=0, parallelism=parallelism)


def _throughput(rows, seconds: float) -> dict:
    completion = sum(len(r["completion_ids"]) for r in rows)
    sequence = completion + sum(r["prompt_tokens"] for r in rows)
    return {"seconds": seconds, "completion_tokens": completion, "sequence_tokens": sequence,
            "tokens_per_second": completion / seconds, "sequence_tokens_per_second": sequence / seconds}


def update(trainer, rows, samples, cache, args, device, names, *, iteration: int) -> dict:
    """One call of care.train.optimise.update_steps (one optimizer step, EMA every step), checked."""
    from care.train.optimise import update_steps

    before, ref_before = snapshot(trainer.policy, names), snapshot(trainer.reference, names)
    by_id = {s.sample_id: s for s in samples}
    with Clock(device) as clock:
        history = update_steps(trainer, rows=rows, samples=by_id, cache=cache, config=optim_config(args, "ddp"),
                               total_steps=10, temperature=1.0, max_new_tokens=args.max_new_tokens,
                               iteration=iteration)
    step = history[-1]
    checks = check_update(f"update {iteration + 1}", trainer, step, before, ref_before, decay=EMA_DECAY)
    return {**_throughput(rows, clock.seconds), "loss": step["loss"], "grad_norm": step["grad_norm"],
            "ema_updates": step["ema_updates"], "peak_gpu_memory_bytes": clock.peak, "checks": checks}


def init_one_rank_group(device, folder: Path) -> str:
    import torch
    import torch.distributed as dist

    backend = "nccl" if device.type == "cuda" else "gloo"
    # one rank on one machine: the library's own bootstrap needs no network interface but the loopback
    os.environ.setdefault("NCCL_SOCKET_IFNAME" if backend == "nccl" else "GLOO_SOCKET_IFNAME", "lo")
    kwargs = {}
    if device.type == "cuda":
        torch.cuda.set_device(device)
        kwargs["device_id"] = device
    dist.init_process_group(backend, init_method=f"file://{folder / 'rendezvous'}", rank=0, world_size=1, **kwargs)
    return backend


def fsdp2_step(trainer, rows, samples, cache, config, *, max_new_tokens: int, total_steps: int) -> dict:
    """One optimizer step through the FSDP2 branch of ``care.train.optimise.update_steps`` on the current
    process group, with its own functions: ``_shard`` (``care.train.sharded.shard_model`` of policy and
    reference, the update's ``CompletionLogProbs`` wrappers as FSDP roots), ``ensure_optimizer`` over the
    sharded parameters, ``_micro_step`` per micro-batch, ``_clip`` (global norm over the shards),
    ``step_if_finite`` and the EMA on the local shards. ``update_steps`` itself shards only with more than one
    rank (``num_processes > 1``), so on a 1-rank group this runs that branch's steps in its order."""
    import torch
    from accelerate import Accelerator

    from care.algo.ema import ReferenceUpdater
    from care.device import resolve_dtype
    from care.train import optimise
    from care.train.toolkit import step_if_finite
    from care.train.trainer import ensure_optimizer

    device = next(trainer.policy.parameters()).device
    compute_dtype = resolve_dtype(config.precision, device)
    accelerator = Accelerator(cpu=device.type == "cpu", mixed_precision="no")
    optimise._shard(trainer, device)
    ensure_optimizer(trainer, config, total_steps)
    trainer.policy.train()
    scorer, optimizer, reference, scheduler = trainer.scorer, trainer.optimizer, trainer.ref_scorer, trainer.scheduler
    updater = ReferenceUpdater(mode=config.ref_mode, decay=config.ema_decay, every=config.ema_every)
    n_global = len(rows)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    for mb in optimise._micro_batches(rows, config.micro_batch_size):
        loss, _, w = optimise._micro_step(scorer, reference, trainer.processor, accelerator, mb, samples, cache, config,
                                          temperature=1.0, max_new_tokens=max_new_tokens,
                                          weight_of=lambda n, _t: n / n_global, use_behaviour=False, world=1,
                                          compute_dtype=compute_dtype)
        loss_sum += loss.double() * w
    grad_norm = optimise._clip(scorer, config.max_grad_norm)
    loss_value = float(loss_sum)
    finite = step_if_finite(optimizer, scheduler, loss=loss_value, grad_norm=grad_norm)
    if finite:
        trainer.step += 1
        if updater.maybe_update(trainer.reference, trainer.policy, trainer.step):
            trainer.ema_updates += 1
    trainer.policy.eval()
    return {"loss": loss_value, "grad_norm": grad_norm, "skipped_nonfinite": 0.0 if finite else 1.0,
            "ema_updates": float(trainer.ema_updates)}


def fsdp2_update(trainer, rows, samples, cache, args, device, names, shape: Shape) -> dict:
    before, ref_before = snapshot(trainer.policy, names), snapshot(trainer.reference, names)
    by_id = {s.sample_id: s for s in samples}
    with Clock(device) as clock:
        step = fsdp2_step(trainer, rows, by_id, cache, optim_config(args, "fsdp2"),
                          max_new_tokens=args.max_new_tokens, total_steps=10)
    sharded = [n for n, p in trainer.policy.named_parameters() if not hasattr(p, "to_local")]
    require(not sharded, f"fsdp2: parameters not sharded (no DTensor): {sharded[:5]}")
    require(trainer.scorer is not None and type(trainer.scorer).__name__.startswith("FSDP"),
            f"fsdp2: the update's root is {type(trainer.scorer).__name__}, not an FSDP module")
    units = [type(m).__name__ for m in trainer.policy.modules() if type(m).__name__.startswith("FSDP")]
    layers, blocks = sum(u.endswith("DecoderLayer") for u in units), sum(u.endswith("VisionBlock") for u in units)
    require((layers, blocks) == (shape.num_layers, shape.vision_depth),
            f"fsdp2: {layers} decoder layers and {blocks} vision blocks are FSDP units, expected "
            f"{shape.num_layers} and {shape.vision_depth}")
    checks = check_update("fsdp2 update", trainer, step, before, ref_before, decay=EMA_DECAY)
    return {**_throughput(rows, clock.seconds), "loss": step["loss"], "grad_norm": step["grad_norm"],
            "ema_updates": step["ema_updates"], "peak_gpu_memory_bytes": clock.peak, "checks": checks,
            "fsdp_units": {"decoder_layers": layers, "vision_blocks": blocks, "all": len(units) + 1}}


# ---------------------------------------------------------------------------------------------------- main

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="3b", help="model shape (default 3b)")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                        help="auto = cuda when available, else cpu")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and exit; builds no model")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON results (default {DEFAULT_OUT})")
    parser.add_argument("--layers", type=int, help="decoder layers instead of the shape's own")
    parser.add_argument("--vision-depth", type=int, help="vision blocks instead of the shape's own")
    parser.add_argument("--prompts", type=int, default=2, help="distinct video prompts (default 2)")
    parser.add_argument("--group-size", type=int, help="completions per prompt (default: the shape's)")
    parser.add_argument("--micro-batch-size", type=int, help="rollouts per forward/backward (default: the shape's)")
    parser.add_argument("--frames", type=int, default=8, help="video frames per prompt (default 8)")
    parser.add_argument("--frame-size", type=int, help="frame and image side in pixels, a multiple of 28")
    parser.add_argument("--max-new-tokens", type=int, help="tokens generated per completion")
    parser.add_argument("--updates", type=int, default=2, help="update_steps calls (the first also warms up)")
    parser.add_argument("--lr", type=float, default=1e-6, help="AdamW learning rate (default 1e-6)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--wheel-requirements", action="store_true",
                        help="print name==version of the packages to carry to the device, and exit")
    args = parser.parse_args(argv)
    shape = SHAPES[args.shape]
    for name in ("group_size", "micro_batch_size", "frame_size", "max_new_tokens"):
        if getattr(args, name) is None:
            setattr(args, name, getattr(shape, name))
    if args.frame_size % 28:
        parser.error(f"--frame-size {args.frame_size} is not a multiple of 28 (patch 14 x merge 2)")
    if args.frames % 2:
        parser.error(f"--frames {args.frames} is odd; Qwen2.5-VL takes frames in pairs (temporal patch 2)")
    if args.updates < 1 or args.prompts < 1 or args.group_size < 2:
        parser.error("--updates and --prompts must be >= 1 and --group-size >= 2")
    return args


def resolve_device(choice: str):
    import torch

    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise CheckFailed("--device cuda, but torch sees no CUDA device")
    return torch.device("cuda", torch.cuda.current_device()) if choice == "cuda" else torch.device("cpu")


def plan(args, shape: Shape, config, counts: dict, batch: dict, device, device_name: str) -> list[str]:
    est = memory_estimate(counts["total"])
    budget = H200_GIB * 2**30
    fits = est["update_peak_without_activations"] <= USABLE * budget
    rollouts = args.prompts * args.group_size
    vc = config.vision_config
    lines = [
        f"GPU check plan: Qwen2.5-VL, shape {shape.name}, random weights, device {device_name}",
        f"  text: hidden {shape.hidden_size}, {shape.num_layers} layers, {shape.num_heads} heads / "
        f"{shape.num_kv_heads} KV heads (head_dim {shape.hidden_size // shape.num_heads}), intermediate "
        f"{shape.intermediate_size}, vocab {config.text_config.vocab_size}, tied embeddings "
        f"{shape.tie_word_embeddings}, rope_theta {shape.rope_theta:g}, mrope {config.text_config.rope_parameters['mrope_section']}",
        f"  vision: depth {vc.depth}, hidden {vc.hidden_size}, {vc.num_heads} heads, intermediate "
        f"{vc.intermediate_size}, out_hidden {vc.out_hidden_size}, full attention in blocks {list(vc.fullatt_block_indexes)}",
        f"  parameters: {counts['total']:,} ({counts['total'] / 1e9:.3g} B; {counts['per_decoder_layer']:,} per "
        f"decoder layer, vision {counts['vision']:,}), counted on the meta device",
        "  fp32 training state: " + ", ".join(f"{k} {size(est[k])}" for k in
                                              ("weights_fp32", "gradients_fp32", "adamw_moments_fp32",
                                               "ema_reference_fp32")),
        f"    resident {size(est['resident_training_state'])}; update peak ~{size(est['update_peak_without_activations'])}"
        f" with AdamW step temporaries ({size(est['adamw_step_temporaries_fp32'])}) and bf16 autocast weight "
        f"copies ({size(est['autocast_bf16_weight_copies'])}), activations on top",
        f"    fits one H200 ({H200_GIB} GiB, {USABLE:.0%} of it for this estimate): {'yes' if fits else 'NO'}" + (
            "" if fits else f" -- pass --layers {layers_that_fit(counts, shape.num_layers, USABLE * budget)} or fewer"),
        f"  batch: {args.prompts} video prompts x G={args.group_size} = {rollouts} rollouts; {args.frames} frames of "
        f"{args.frame_size}x{args.frame_size} + one image each -> {batch['video_tokens']} video + "
        f"{batch['image_tokens']} image tokens, {batch['prompt_tokens']} prompt tokens (padded); "
        f"{args.max_new_tokens} new tokens per completion; micro-batches of {args.micro_batch_size}",
        "  steps:",
        "    1. build the model on the device (fp32 master weights) and an fp32 EMA reference copy",
        f"    2. generate: care.models.generation.sample_completions (HF generate, bf16 autocast, behaviour "
        f"log-probs recorded), {rollouts} x {args.max_new_tokens} tokens -> tokens/s",
        "    3. the update's shared prompt pass against the plain forward on one micro-batch (fp32 log-probs equal)",
        f"    4. update x{args.updates}: care.train.optimise.update_steps on the rollouts (advantages +1/-1, lr "
        f"{args.lr:g}, bf16 autocast, EMA every step); check fp32 weights / reference / AdamW moments, finite loss "
        f"and gradient norm, weights and reference moved -> tokens/s",
        f"    5. FSDP2 update: 1-rank {'NCCL' if device.type == 'cuda' else 'gloo'} process group, "
        "care's _shard (care.train.sharded.shard_model), one step through the FSDP2 branch; same checks, "
        "parameters are DTensors -> tokens/s",
        f"    6. peak GPU memory (torch.cuda.max_memory_allocated) per step; JSON to {args.out}",
    ]
    return lines


def prompt_batch(processor, samples, cache) -> dict:
    """Exact token counts of the prompt batch (the real processor on the synthetic frames)."""
    from care.models.inputs import encode_prompts
    from care.models.samples import prompt_items

    items, rates = prompt_items(samples, cache)
    enc = encode_prompts(processor, items, fps=rates)
    tok = processor.tokenizer
    ids = enc["input_ids"]
    return {"prompt_tokens": int(ids.shape[1]),
            "video_tokens": int((ids == tok.convert_tokens_to_ids("<|video_pad|>")).sum()) // len(samples),
            "image_tokens": int((ids == tok.convert_tokens_to_ids("<|image_pad|>")).sum()) // len(samples)}


def versions() -> dict:
    import accelerate
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "accelerate": accelerate.__version__, "cuda": torch.version.cuda}


def write_json(path: Path, payload: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def run(args, result: dict) -> None:
    """The check proper; fills ``result`` as it goes (so a failure still reports what ran)."""
    placeholders = stand_in_for_missing()
    if placeholders:
        log(f"not installed here, a placeholder stands in (never used by the check): {', '.join(placeholders)}")
    import torch
    import torch.distributed as dist

    from care.models.tiny import build_processor
    from care.train.trainer import Trainer

    started = time.perf_counter()
    result.update(versions=versions(), placeholders=placeholders)
    shape = shape_for(args)
    device = resolve_device(args.device)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    tokenizer = build_tokenizer()
    processor = build_processor(tokenizer, video_max_pixels=args.frame_size ** 2, image_max_pixels=args.frame_size ** 2)
    config = build_config(shape, tokenizer)
    counts = count_parameters(config)
    samples = synthetic_samples(args.prompts)
    cache = SyntheticFrames(frames=args.frames, size=args.frame_size, seed=args.seed)
    batch = prompt_batch(processor, samples, cache)
    estimate = memory_estimate(counts["total"])
    result.update(shape=shape.name, device=str(device), device_name=device_name, parameters=counts,
                  memory_estimate_bytes=estimate,
                  layout={"num_layers": shape.num_layers, "hidden_size": shape.hidden_size,
                          "vision_depth": shape.vision_depth, "vocab_size": config.text_config.vocab_size},
                  batch={**batch, "prompts": args.prompts, "group_size": args.group_size, "frames": args.frames,
                         "frame_size": args.frame_size, "max_new_tokens": args.max_new_tokens,
                         "micro_batch_size": args.micro_batch_size, "rollouts": args.prompts * args.group_size})
    for line in plan(args, shape, config, counts, batch, device, device_name):
        log(line)
    if args.dry_run:
        return
    if device.type == "cpu" and shape.name != "tiny" and args.layers is None:
        raise CheckFailed(f"shape {shape.name} on the CPU would take hours; use --shape tiny, a GPU, --dry-run, "
                          "or a few --layers")
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        if estimate["update_peak_without_activations"] > USABLE * total:
            raise CheckFailed(
                f"the update needs ~{gib(estimate['update_peak_without_activations']):.0f} GiB before activations, "
                f"the GPU has {gib(total):.0f} GiB: pass --layers "
                f"{layers_that_fit(counts, shape.num_layers, USABLE * total)} or fewer")
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 stays fp32 outside autocast

    log(f"[1/5] building the model on {device} ...")
    with Clock(device) as clock:
        policy = build_model(config, tokenizer, device, seed=args.seed)
        reference = copy.deepcopy(policy)
    trainer = Trainer(policy=policy, reference=reference, processor=processor, state_id="gpu-check", iteration=0)
    result["build"] = {"seconds": clock.seconds, "peak_gpu_memory_bytes": clock.peak}
    log(f"      {clock.seconds:.1f} s")
    names = watched_names(policy, shape.num_layers)

    log(f"[2/5] generate: {args.prompts} video prompts x {args.group_size}, {args.max_new_tokens} new tokens ...")
    rows, result["generation"] = generate(trainer, samples, cache, args, device)
    g = result["generation"]
    log(f"      {g['new_tokens']} tokens in {g['seconds']:.2f} s: {g['tokens_per_second']:.1f} tokens/s "
        f"({g['prompt_tokens_per_prompt']} prompt tokens per prompt)")

    log("[3/5] shared prompt pass against the plain forward (fp32 log-probs) ...")
    c = result["shared_prompt_pass"] = shared_prompt_consistency(trainer, rows, samples, cache, args, device)
    log(f"      {c['rows']} rollouts, max |difference| {c['max_abs_logprob_difference']:.2e}")

    result["updates"] = []
    for k in range(args.updates):
        log(f"[4/5] update {k + 1}/{args.updates}: care.train.optimise.update_steps, bf16 autocast, fp32 masters ...")
        u = update(trainer, rows, samples, cache, args, device, names, iteration=k)
        result["updates"].append(u)
        log(f"      loss {u['loss']:.4g} (on-policy step: -mean advantage), grad norm {u['grad_norm']:.4g}, {u['seconds']:.2f} s: "
            f"{u['tokens_per_second']:.1f} completion tokens/s ({u['sequence_tokens_per_second']:.1f} with prompts); "
            f"fp32 kept, {u['checks']['policy_moved']['changed_fraction']:.1%} of watched weights moved")
    result["update"] = result["updates"][-1]

    # the FSDP2 trainer shards the same modules; the first trainer's optimizer and schedule are dropped first
    # (AdamW's moments are 8 bytes per parameter: kept, they would not leave room for the FSDP2 step)
    optimizer_ref = weakref.ref(getattr(trainer.optimizer, "optimizer", trainer.optimizer))
    trainer.optimizer = trainer.scheduler = trainer.signature = None
    del trainer
    gc.collect()
    require(optimizer_ref() is None, "the first update's optimizer is still referenced after it was dropped")
    if device.type == "cuda":
        torch.cuda.empty_cache()
        result["gpu_memory_before_fsdp2_bytes"] = torch.cuda.memory_allocated(device)
    fsdp_trainer = Trainer(policy=policy, reference=reference, processor=processor, state_id="gpu-check-fsdp2",
                           iteration=args.updates)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        backend = init_one_rank_group(device, Path(tmp))
        try:
            log(f"[5/5] FSDP2 update on a 1-rank {backend} group ...")
            f = fsdp2_update(fsdp_trainer, rows, samples, cache, args, device, names, shape)
            result["fsdp2_update"] = {**f, "backend": backend}
            log(f"      loss {f['loss']:.4g}, grad norm {f['grad_norm']:.4g}, {f['seconds']:.2f} s: "
                f"{f['tokens_per_second']:.1f} completion tokens/s; parameters sharded (DTensor), fp32 kept, "
                f"{f['checks']['policy_moved']['changed_fraction']:.1%} of watched weights moved")
        finally:
            dist.destroy_process_group()
    peaks = [p for p in (result["build"]["peak_gpu_memory_bytes"], result["generation"]["peak_gpu_memory_bytes"],
                         result["shared_prompt_pass"]["peak_gpu_memory_bytes"],
                         *(u["peak_gpu_memory_bytes"] for u in result["updates"]),
                         result["fsdp2_update"]["peak_gpu_memory_bytes"]) if p is not None]
    result["peak_gpu_memory_bytes"] = max(peaks) if peaks else None
    result["seconds_total"] = time.perf_counter() - started
    log("GPU check passed: "
        f"generation {g['tokens_per_second']:.1f} tokens/s, update {result['update']['tokens_per_second']:.1f} "
        f"completion tokens/s, FSDP2 update {result['fsdp2_update']['tokens_per_second']:.1f} completion tokens/s, "
        + (f"peak GPU memory {gib(result['peak_gpu_memory_bytes']):.1f} GiB"
           if result["peak_gpu_memory_bytes"] is not None else "no GPU memory figures (CPU)")
        + f", {result['seconds_total']:.1f} s")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.wheel_requirements:
        print("\n".join(wheel_requirements()))
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    result: dict = {"ok": False, "dry_run": args.dry_run, "argv": sys.argv[1:] if argv is None else list(argv)}
    try:
        run(args, result)
    except BaseException:
        if not args.dry_run:
            result["error"] = traceback.format_exc()
            write_json(args.out, result)
            print(f"GPU check FAILED; partial results in {args.out}", file=sys.stderr, flush=True)
        raise
    if not args.dry_run:
        result["ok"] = True
        write_json(args.out, result)
        log(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
