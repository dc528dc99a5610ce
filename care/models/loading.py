"""Load a vision-language model and its processor through ``from_pretrained``, local folder or hub id.

The tiny offline model and ``Qwen/Qwen2.5-VL-7B-Instruct`` take the same path: only the ``path`` differs.
A local folder is checked first so a missing file gives one clear line instead of a hub lookup traceback.
Also here: the token ids generation must never sample (vision placeholders and the other special tokens).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor
from transformers.utils import logging as hf_logging

from care.errors import CareError

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
DCP_POINTER = "dcp.json"  # in a model folder whose weights are shards of a torch.distributed.checkpoint
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json")
VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>", "<|vision_pad|>")


class ModelLoadError(CareError):
    """A model folder is missing, incomplete, or cannot be loaded; the message names the folder and file."""


def _local_folder(path: str | Path) -> Path | None:
    """The folder when ``path`` names a local one; None for a hub id like ``Qwen/Qwen2.5-VL-7B-Instruct``."""
    p = Path(path).expanduser()
    if p.is_dir():
        return p
    text = str(path)
    looks_like_hub_id = text.count("/") == 1 and not text.startswith((".", "/", "~")) and not p.suffix
    if looks_like_hub_id:
        return None
    raise ModelLoadError(f"model folder {p} does not exist; make one with `care models tiny {p}` or give a hub id")


def _require(folder: Path, names: tuple[str, ...], what: str) -> None:
    if not any((folder / n).is_file() for n in names):
        raise ModelLoadError(f"{folder}: no {what} file (expected {' or '.join(names)}); "
                             "the folder must come from save_pretrained")


def _dtype(dtype: str | torch.dtype | None) -> torch.dtype | str | None:
    if dtype is None or isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    try:
        value = getattr(torch, dtype)
    except AttributeError:
        value = None
    if not isinstance(value, torch.dtype):
        raise ModelLoadError(f"unknown dtype {dtype!r}; use float32, bfloat16, float16 or auto")
    return value


@contextlib.contextmanager
def hf_progress_bars(enabled: bool) -> Iterator[None]:
    """Turn transformers' own progress bars on or off for a block, then restore the previous setting.

    Its "Loading weights" and "Writing model shards" bars help with a multi-shard 7B model; for a one-file model
    loaded or checkpointed every RL iteration they are hundreds of lines of log noise.
    """
    before = hf_logging.is_progress_bar_enabled()
    (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()
    try:
        yield
    finally:
        (hf_logging.enable_progress_bar if before else hf_logging.disable_progress_bar)()


def enable_activation_checkpointing(model) -> None:
    """Recompute activations in the backward pass instead of keeping them (transformers 5 renamed
    ``gradient_checkpointing_enable`` to this and deprecated the old name)."""
    (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()


def load_model(path: str | Path, *, dtype: str | torch.dtype | None = None, device: str | torch.device = "cpu"):
    """``AutoModelForImageTextToText.from_pretrained(path)`` in eval mode on ``device``.

    ``dtype``: None (or "auto") keeps the checkpoint's own dtype (transformers 5 reads it from the config: a bf16
    checkpoint loads as bf16); pass torch.float32 for trainable master weights, torch.bfloat16 for inference.
    """
    folder = _local_folder(path)
    if folder is not None and (folder / DCP_POINTER).is_file():
        return _load_from_dcp(folder, dtype=dtype, device=device)
    if folder is not None:
        _require(folder, ("config.json",), "config")
        _require(folder, WEIGHT_FILES, "weights")
    # a bar only where loading takes a while: a hub id or a sharded folder
    single_file = folder is not None and (folder / WEIGHT_FILES[0]).is_file()
    try:
        with hf_progress_bars(not single_file and hf_logging.is_progress_bar_enabled()):
            model = AutoModelForImageTextToText.from_pretrained(str(path), dtype=_dtype(dtype))
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"cannot load model from {path}: {first}") from exc
    return model.to(device).eval()


def load_processor(path: str | Path):
    """``AutoProcessor.from_pretrained(path)`` (tokenizer + image and video processors)."""
    folder = _local_folder(path)
    if folder is not None:
        _require(folder, TOKENIZER_FILES, "tokenizer")
        _require(folder, ("processor_config.json", "preprocessor_config.json"), "processor config")
    try:
        return AutoProcessor.from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"cannot load processor from {path}: {first}") from exc


def _tokenizer(processor_or_tokenizer):
    return getattr(processor_or_tokenizer, "tokenizer", processor_or_tokenizer)


def vision_token_ids(processor_or_tokenizer) -> list[int]:
    """Ids of the vision placeholder tokens the vocabulary has (start/end, image/video/vision pads), sorted."""
    tok = _tokenizer(processor_or_tokenizer)
    vocab = tok.get_vocab()
    return sorted(vocab[t] for t in VISION_TOKENS if t in vocab)


REFERENCE_STOP_TOKENS = ("<|im_end|>", "<|endoftext|>")
"""What ends a completion in the reference code: its ``generate`` takes the model's generation_config EOS
list, which for Qwen2.5-VL-7B-Instruct is ``[151645, 151643]`` = ``<|im_end|>``, ``<|endoftext|>``."""


def stop_token_ids(processor_or_tokenizer, eos: str = "care") -> list[int]:
    """Token ids that end a completion (kept as its last token): ``care`` = the tokenizer's EOS
    (``<|im_end|>``) only; ``reference`` = ``REFERENCE_STOP_TOKENS``, the EOS first."""
    tok = _tokenizer(processor_or_tokenizer)
    if eos == "care":
        return [tok.eos_token_id]
    if eos != "reference":
        raise ValueError(f"eos={eos!r}: expected 'care' or 'reference'")
    vocab = tok.get_vocab()
    missing = [t for t in REFERENCE_STOP_TOKENS if t not in vocab]
    if missing:
        raise ModelLoadError(f"eos 'reference' needs the stop tokens {list(REFERENCE_STOP_TOKENS)}; the "
                             f"tokenizer lacks {missing}")
    ids = [vocab[t] for t in REFERENCE_STOP_TOKENS]
    return list(dict.fromkeys([tok.eos_token_id, *ids]))


def suppressed_token_ids(processor_or_tokenizer, *, stop: Sequence[int] | None = None) -> list[int]:
    """Ids generation must never sample: the vision placeholders and every special token except the stop
    tokens (``stop``; default the EOS).

    A sampled placeholder would be read as an image/video slot when the completion is fed back (scoring,
    policy update) and fail there; other specials (``<|im_start|>``, pad) are never a valid completion token.
    Pass as ``generate(..., suppress_tokens=...)``.
    """
    tok = _tokenizer(processor_or_tokenizer)
    keep = {tok.eos_token_id} if stop is None else set(stop)
    special = {i for i, added in tok.added_tokens_decoder.items() if added.special}
    return sorted((special | set(vision_token_ids(tok))) - keep)


def _load_from_dcp(folder: Path, *, dtype, device):
    """A model folder of a sharded checkpoint: the architecture from its config, the weights read (and
    resharded to this process) from the ``torch.distributed.checkpoint`` its ``dcp.json`` names."""
    import json

    import torch.distributed.checkpoint as dcp
    from transformers import AutoConfig

    pointer = json.loads((folder / DCP_POINTER).read_text())
    state_dir = (folder / pointer["state"]).resolve()
    if not (state_dir / ".metadata").is_file():
        raise ModelLoadError(f"{folder}: {DCP_POINTER} names {state_dir}, which holds no checkpoint (.metadata)")
    config = AutoConfig.from_pretrained(folder)
    # built on the CPU and then overwritten: simple, at the cost of one random init (meta-device construction
    # would skip it but must rebuild the non-persistent rotary buffers by hand)
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        dcp.load({pointer["key"]: model.state_dict()}, checkpoint_id=str(state_dir))
    resolved = _dtype(dtype)
    if isinstance(resolved, torch.dtype):
        model = model.to(dtype=resolved)
    return model.to(device).eval()
