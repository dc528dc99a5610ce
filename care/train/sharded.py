"""FSDP2 training state: sharding a Trainer over the ranks, and checkpoints every rank writes its shard of.

With ``optim.parallelism: fsdp2`` and ``num_processes > 1`` each rank holds 1/N of the fp32 policy, the fp32
EMA reference and the AdamW moments (``torch.distributed.fsdp.fully_shard`` over a 1-D device mesh: gloo on
CPU, NCCL on GPUs). Decoder layers and vision blocks are their own FSDP units; the root unit is the update's
``CompletionLogProbs`` wrapper rather than the Hugging Face model, because the update calls the decoder body
and the LM head separately (LM head at completion positions only, the shared prompt pass): the root's
parameters (embeddings, tied LM head, final norm, vision merger) are gathered in its forward, which wraps the
whole computation, and their gradients are reduce-scattered after its backward. The reference is wrapped and
sharded the same way, so the EMA updates each rank's own shards.

Checkpoints (``save_sharded``): every rank writes its shards with ``torch.distributed.checkpoint`` into
``state/`` (policy, reference, optimizer); nothing is gathered to rank 0. Rank 0 adds the small files
(configs, processor, scheduler, RNG, state.json), a ``dcp.json`` pointer in ``policy/`` and ``reference/`` that
``care.models.loading.load_model`` follows, the manifest, and renames the folder into place once every rank
has written. Such a checkpoint loads into one process (DCP reshards on load) and into any number of ranks.
"""

from __future__ import annotations

import json
import shutil
import uuid
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

from care.models.loading import DCP_POINTER, hf_progress_bars
from care.train.checkpoint import (
    capture_scheduler,
    manifest_entries,
    publish,
    remove_stale_temps,
    sha256_file,
    write_manifest,
    write_rng_and_state,
)

STATE_DIR = "state"


def is_sharded_checkpoint(folder: str | Path) -> bool:
    return (Path(folder) / STATE_DIR / ".metadata").is_file()


def shard_model(model: nn.Module, root: nn.Module, mesh) -> None:
    """FSDP2 units: each decoder layer and vision block, then ``root`` (a wrapper whose forward runs the whole
    computation) for everything else."""
    from torch.distributed.fsdp import fully_shard

    for module in model.modules():
        if type(module).__name__.endswith(("DecoderLayer", "VisionBlock")):
            fully_shard(module, mesh=mesh)
    fully_shard(root, mesh=mesh)


def device_mesh(device: torch.device):
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device.type, (dist.get_world_size(),))


def _optimizer_template(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's state dict keyed by parameter names, with its state tensors allocated (AdamW creates them
    lazily on the first step; DCP needs them to load into)."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.requires_grad and not optimizer.state.get(p):
                optimizer.state[p] = {"step": torch.zeros((), dtype=torch.float32),
                                      "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
    return get_optimizer_state_dict(model, optimizer)


def load_sharded_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer, checkpoint: str | Path) -> None:
    """AdamW state of a sharded checkpoint into ``optimizer`` (sharded or not: DCP reshards)."""
    template = {"optimizer": _optimizer_template(model, optimizer)}
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": in one, it is
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        dcp.load(template, checkpoint_id=str(Path(checkpoint) / STATE_DIR))
    set_optimizer_state_dict(model, optimizer, template["optimizer"])


def load_full_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    """AdamW state of a one-process checkpoint (tensors keyed ``<param index>.<name>``, the parameters numbered
    group after group, as ``optimizer.state_dict`` does) into the optimizer of a sharded ``model``, whose groups
    are built by the same rule (``care.train.toolkit.parameter_groups``): each rank keeps its shard."""
    name_of = {id(p): n for n, p in model.named_parameters()}
    names = [name_of[id(p)] for group in optimizer.param_groups for p in group["params"]]
    state: dict = {}
    for key, value in tensors.items():
        pid, field = key.split(".", 1)
        state.setdefault(names[int(pid)], {})[field] = value
    for pid, values in meta.get("scalars", {}).items():
        state.setdefault(names[int(pid)], {}).update(values)
    groups = []
    start = 0
    for group in meta["param_groups"]:
        n = len(group["params"])
        groups.append({**group, "params": names[start:start + n]})
        start += n
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    set_optimizer_state_dict(model, optimizer, {"state": state, "param_groups": groups},
                             options=StateDictOptions(full_state_dict=True))


def _shared_name(prefix: str) -> str:
    """A name every rank agrees on (rank 0's)."""
    box = [f"{prefix}-{uuid.uuid4().hex[:8]}"]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def save_sharded(trainer, folder: str | Path, *, state) -> Path:
    """Collective: every rank writes its shards of policy, reference and optimizer; rank 0 the rest."""
    folder = Path(folder)
    rank = dist.get_rank()
    if rank == 0:
        folder.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(folder.parent)
    tmp = folder.parent / _shared_name(f".tmp-{folder.name}")
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    payload = {"policy": get_model_state_dict(trainer.policy), "reference": get_model_state_dict(trainer.reference),
               "optimizer": get_optimizer_state_dict(trainer.policy, optimizer)}
    dcp.save(payload, checkpoint_id=str(tmp / STATE_DIR))
    dist.barrier()
    # each rank hashes the shard files it wrote (``__<rank>_<n>.distcp``); rank 0 only merges the digests
    mine = {f"{STATE_DIR}/{f.name}": {"sha256": sha256_file(f), "size": f.stat().st_size}
            for f in sorted((tmp / STATE_DIR).glob(f"__{rank}_*.distcp"))}
    gathered: list[dict] = [{} for _ in range(dist.get_world_size())]
    dist.all_gather_object(gathered, mine)
    if rank == 0:
        try:
            with hf_progress_bars(False):
                for part, model in (("policy", trainer.policy), ("reference", trainer.reference)):
                    (tmp / part).mkdir(parents=True, exist_ok=True)
                    model.config.save_pretrained(tmp / part)
                    if getattr(model, "generation_config", None) is not None:
                        model.generation_config.save_pretrained(tmp / part)
                    (tmp / part / DCP_POINTER).write_text(json.dumps({"state": f"../{STATE_DIR}", "key": part}))
                trainer.processor.save_pretrained(tmp / "policy")
            (tmp / "scheduler.json").write_text(json.dumps(capture_scheduler(trainer.scheduler), indent=2, sort_keys=True))
            write_rng_and_state(tmp, state)
            shards = {k: v for part in gathered for k, v in part.items()}
            write_manifest(tmp, {**manifest_entries(tmp, skip=set(shards)), **shards})
            publish(tmp, folder, iteration=state.iteration)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    dist.barrier()
    return folder
