"""Training states kept resident across the RL stages of one process, keyed by state id.

The stages are functions of a ``PolicyState`` (so each can run, fail and re-run alone). When they run one after
another in the same process (the in-process flow, the benchmarks), the optimisation stage ends holding exactly
the state it has just produced, so it hands the ``Trainer`` over here and the next iteration's rollout and
scoring stages take it instead of rebuilding it; between checkpoints this cache is where the state lives, and
``care.train.replay`` rebuilds it from the newest checkpoint and the logged shards when it is not here.

Safety: the key is the state id (``care.train.state``: a checkpoint's content id, chained over the sha256 of
each logged shard and the update settings) plus the device, so a held trainer is that state bit for bit.
Read-only users (rollout, scoring) ``get`` a shared trainer in eval mode and must not change it; the
optimisation stage ``take``\\s it out (it trains in place) and ``put``\\s the result back under the new id. At
most ``CAPACITY`` states are held (oldest evicted). ``CARE_WARM_MODELS=0`` turns it off (every stage then
rebuilds its state: correct, and slow between checkpoints).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from care.train.trainer import Trainer

_LOCK = threading.Lock()
_CACHE: OrderedDict[tuple[str, str], Trainer] = OrderedDict()
CAPACITY = 2  # states (each: policy, reference, processor, optimizer and schedule)


def enabled() -> bool:
    return os.environ.get("CARE_WARM_MODELS", "1") != "0"


def _key(state_id: str, device: torch.device) -> tuple[str, str]:
    return state_id, str(device)


def get(state_id: str, device: torch.device) -> Trainer | None:
    """The held trainer of this state (shared, read-only), or None."""
    if not enabled():
        return None
    with _LOCK:
        return _CACHE.get(_key(state_id, device))


def take(state_id: str, device: torch.device) -> Trainer | None:
    """The held trainer of this state, removed from the cache (the caller trains it in place), or None."""
    if not enabled():
        return None
    with _LOCK:
        return _CACHE.pop(_key(state_id, device), None)


def put(trainer: Trainer, device: torch.device) -> None:
    """Hold ``trainer`` under its state id, in eval mode (the newest last; the oldest beyond CAPACITY dropped)."""
    if not enabled():
        return
    trainer.policy.eval()
    trainer.reference.eval().requires_grad_(False)
    with _LOCK:
        key = _key(trainer.state_id, device)
        _CACHE.pop(key, None)
        _CACHE[key] = trainer
        while len(_CACHE) > CAPACITY:
            _CACHE.popitem(last=False)


def held() -> list[str]:
    """State ids held now (oldest first)."""
    with _LOCK:
        return [k[0] for k in _CACHE]


def clear() -> None:
    with _LOCK:
        _CACHE.clear()
