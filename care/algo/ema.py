"""The reference model of GRPO-CARE: a slowly evolving EMA of the policy, or frozen (GRPO_CARE.md section 5).

``ref <- decay * ref + (1 - decay) * policy`` every ``every`` optimizer steps (decay 0.995, every 10 in the
paper). The reference is used only for the consistency likelihood; there is no KL term.

Distributed settings, and why the update is never lost:

* plain modules: parameters updated in place;
* DDP: the wrapper is unwrapped (``.module``); every rank holds the full, identical parameters and applies the
  same update, so the references stay identical without communication;
* FSDP2 (``fully_shard``): parameters are DTensors sharded the same way in policy and reference (wrap both
  identically); each rank updates its own local shard in place. Nothing is gathered, so nothing is discarded
  (the reference code edited ZeRO-3-gathered copies that were thrown away: its EMA never moved).

>>> ref, pol = torch.nn.Linear(1, 1, bias=False), torch.nn.Linear(1, 1, bias=False)
>>> _ = ref.weight.data.fill_(0.0), pol.weight.data.fill_(1.0)
>>> ema_update(ref, pol, decay=0.9); round(ref.weight.item(), 6)
0.1
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

REF_MODES = ("ema", "frozen")
# Prefixes that wrappers (FSDP1, activation checkpointing, torch.compile) add to parameter names.
_WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.", "module.")


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside DDP / DataParallel-style wrappers (those exposing ``.module``)."""
    while isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
        model = model.module
    return model


def _canonical(name: str) -> str:
    for prefix in _WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def _local(t: Tensor) -> Tensor:
    """The rank-local storage of a (possibly DTensor) parameter, so in-place edits hit the real shard."""
    to_local = getattr(t, "to_local", None)
    return to_local() if callable(to_local) else t


def paired_parameters(reference: nn.Module, policy: nn.Module) -> list[tuple[str, Tensor, Tensor]]:
    """``(name, ref_param, policy_param)`` for every parameter, matched by name; raises on any mismatch."""
    ref = {_canonical(n): p for n, p in unwrap_model(reference).named_parameters()}
    pol = {_canonical(n): p for n, p in unwrap_model(policy).named_parameters()}
    if ref.keys() != pol.keys():
        missing = sorted(ref.keys() ^ pol.keys())[:5]
        raise ValueError(f"reference and policy have different parameters (e.g. {missing}); build them alike")
    pairs = []
    for name, r in ref.items():
        p = pol[name]
        if r.shape != p.shape or _local(r).shape != _local(p).shape:
            raise ValueError(
                f"parameter {name}: reference {tuple(_local(r).shape)} vs policy {tuple(_local(p).shape)} "
                "(local shards); shard the reference exactly like the policy"
            )
        pairs.append((name, r, p))
    return pairs


@torch.no_grad()
def ema_update(reference: nn.Module, policy: nn.Module, decay: float) -> None:
    """In place: ``ref <- decay * ref + (1 - decay) * policy`` for every parameter (rank-local shards).

    Arithmetic runs in float32 at least, so a bf16 reference does not lose the small ``(1 - decay)`` step
    to rounding before it is stored.
    """
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
    for _, r, p in paired_parameters(reference, policy):
        r_local, p_local = _local(r), _local(p)
        if r_local.dtype in (torch.float32, torch.float64):
            r_local.lerp_(p_local.to(r_local.dtype), 1.0 - decay)
        else:
            r_local.copy_(r_local.float().lerp_(p_local.float(), 1.0 - decay))


@dataclass
class ReferenceUpdater:
    """When to move the reference: ``mode='ema'`` every ``every`` optimizer steps, or ``'frozen'`` never.

    >>> u = ReferenceUpdater(mode="ema", decay=0.995, every=10)
    >>> [s for s in range(1, 31) if u.due(s)]
    [10, 20, 30]
    """

    mode: str = "ema"
    decay: float = 0.995
    every: int = 10

    def __post_init__(self) -> None:
        if self.mode not in REF_MODES:
            raise ValueError(f"unknown reference mode {self.mode!r}; choose one of {REF_MODES}")
        if self.every < 1:
            raise ValueError(f"ema every must be >= 1 optimizer step, got {self.every}")

    def due(self, optimizer_step: int) -> bool:
        """True when an update is due after optimizer step ``optimizer_step`` (counted from 1)."""
        return self.mode == "ema" and optimizer_step > 0 and optimizer_step % self.every == 0

    def maybe_update(self, reference: nn.Module, policy: nn.Module, optimizer_step: int) -> bool:
        """Apply the EMA update if due; returns whether it ran."""
        if not self.due(optimizer_step):
            return False
        ema_update(reference, policy, self.decay)
        return True
