"""The optimisation stage: GRPO / GRPO-CARE policy update over one scored generation batch, then the EMA.

Shape legend: b = rollouts in a micro-batch, p = prompt tokens, c = completion tokens.

What is on: ``steps_per_generation`` optimizer steps over the whole batch (1 = the reference code's single
on-policy step with ratio exp(logp - logp.detach()); more = PPO clipped ratio against the behaviour log-probs
stored by the rollout stage), micro-batches with gradient accumulation, AdamW, cosine or constant schedule with
warm-up, grad-norm clipping, fp32 master weights with bf16 autocast (``precision``), optional gradient
checkpointing, the EMA (or frozen) reference update every ``ema_every`` optimizer steps, accumulated in fp32.
What is off by default: the KL term (GRPO-CARE has none).

The stage is three parts: ``restore`` a ``Trainer`` (the resident state: policy, reference, optimizer, schedule,
counters) from a checkpoint, ``update_steps`` on one scored batch, and ``save_trainer`` (a checkpoint, only
every ``checkpoint_every`` iterations; ``care.train.state`` says how the states in between are named and
rebuilt).

Data parallel: ``accelerate`` wraps a small module whose forward returns the token log-probs, so DDP sees
the whole computation. Every micro-batch loss is weighted by its share of the *global* batch (sequences, or
tokens for ``token_mean``) times the world size, so DDP's gradient average equals the one-process gradient
of the same global batch (tested with torchrun). A non-finite loss or gradient norm skips the optimizer step
(recorded in the metrics); it never reaches a checkpoint.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path

import torch
from accelerate import Accelerator
from torch import nn

from care.algo.ema import ReferenceUpdater, unwrap_model
from care.algo.likelihood import token_log_probs
from care.algo.losses import policy_loss
from care.data.schema import Sample
from care.device import resolve_dtype
from care.errors import CareError
from care.media.frame_cache import FrameCache
from care.models.inputs import completion_target_mask, encode_prompt_completions, model_inputs
from care.models.loading import enable_activation_checkpointing
from care.models.samples import row_template, shared_prompt_items
from care.store.rollout_log import read_rows
from care.train.config import OptimConfig
from care.train.toolkit import autocast, step_if_finite
from care.train.trainer import Trainer, ensure_optimizer


class CompletionLogProbs(nn.Module):
    """The policy's forward for training: per-token log-probs (and entropy) at completion positions only."""

    def __init__(self, policy: nn.Module):
        super().__init__()
        self.policy = policy

    def forward(self, inputs: Mapping[str, torch.Tensor], target_mask: torch.Tensor, temperature: float,
                shared_prompts=None):
        out = token_log_probs(self.policy, inputs, target_mask, temperature=temperature, with_entropy=True,
                              shared_prompts=shared_prompts)
        return out.logp, out.entropy


def load_scored_batch(generated_path: str | Path, scored_path: str | Path) -> list[dict]:
    """Generated rows joined with their scores on ``rollout_uid``, in the generated order."""
    scores = {r["rollout_uid"]: r for r in read_rows(Path(scored_path))}
    rows = []
    for r in read_rows(Path(generated_path)):
        if r["rollout_uid"] not in scores:
            raise ValueError(f"{scored_path}: no score for rollout {r['rollout_uid']}; re-run the scoring stage")
        rows.append({**r, **scores[r["rollout_uid"]]})
    return rows


def _pad(rows: Sequence[Sequence[float]], width: int) -> torch.Tensor:
    out = torch.zeros(len(rows), width, dtype=torch.float32)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.float32)
    return out


def _micro_batches(rows: list[dict], size: int) -> list[list[dict]]:
    return [rows[i : i + size] for i in range(0, len(rows), size)]


def _shard_for_rank(rows: list[dict], rank: int, world: int, micro: int) -> list[dict]:
    """This rank's contiguous slice; every rank gets the same number of rows (so the same micro-batch count)."""
    if len(rows) % world:
        raise ValueError(f"{len(rows)} rollouts cannot be split evenly over {world} processes; "
                         "make prompts_per_iteration * group_size a multiple of num_processes")
    per = len(rows) // world
    return rows[rank * per : (rank + 1) * per]


