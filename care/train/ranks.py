"""What a stage does differently on one rank of the gang (``care.train.gang``): gather its rows to rank 0, and
run forward-only work (sampling, behaviour log-probs, the reference forward) on an unsharded model.

Under DDP every rank holds the whole fp32 policy and reference, and those modules are used as they are. Under
FSDP2 a rank holds 1/N of each, and every forward of a sharded module is a collective: ranks that sample
different lengths would call different numbers of forwards and deadlock. So forward-only stages gather a full
copy first (``forward_model``: one all-gather of the module's state per stage, the weight sync every RL
system with sharded training does before rollouts) and free it when the stage ends. Memory at the real size:
Qwen2.5-VL-7B's 8.3 B parameters in fp32 are 33 GB per GPU for the stage's duration, on top of the 1/8 shard
of policy, reference and AdamW moments (16 B/param / 8 = 17 GB); docs/scaling.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from care.train.trainer import Trainer


def gather_to_first(value: Any, *, rank: int, world: int) -> list[Any] | None:
    """Collective: every rank's ``value`` on rank 0 (in rank order); None on the other ranks."""
    import torch.distributed as dist

    box: list[Any] | None = [None] * world if rank == 0 else None
    dist.gather_object(value, box, dst=0)
    return box


def _is_sharded(module: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule) or any(isinstance(m, FSDPModule) for m in module.modules())


def _unsharded_class(module: nn.Module) -> type[nn.Module]:
    """The Hugging Face class under FSDP2's dynamic ``FSDP<Class>`` subclass."""
    from torch.distributed.fsdp import FSDPModule

    return next(c for c in type(module).__mro__ if issubclass(c, nn.Module) and not issubclass(c, FSDPModule)
                and c.__name__ != "Module" and hasattr(c, "_from_config"))


def full_copy(module: nn.Module) -> nn.Module:
    """Collective: an unsharded fp32 copy of an FSDP2-sharded Hugging Face model, on its device, in eval mode."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True))
    with torch.device("meta"):
        copy = _unsharded_class(module)._from_config(module.config, torch_dtype=torch.float32)
    copy.load_state_dict(state, assign=True)
    # non-persistent buffers (rotary inv_freq) are in no state dict; FSDP2 leaves buffers whole on every rank
    held = dict(module.named_buffers())
    for name, buffer in list(copy.named_buffers()):
        if buffer.is_meta:
            owner, _, leaf = name.rpartition(".")
            copy.get_submodule(owner)._buffers[leaf] = held[name].detach().clone()
    copy.tie_weights()
    return copy.eval().requires_grad_(False)


def forward_model(trainer: Trainer, which: str) -> nn.Module:
    """``trainer.policy`` or ``trainer.reference`` as a module a rank can run forwards on alone: itself, or
    (FSDP2-sharded) a full copy gathered from every rank (a collective: every rank calls it)."""
    module = trainer.policy if which == "policy" else trainer.reference
    return full_copy(module) if _is_sharded(module) else module
