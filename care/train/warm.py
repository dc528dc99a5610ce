"""Models kept warm across the RL stages of one process, keyed by checkpoint content.

The stages are functions of checkpoint paths (so each can run, fail and re-run alone), which made every stage
reload the policy / reference / processor it needs: four model loads and three processor loads per RL
iteration. When the stages run one after another in the same process (the in-process flow, the benchmarks),
the optimisation stage ends holding exactly the weights it has just written, so it hands them over here and the
next iteration's rollout and scoring stages take them instead of reading them back.

Safety: the key is the checkpoint's content id (sha256 of its manifest, which lists every file's sha256) plus
device and dtype, so a cached model is the checkpoint's weights bit for bit. Read-only users (rollout,
scoring) ``get`` a shared model in eval mode and must not change it; the optimisation stage ``take``\\s its
models out of the cache (it trains them in place) and ``put``\\s the results back under the new checkpoint.
At most ``capacity`` checkpoints are held (oldest evicted). ``CARE_WARM_MODELS=0`` turns it off.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from care.models.loading import load_processor
from care.train.policy_io import checkpoint_id, default_device, load_policy, load_reference, policy_path

_LOCK = threading.Lock()
_CACHE: OrderedDict[tuple, Any] = OrderedDict()
CAPACITY = 2  # checkpoints (each: policy, processor, reference, optimizer and scheduler)


def enabled() -> bool:
    return os.environ.get("CARE_WARM_MODELS", "1") != "0"


def _key(checkpoint: str | Path, role: str, device: torch.device | None, dtype: torch.dtype | None) -> tuple | None:
    try:
        ident = checkpoint_id(checkpoint)
    except OSError:  # no manifest: not a complete checkpoint, never cached
        return None
    return ident, role, str(device or default_device()), str(dtype)


def _evict() -> None:
    idents = list(dict.fromkeys(k[0] for k in _CACHE))
    for old in idents[: max(len(idents) - CAPACITY, 0)]:
        for k in [k for k in _CACHE if k[0] == old]:
            del _CACHE[k]


def _get(key: tuple | None, load: Callable[[], Any], *, take: bool) -> Any:
    if key is None or not enabled():
        return load()
    with _LOCK:
        if key in _CACHE:
            return _CACHE.pop(key) if take else _CACHE[key]
    value = load()
    if not take:
        with _LOCK:
            _CACHE[key] = value
            _evict()
    return value


def policy(checkpoint: str | Path, *, device: torch.device | None = None, dtype: torch.dtype | None = None,
           take: bool = False):
    """(model, processor) of the checkpoint's policy, as ``load_policy``; shared unless ``take``."""
    key = _key(checkpoint, "policy", device, dtype)
    return _get(key, lambda: load_policy(checkpoint, device=device, dtype=dtype), take=take)


def reference(checkpoint: str | Path, *, device: torch.device | None = None, dtype: torch.dtype | None = None,
              take: bool = False):
    """The checkpoint's reference model, as ``load_reference``; shared unless ``take``."""
    key = _key(checkpoint, "reference", device, dtype)
    return _get(key, lambda: load_reference(checkpoint, device=device, dtype=dtype), take=take)


def processor(checkpoint: str | Path):
    """The checkpoint's processor (shared; processors are not changed by any stage)."""
    key = _key(checkpoint, "policy", None, None)
    if key is not None and enabled():
        with _LOCK:
            held = [v for k, v in _CACHE.items() if k[0] == key[0] and k[1] == "policy"]
        if held:
            return held[0][1]
    return _get(_key(checkpoint, "processor", None, None),
                lambda: load_processor(policy_path(checkpoint)), take=False)


def put(checkpoint: str | Path, *, policy_and_processor=None, reference_model=None, trainer=None,
        device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
    """Hand over models that hold exactly the weights just written to ``checkpoint`` (eval mode).

    ``trainer``: (optimizer, scheduler, signature) whose state was just written to ``checkpoint`` too, bound to
    the policy handed over with it; ``take_trainer`` gives it back only to a caller holding that same policy.
    """
    if not enabled():
        return
    with _LOCK:
        if policy_and_processor is not None and (k := _key(checkpoint, "policy", device, dtype)):
            policy_and_processor[0].eval()
            _CACHE[k] = policy_and_processor
        if reference_model is not None and (k := _key(checkpoint, "reference", device, dtype)):
            reference_model.eval().requires_grad_(False)
            _CACHE[k] = reference_model
        if trainer is not None and (k := _key(checkpoint, "trainer", device, dtype)):
            _CACHE[k] = trainer
        _evict()


def take_trainer(checkpoint: str | Path, policy: torch.nn.Module, signature: Any, *,
                 device: torch.device | None = None, dtype: torch.dtype | None = None):
    """(optimizer, scheduler) handed over under ``checkpoint`` for exactly these ``policy`` parameter objects and
    ``signature`` (the optimiser settings), taken out of the cache; None when there is none (then restore the
    state from the checkpoint files)."""
    key = _key(checkpoint, "trainer", device, dtype)
    if key is None or not enabled():
        return None
    with _LOCK:
        held = _CACHE.pop(key, None)
    if held is None:
        return None
    optimizer, scheduler, held_signature = held
    bound = [id(p) for group in optimizer.param_groups for p in group["params"]]
    if held_signature != signature or bound != [id(p) for p in policy.parameters() if p.requires_grad]:
        return None
    return optimizer, scheduler


def clear() -> None:
    with _LOCK:
        _CACHE.clear()
