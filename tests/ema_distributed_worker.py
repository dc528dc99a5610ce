"""Worker for tests/test_ema_distributed.py: trains a small policy under DDP or FSDP2 and moves an EMA reference.

Launched as ``python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ema_distributed_worker.py
--mode ddp|fsdp --out DIR``; each rank saves the full reference parameters it ends with (and the initial ones),
so the test can check both ranks agree, the reference moved, and it equals the single-process run
(:func:`train_single_process`), which uses the same seeds and the whole batch.
"""

from __future__ import annotations

import argparse
import copy
import os
from pathlib import Path

import torch
from torch import nn

from care.algo.ema import ReferenceUpdater

WORLD = 2
ROWS_PER_RANK = 3
STEPS = 6
EVERY = 2
DECAY = 0.8
LR = 0.1


def build_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch of one step [WORLD * ROWS_PER_RANK, ...]; rank r takes rows r*ROWS..(r+1)*ROWS."""
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randn(WORLD * ROWS_PER_RANK, 8, generator=g), torch.randn(WORLD * ROWS_PER_RANK, 4, generator=g)


def run_steps(policy: nn.Module, reference: nn.Module, rows: slice) -> None:
    """SGD on mean-squared error; DDP/FSDP average gradients over ranks, which equals the whole-batch mean."""
    opt = torch.optim.SGD(policy.parameters(), lr=LR)
    updater = ReferenceUpdater(mode="ema", decay=DECAY, every=EVERY)
    for step in range(1, STEPS + 1):
        x, y = batch(step)
        loss = ((policy(x[rows]) - y[rows]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        updater.maybe_update(reference, policy, step)


def full_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """Full (gathered) parameters by name; DTensor shards are gathered here, for checking only."""
    out = {}
    for name, p in module.named_parameters():
        t = p.full_tensor() if hasattr(p, "full_tensor") else p
        out[name.replace("module.", "")] = t.detach().clone()
    return out


def train_single_process() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(initial reference, final reference) of the same training on one process with the whole batch."""
    policy = build_model()
    reference = copy.deepcopy(policy)
    initial = full_state(reference)
    run_steps(policy, reference, slice(None))
    return initial, full_state(reference)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["ddp", "fsdp"], required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.distributed.init_process_group("gloo")
    rank = torch.distributed.get_rank()
    policy = build_model()
    reference = copy.deepcopy(policy).requires_grad_(False)
    initial = full_state(reference)
    if args.mode == "ddp":
        policy = nn.parallel.DistributedDataParallel(policy)
    else:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (WORLD,))
        fully_shard(policy, mesh=mesh)
        fully_shard(reference, mesh=mesh)
        # A sharded parameter holds only part of the tensor on this rank; the update must edit that part.
        local = next(iter(reference.parameters())).to_local()
        assert local.shape[0] < 16, f"expected a sharded parameter, got local shape {tuple(local.shape)}"
    rows = slice(rank * ROWS_PER_RANK, (rank + 1) * ROWS_PER_RANK)
    run_steps(policy, reference, rows)
    final = full_state(reference)
    torch.save({"initial": initial, "final": final}, args.out / f"{args.mode}_rank{rank}.pt")
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