class _Accumulator:
    """Weighted sums of per-micro-batch metrics, reduced over processes at the end of a step."""

    def __init__(self):
        self.sums: dict[str, float] = {}

    def add(self, metrics: Mapping[str, float], weight: float) -> None:
        for k, v in metrics.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v) * weight

    def reduce(self, accelerator: Accelerator, world: int) -> dict[str, float]:
        if not self.sums:
            return {}
        names = sorted(self.sums)
        t = torch.tensor([self.sums[n] for n in names], dtype=torch.float64, device=accelerator.device)
        if world > 1:
            t = accelerator.reduce(t, reduction="sum")
        return {n: float(v) / world for n, v in zip(names, t.tolist(), strict=True)}


def _micro_step(scorer, reference, processor, accelerator, rows, samples, cache, config, *, temperature,
                max_new_tokens, weight_of, use_behaviour, world,
                compute_dtype) -> tuple[torch.Tensor, dict[str, float], float]:
    """Forward + backward of one micro-batch; returns (weighted loss, metrics, weight)."""
    items, rates = shared_prompt_items([samples[r["sample_id"]] for r in rows], cache,
                                       template=[row_template(r) for r in rows])
    batch = encode_prompt_completions(processor, items, [r["completion_ids"] for r in rows], fps=rates)
    device = accelerator.device
    inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in model_inputs(batch).items()}
    target = completion_target_mask(batch).to(device)
    p = batch["prompt_length"]
    mask = batch["completion_mask"].bool().to(device)
    with autocast(device, compute_dtype):
        logp_full, entropy_full = scorer(inputs, target, temperature, batch["shared_prompts"])
    logp, entropy = logp_full[:, p:], entropy_full[:, p:]
    width = mask.shape[1]
    old = _pad([r["behaviour_logprobs"] for r in rows], width).to(device) if use_behaviour else None
    ref_logp = None
    if config.kl_beta > 0:  # ``reference``: a CompletionLogProbs (the sharded root under FSDP2)
        with torch.no_grad(), autocast(device, compute_dtype):
            ref_logp = reference(inputs, target, temperature, batch["shared_prompts"])[0][:, p:]
    adv = torch.tensor([r["advantage"] for r in rows], dtype=torch.float32, device=device)
    out = policy_loss(logp, adv, mask, old_logp=old, ref_logp=ref_logp, eps_low=config.eps_low,
                      eps_high=config.eps_high, kl_beta=config.kl_beta, kl_estimator=config.kl_estimator,
                      aggregation=config.loss_aggregation, norm_length=max_new_tokens, entropy=entropy)
    weight = weight_of(len(rows), int(mask.sum()))
    loss = out.loss * weight * world
    accelerator.backward(loss)
    return out.loss.detach(), out.metrics, weight


def _set_activation_checkpointing(policy: nn.Module, on: bool) -> None:
    """On for the update only: the same model object also samples and scores, where it would cost speed."""
    if on:
        enable_activation_checkpointing(policy)
    else:
        (getattr(policy, "activation_checkpointing_disable", None) or policy.gradient_checkpointing_disable)()
    policy.config.use_cache = not on


def _shard(trainer: Trainer, device: torch.device) -> None:
    """Shard policy and reference over the ranks with FSDP2 (``care.train.sharded``), once per trainer."""
    if trainer.scorer is not None:
        return
    from care.train.sharded import device_mesh, shard_model

    if trainer.optimizer is not None:
        raise CareError("the trainer's optimizer exists already; shard before building it")
    mesh = device_mesh(device)
    trainer.scorer, trainer.ref_scorer = CompletionLogProbs(trainer.policy), CompletionLogProbs(trainer.reference)
    shard_model(trainer.policy, trainer.scorer, mesh)
    shard_model(trainer.reference, trainer.ref_scorer, mesh)


def _prepared(trainer: Trainer, accelerator: Accelerator):
    """The DDP-wrapped forward and the wrapped optimizer, built once per trainer and optimizer: wrapping
    broadcasts every parameter from rank 0 (33 GB at 8 B fp32 parameters), which a resident rank must not
    repeat each iteration."""
    held = trainer.extra.get("prepared")
    if held is None or held[2] is not trainer.optimizer or held[3] != accelerator.num_processes:
        scorer, optimizer = accelerator.prepare(CompletionLogProbs(trainer.policy), trainer.optimizer)
        held = trainer.extra["prepared"] = (scorer, optimizer, trainer.optimizer, accelerator.num_processes)
    return held[0], held[1]


