"""The resident training state of an RL run (``Trainer``): restored from a checkpoint, saved to one.

What a checkpoint holds, and in which dtype (docs/scaling.md, "What a checkpoint holds"):

- ``policy/``: the fp32 master weights (``save_pretrained``, safetensors) and the processor;
- ``reference/``: the fp32 EMA (or frozen) reference; hard-linked from the previous checkpoint while no EMA
  update ran since;
- ``optimizer.safetensors``: AdamW's fp32 moments (``exp_avg``, ``exp_avg_sq``) and steps; ``scheduler.json``;
- ``state.json``: optimizer step, iteration, data cursor, EMA / skip counters and the ``state_id``
  (``care.train.state``) that names this state in the rollout and score rows.

Under FSDP2 (``care.train.sharded``) the tensors are shards in ``state/`` (``torch.distributed.checkpoint``, one
file per rank) and ``policy/`` / ``reference/`` hold configs and a ``dcp.json`` pointer instead of weights.

The starting checkpoint (``iter-00000``) keeps the starting model's own dtype (a bf16 hub checkpoint stays bf16:
upcasting is exact, so nothing is lost); every later one is fp32. ``care export`` writes a bf16 or fp32 Hugging
Face folder from any of them.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from care.errors import CareError
from care.train.checkpoint import (
    TrainingState,
    capture_optimizer,
    capture_rng,
    capture_scheduler,
    load_checkpoint_state,
    read_training_state,
    save_checkpoint,
    verify_manifest,
)
from care.train.config import OptimConfig
from care.train.policy_io import load_policy, load_reference
from care.train.toolkit import make_optimizer, make_scheduler


@dataclass
class Trainer:
    """Policy and reference (fp32, on the training device), processor, optimizer and schedule, counters."""

    policy: nn.Module
    reference: nn.Module
    processor: Any
    state_id: str
    iteration: int
    step: int = 0
    ema_updates: int = 0
    skipped: int = 0
    optimizer: torch.optim.Optimizer | None = None
    scheduler: Any = None
    signature: tuple | None = None  # (optimiser settings, total steps) the optimizer and schedule were built for
    source: Path | None = None  # the newest checkpoint these weights descend from
    source_ema_updates: int = 0  # ema_updates at ``source``: equal means the reference is still source's
    source_step: int = 0
    scorer: nn.Module | None = None  # FSDP2: the sharded root wrapping the policy (care.train.sharded)
    ref_scorer: nn.Module | None = None  # FSDP2: the same for the reference
    extra: dict[str, Any] = field(default_factory=dict)


def restore(checkpoint: str | Path, *, device: torch.device, state_id: str) -> Trainer:
    """A Trainer holding a complete checkpoint (verified), weights in fp32; the optimizer is built on first use."""
    checkpoint = Path(checkpoint)
    verify_manifest(checkpoint)  # every byte, once
    policy, processor = load_policy(checkpoint, device=device, verify=False)
    reference = load_reference(checkpoint, device=device, verify=False)
    st = read_training_state(checkpoint)
    ema, skipped = int(st.extra.get("ema_updates", 0)), int(st.extra.get("skipped_steps", 0))
    return Trainer(policy=policy, reference=reference, processor=processor, state_id=state_id,
                   iteration=st.iteration, step=st.step, ema_updates=ema, skipped=skipped, source=checkpoint,
                   source_ema_updates=ema, source_step=st.step)


def ensure_optimizer(trainer: Trainer, config: OptimConfig, total_steps: int) -> None:
    """Build AdamW and the schedule for these settings, with the moments of ``trainer.source`` when the weights
    are still that checkpoint's (a trainer that has taken steps in memory keeps its own)."""
    signature = (config.model_dump_json(), total_steps)
    if trainer.optimizer is not None and trainer.signature == signature:
        return
    if trainer.optimizer is not None and trainer.step != trainer.source_step:
        raise CareError(f"state {trainer.state_id}: optimiser settings changed in the middle of a run; "
                        "a run's optimiser settings are part of its config, so start a new run")
    optimizer = make_optimizer(trainer.policy, learning_rate=config.learning_rate, betas=config.betas,
                               weight_decay=config.weight_decay, eps=config.adam_eps,
                               weight_decay_exempt=config.weight_decay_exempt)
    scheduler = make_scheduler(optimizer, kind=config.lr_scheduler, warmup_steps=config.warmup_steps,
                               total_steps=total_steps)
    source = trainer.source
    if source is not None and trainer.step == trainer.source_step:
        _load_optimizer(trainer, optimizer, scheduler, source)
    trainer.optimizer, trainer.scheduler, trainer.signature = optimizer, scheduler, signature