def _clip(module: nn.Module, max_norm: float) -> float:
    """Clip the gradient norm over all ranks' shards; the global norm."""
    norm = torch.nn.utils.clip_grad_norm_(module.parameters(), max_norm)
    full = getattr(norm, "full_tensor", None)
    return float(full() if callable(full) else norm)


def update_steps(trainer: Trainer, *, rows: list[dict], samples: Mapping[str, Sample], cache: FrameCache,
                 config: OptimConfig, total_steps: int, temperature: float, max_new_tokens: int,
                 iteration: int) -> list[dict]:
    """``config.steps_per_generation`` optimizer steps of ``trainer`` over ``rows`` (one whole scored
    generation batch), the EMA on schedule; the trainer ends at iteration ``iteration + 1``.

    Works as one process or as one rank of ``torchrun`` (DDP over the ranks). Returns the per-step metrics.
    """
    device = next(trainer.policy.parameters()).device
    compute_dtype = resolve_dtype(config.precision, device)
    accelerator = Accelerator(cpu=device.type == "cpu", mixed_precision="no")  # autocast is ours (toolkit)
    world, rank = accelerator.num_processes, accelerator.process_index
    fsdp = config.parallelism == "fsdp2" and world > 1
    policy, processor = trainer.policy, trainer.processor
    if fsdp:
        _shard(trainer, device)  # once per trainer; the optimizer is built over the sharded parameters
    ensure_optimizer(trainer, config, total_steps)
    if config.gradient_checkpointing:
        _set_activation_checkpointing(policy, True)
    policy.train()
    if fsdp:
        scorer, optimizer, reference = trainer.scorer, trainer.optimizer, trainer.ref_scorer
    else:
        scorer, optimizer = _prepared(trainer, accelerator)
        reference = CompletionLogProbs(trainer.reference)
    scheduler = trainer.scheduler
    updater = ReferenceUpdater(mode=config.ref_mode, decay=config.ema_decay, every=config.ema_every)

    n_global = len(rows)
    t_global = sum(len(r["completion_ids"]) for r in rows)
    by_tokens = config.loss_aggregation == "token_mean"

    def weight_of(n_rows: int, n_tokens: int) -> float:
        return n_tokens / t_global if by_tokens else n_rows / n_global

    local = _shard_for_rank(rows, rank, world, config.micro_batch_size)
    micro = _micro_batches(local, config.micro_batch_size)
    use_behaviour = config.steps_per_generation > 1
    history = []
    for _ in range(config.steps_per_generation):
        t0 = time.perf_counter()
        acc = _Accumulator()
        loss_sum = torch.zeros((), dtype=torch.float64, device=accelerator.device)
        for j, mb in enumerate(micro):
            sync = j == len(micro) - 1
            with nullcontext() if sync else accelerator.no_sync(scorer):
                loss, metrics, w = _micro_step(scorer, reference, processor, accelerator, mb, samples, cache, config,
                                               temperature=temperature, max_new_tokens=max_new_tokens,
                                               weight_of=weight_of, use_behaviour=use_behaviour, world=world,
                                               compute_dtype=compute_dtype)
            loss_sum += loss.double() * w * world
            acc.add(metrics, w * world)
        grad_norm = _clip(scorer, config.max_grad_norm) if fsdp else float(
            accelerator.clip_grad_norm_(scorer.parameters(), config.max_grad_norm))
        loss_value = float(accelerator.reduce(loss_sum, reduction="sum")) / world if world > 1 else float(loss_sum)
        lr = scheduler.get_last_lr()[0]
        finite = step_if_finite(optimizer, scheduler, loss=loss_value, grad_norm=grad_norm)
        if finite:
            trainer.step += 1
            if updater.maybe_update(trainer.reference, unwrap_model(scorer).policy, trainer.step):
                trainer.ema_updates += 1
        else:
            trainer.skipped += 1
        seconds = time.perf_counter() - t0
        history.append({"step": trainer.step, "loss": loss_value, "grad_norm": grad_norm, "learning_rate": lr,
                        "skipped_nonfinite": 0.0 if finite else 1.0, "ema_updates": float(trainer.ema_updates),
                        "tokens_per_second": t_global / seconds if seconds > 0 else math.nan,
                        "update_seconds": seconds, **acc.reduce(accelerator, world)})
    if config.gradient_checkpointing:
        _set_activation_checkpointing(policy, False)
    policy.eval()
    trainer.iteration = iteration + 1
    return history