def _load_optimizer(trainer: Trainer, optimizer, scheduler, source: Path) -> None:
    """AdamW and schedule state of ``source`` (a one-process or a sharded checkpoint) into the trainer's
    (one-process or sharded) optimizer."""
    from care.train import sharded

    sharded_params = any(hasattr(p, "to_local") for p in trainer.policy.parameters())
    if (source / "optimizer.json").is_file():
        _check_groups(optimizer, json.loads((source / "optimizer.json").read_text()), source)
    if sharded.is_sharded_checkpoint(source):
        sharded.load_sharded_optimizer(trainer.policy, optimizer, source)
    elif (source / "optimizer.safetensors").is_file() and sharded_params:
        tensors = load_file(source / "optimizer.safetensors")
        sharded.load_full_optimizer(trainer.policy, optimizer, tensors,
                                    json.loads((source / "optimizer.json").read_text()))
    elif (source / "optimizer.safetensors").is_file():
        load_checkpoint_state(source, optimizer=optimizer, restore_rng_state=False)
    if (source / "scheduler.json").is_file():
        scheduler.load_state_dict(json.loads((source / "scheduler.json").read_text()))


def _check_groups(optimizer, meta: dict, source: Path) -> None:
    """The checkpoint's AdamW parameter groups have the sizes this optimizer's have (``optim.weight_decay_exempt``
    decides them), so its moments land on the parameters they belong to."""
    saved = [len(g["params"]) for g in meta.get("param_groups", [])]
    here = [len(g["params"]) for g in optimizer.param_groups]
    if saved and saved != here:
        raise CareError(f"{source}: its optimizer has parameter groups of {saved} parameters, these settings "
                        f"build {here}; optim.weight_decay_exempt (or the trainable parameters) differ from the run "
                        "that wrote it")


def training_state(trainer: Trainer, data_cursor: dict | None) -> TrainingState:
    extra = {"ema_updates": trainer.ema_updates, "skipped_steps": trainer.skipped}
    if trainer.state_id:  # empty: the checkpoint's own content id names the state (checkpoint_state_id)
        extra["state_id"] = trainer.state_id
    return TrainingState(step=trainer.step, iteration=trainer.iteration, data_cursor=dict(data_cursor or {}),
                         extra=extra)


def _cpu_copy(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


class BackgroundWriter:
    """At most one checkpoint write in flight, in a thread, from a snapshot taken before it starts.

    The trainer goes on updating the live weights meanwhile; the write only reads its own copies, so a slow
    disk neither blocks nor corrupts the next iteration. A failure surfaces at the next ``wait``. The thread is
    not a daemon: a normal interpreter exit finishes the write; a killed process leaves a ``.tmp-*`` folder
    that no reader lists (``care.train.checkpoint``).
    """

    def __init__(self):
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._done: list[dict] = []
        self._lock = threading.Lock()

    def submit(self, write: Callable[[], dict]) -> None:
        self.wait(drain=False)
        self._thread = threading.Thread(target=self._run, args=(write,), name="care-checkpoint-writer")
        self._thread.start()

    def _run(self, write: Callable[[], dict]) -> None:
        try:
            done = write()
            with self._lock:
                self._done.append(done)
        except BaseException as exc:  # re-raised in the trainer's thread by wait()
            self._error = exc

    def wait(self, *, drain: bool = True) -> list[dict]:
        """Block until the write in flight (if any) is on disk; re-raise its error; return (and forget, when
        ``drain``) the records of writes finished since the last drain."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise CareError(f"checkpoint write failed: {error}") from error
        return self.drain() if drain else []

    def drain(self) -> list[dict]:
        with self._lock:
            done, self._done = self._done, []
        return done

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()


WRITER = BackgroundWriter()


def save_trainer(trainer: Trainer, folder: str | Path, *, data_cursor: dict | None = None, background: bool = False,
                 after: Callable[[Path], Any] | None = None) -> Path:
    """Write the trainer's state as a checkpoint at ``folder`` (synchronously, or from a snapshot in the
    background writer). ``after(path)`` runs once the checkpoint is complete (pruning, in the writer's thread,
    so it never races the write). The trainer then descends from this checkpoint."""
    folder = Path(folder)
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # accelerate's wrapper, unwrapped
    same_reference = trainer.source is not None and trainer.ema_updates == trainer.source_ema_updates
    source = trainer.source
    kwargs: dict[str, Any] = {
        "policy": trainer.policy, "reference": trainer.reference, "processor": trainer.processor,
        "optimizer": optimizer, "scheduler": trainer.scheduler, "state": training_state(trainer, data_cursor),
        # no EMA update since the source: the reference is the source's, bit for bit
        "reference_from": source if same_reference else None,
        "processor_from": source,  # the processor never changes in RL
    }
    if background:
        kwargs.update(
            policy_state=_cpu_copy(trainer.policy),
            reference_state=_cpu_copy(trainer.reference),  # also when linked: a fallback write reads no live tensor
            optimizer_state=capture_optimizer(optimizer, copy=True) if optimizer is not None else None,
            scheduler_state=capture_scheduler(trainer.scheduler) if trainer.scheduler is not None else None,
            rng_state=capture_rng(),
        )

    def write() -> dict:
        path = save_checkpoint(folder, **kwargs)
        removed = after(path) if after else None
        return {"path": str(path), "step": kwargs["state"].step, "iteration": kwargs["state"].iteration,
                "removed": [str(p) for p in removed or []]}

    trainer.source, trainer.source_ema_updates, trainer.source_step = folder, trainer.ema_updates, trainer.step
    WRITER.submit(write)
    if not background:
        WRITER.wait(drain=False)
    return folder
