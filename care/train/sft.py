"""Supervised fine-tuning (SFT) on the CoT training file, with the loss on the assistant turn only.

Shape legend: b = samples in a step, p = prompt tokens (left-padded), c = completion tokens (right-padded).

Each sample's target is ``<think>{cot}</think><answer>{letter}</answer>`` + EOS, appended to its prompt with
``encode_prompt_completions`` (the layout RL uses, so M-RoPE positions match generation). The loss is the
negative mean log-prob over all completion tokens of the step (a token mean), computed with
``token_log_probs``: the LM head runs at completion positions only, so neither prompt tokens nor a full
``[b, t, vocab]`` logits tensor ever enter the loss.

What is on: AdamW, linear warm-up then constant or cosine, grad-norm clipping, a step whose loss or grad norm is
not finite skipped and counted (the batch is consumed; the learning-rate schedule counts applied steps only),
bf16 autocast on a GPU that supports it, optional gradient checkpointing. Data order is
``care.train.data_order.batch_ids(step)``, a pure function of the seed and step, so resuming from a checkpoint
needs no iterator state and continues exactly (tested to equal an uninterrupted run). What is off: no
reference model, no KL, no packing, one process.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from care.algo.likelihood import token_log_probs
from care.algo.prompt import DEFAULT_TEMPLATE, PromptTemplate, prompt_template
from care.algo.rewards import accuracy_reward, format_reward
from care.data.schema import Sample
from care.device import default_device, resolve_dtype
from care.errors import CareError
from care.failpoints import failpoint
from care.media.frame_cache import FrameCache
from care.models.generation import Decoding, sample_completions
from care.models.inputs import (
    PromptItem,
    completion_target_mask,
    encode_prompt_completions,
    encode_prompts,
    model_inputs,
)
from care.models.loading import enable_activation_checkpointing, suppressed_token_ids
from care.models.samples import SampleSet, prompt_items
from care.train.checkpoint import (
    TrainingState,
    latest_complete,
    load_checkpoint_state,
    prune_checkpoints,
    save_checkpoint,
)
from care.train.data_order import batch_ids, cursor_after
from care.train.sft_config import SFTConfig
from care.train.toolkit import (
    MASTER_DTYPE,
    autocast,
    make_optimizer,
    make_scheduler,
    step_if_finite,
)

CHECKPOINT_PREFIX = "step-"


def checkpoint_name(step: int) -> str:
    """``step-00042``: the checkpoint after ``step`` steps (batches) of SFT."""
    return f"{CHECKPOINT_PREFIX}{step:05d}"


def target_text(sample: Sample) -> str:
    """The assistant turn SFT teaches (EOS is added as a token id, not as text).

    >>> from care.data.schema import Sample
    >>> s = Sample("x", "train", "q?", ("a", "b", "c", "d"), "B", cot="It goes to b.")
    >>> target_text(s)
    '<think>It goes to b.</think><answer>B</answer>'
    """
    if not sample.cot:
        raise CareError(f"sample {sample.sample_id}: no 'cot' field; SFT needs the CoT training file "
                        "(training_with_cot_6k.jsonl)")
    return f"<think>{sample.cot}</think><answer>{sample.answer}</answer>"


def target_ids(tokenizer, sample: Sample) -> list[int]:
    """Token ids of :func:`target_text` followed by the EOS id (which ends the assistant turn)."""
    ids = tokenizer(target_text(sample), add_special_tokens=False)["input_ids"]
    return [*ids, tokenizer.eos_token_id]


class PromptStore:
    """Prompt items (chat messages + cached frames) and target ids per sample id, built once and kept in memory:
    a step then costs no frame-cache read."""

    def __init__(self, samples: Mapping[str, Sample], cache: FrameCache, tokenizer, *,
                 template: PromptTemplate = DEFAULT_TEMPLATE):
        self.samples, self.cache, self.tokenizer, self.template = samples, cache, tokenizer, template
        self._prompts: dict[str, tuple[PromptItem, float | None]] = {}
        self._targets: dict[str, list[int]] = {}

    def prompts(self, ids: Sequence[str]) -> tuple[list[PromptItem], list[float | None]]:
        missing = [i for i in ids if i not in self._prompts]
        if missing:
            items, rates = prompt_items([self.samples[i] for i in missing], self.cache, template=self.template)
            self._prompts.update(zip(missing, zip(items, rates, strict=True), strict=True))
        got = [self._prompts[i] for i in ids]
        return [g[0] for g in got], [g[1] for g in got]

    def get(self, ids: Sequence[str]) -> tuple[list[PromptItem], list[float | None], list[list[int]]]:
        """(prompt items, fps, target ids) of a training batch."""
        for i in ids:
            if i not in self._targets:
                self._targets[i] = target_ids(self.tokenizer, self.samples[i])
        return (*self.prompts(ids), [self._targets[i] for i in ids])


def sft_loss(model, processor, items: Sequence[PromptItem], rates: Sequence[float | None],
             completion_ids: Sequence[Sequence[int]]) -> tuple[torch.Tensor, int]:
    """(loss, completion tokens): loss = -mean log p(completion token | prompt, earlier completion tokens) over
    every completion token of the batch; prompt positions are not targets."""
    batch = encode_prompt_completions(processor, items, completion_ids, fps=rates)
    device = next(model.parameters()).device
    inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in model_inputs(batch).items()}
    target = completion_target_mask(batch).to(device)  # [b, p + c]
    logp = token_log_probs(model, inputs, target, shared_prompts=batch["shared_prompts"]).logp  # [b, p + c]
    n_tokens = int(target.sum())
    return -logp.sum() / max(n_tokens, 1), n_tokens


@dataclass(frozen=True)
class StepResult:
    loss: float
    grad_norm: float
    learning_rate: float
    tokens: int
    applied: bool


def sft_step(model, processor, optimizer, scheduler, batch: tuple, *, max_grad_norm: float,
             compute_dtype: torch.dtype = torch.float32) -> StepResult:
    """Forward + backward (under bf16 autocast when ``compute_dtype`` is bf16; the weights stay fp32) + clip +
    (when loss and grad norm are finite) one optimizer and scheduler step."""
    items, rates, completions = batch
    device = next(model.parameters()).device
    with autocast(device, compute_dtype):
        loss, n_tokens = sft_loss(model, processor, items, rates, completions)
    loss.backward()
    grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm))
    lr = scheduler.get_last_lr()[0]
    loss_value = float(loss.detach())
    applied = step_if_finite(optimizer, scheduler, loss=loss_value, grad_norm=grad_norm)
    return StepResult(loss_value, grad_norm, lr, n_tokens, applied)


@torch.no_grad()
def sampled_check(model, processor, store: PromptStore, samples: Sequence[Sample], *,
                  max_new_tokens: int) -> dict[str, float]:
    """Greedy completions for ``samples`` (training prompts): mean format reward and accuracy.

    A cheap progress signal during training, not an evaluation (the prompts are seen in training)."""
    model.eval()
    items, rates = store.prompts([s.sample_id for s in samples])
    enc = encode_prompts(processor, items, fps=rates)
    device = next(model.parameters()).device
    inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in enc.items()}
    tok = processor.tokenizer
    completions = sample_completions(
        model, inputs, tok, group_size=1, decoding=Decoding(max_new_tokens=max_new_tokens, do_sample=False),
        seed=0, eos_token_ids=[tok.eos_token_id], pad_token_id=tok.pad_token_id,
        suppress_token_ids=suppressed_token_ids(processor))
    fmt = [format_reward(c.text) for c in completions]
    acc = [accuracy_reward(c.text, gold=samples[c.prompt_index].answer) for c in completions]
    return {"check_format": sum(fmt) / len(fmt), "check_accuracy": sum(acc) / len(acc)}


class _Window:
    """Means of the per-step figures since the last log line."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.loss, self.grad, self.tokens, self.seconds, self.n, self.applied = 0.0, 0.0, 0, 0.0, 0, 0

    def add(self, r: StepResult, seconds: float) -> None:
        self.tokens += r.tokens
        self.seconds += seconds
        self.n += 1
        if r.applied:
            self.applied += 1
            self.loss += r.loss
            self.grad += r.grad_norm

    def metrics(self) -> dict[str, float]:
        k = max(self.applied, 1)
        return {"loss": self.loss / k if self.applied else math.nan,
                "grad_norm": self.grad / k if self.applied else math.nan,
                "tokens_per_second": self.tokens / self.seconds if self.seconds > 0 else math.nan,
                "seconds_per_step": self.seconds / max(self.n, 1)}


def sft_optimizer(model, config: SFTConfig):
    """(AdamW, schedule) of an SFT run, over the model's (fp32 master) parameters."""
    optimizer = make_optimizer(model, learning_rate=config.learning_rate, betas=config.betas,
                               weight_decay=config.weight_decay, weight_decay_exempt=config.weight_decay_exempt)
    return optimizer, make_scheduler(optimizer, kind=config.lr_scheduler, warmup_steps=config.warmup_steps,
                                     total_steps=config.steps)


def sft_samples(sample_set: SampleSet) -> dict[str, Sample]:
    """The samples that carry a CoT (the SFT targets), by id; an error when none does."""
    usable = {s.sample_id: s for s in sample_set.samples if s.cot}
    if not usable:
        raise CareError("no training sample has a 'cot' field; point annotations at training_with_cot_6k.jsonl")
    return usable


def _load_start(config: SFTConfig, ckpt_dir: Path, device: torch.device):
    """(model, processor, optimizer, scheduler, state): fresh from ``config.model``, or the newest checkpoint."""
    from care.models.loading import load_model, load_processor

    found = latest_complete(ckpt_dir, prefix=CHECKPOINT_PREFIX)
    source = found[1] / "policy" if found else config.model
    # fp32 master weights before the optimizer exists, so its moments are fp32 too (loading its state into
    # bf16 parameters would cast the moments to bf16)
    model = load_model(source, dtype=MASTER_DTYPE, device=device)
    processor = load_processor(source)
    if config.gradient_checkpointing:
        enable_activation_checkpointing(model)
        model.config.use_cache = False
    optimizer, scheduler = sft_optimizer(model, config)
    state = TrainingState()
    if found:
        state = load_checkpoint_state(found[1], optimizer=optimizer, scheduler=scheduler, restore_rng_state=True)
    else:
        torch.manual_seed(config.seed)
    return model, processor, optimizer, scheduler, state


def run_sft(*, config: SFTConfig, sample_set: SampleSet, cache: FrameCache, run_dir: str | Path,
            on_log: Callable[[int, dict], None] | None = None,
            on_checkpoint: Callable[[int, str], None] | None = None, progress: bool = True,
            stop_at: int | None = None) -> dict:
    """Train (or continue training) to ``config.steps`` steps; checkpoints under ``<run_dir>/checkpoints``.

    ``on_log(step, metrics)`` is called every ``log_every`` steps with window means (loss, grad_norm,
    learning_rate, tokens_per_second, seconds_per_step, skipped_nonfinite) plus, when ``check_prompts`` > 0,
    ``check_format`` / ``check_accuracy`` of greedy decoding on fixed training prompts. ``on_checkpoint(step,
    path)`` after each checkpoint is written. ``stop_at``: end this call after that step with a checkpoint, as an
    interruption would (the schedule still spans ``config.steps``; a later call continues). Returns {"checkpoint", "step", "skipped_steps", "seconds",
    "history": [{"step", ...metrics}], "resumed_from"}.
    """
    started = time.perf_counter()
    device = default_device()
    dtype = resolve_dtype(config.precision, device)
    ckpt_dir = Path(run_dir) / "checkpoints"
    samples = sft_samples(sample_set)
    ids = sorted(samples)
    model, processor, optimizer, scheduler, state = _load_start(config, ckpt_dir, device)
    store = PromptStore(samples, cache, processor.tokenizer, template=prompt_template(config.prompt, "train"))
    step, resumed_from = state.step, state.step
    skipped = int(state.extra.get("skipped_steps", 0))
    check_ids = ids[:: max(len(ids) // max(config.check_prompts, 1), 1)][: config.check_prompts]
    history: list[dict] = []
    window = _Window()
    last_ckpt = str(ckpt_dir / checkpoint_name(step)) if step else None
    bar = tqdm(total=config.steps, initial=step, desc="sft", unit="step", disable=not progress, leave=False)
    model.train()
    end = min(config.steps, stop_at) if stop_at is not None else config.steps
    while step < end:
        t0 = time.perf_counter()
        batch = store.get(batch_ids(ids, batch_size=config.batch_size, index=step, seed=config.seed))
        result = sft_step(model, processor, optimizer, scheduler, batch, max_grad_norm=config.max_grad_norm,
                          compute_dtype=dtype)
        step += 1
        failpoint("sft", step)  # crash tests: killed after an update, before its checkpoint
        skipped += 0 if result.applied else 1
        window.add(result, time.perf_counter() - t0)
        bar.update(1)
        bar.set_postfix(loss=f"{result.loss:.4f}")
        if step % config.log_every == 0 or step == config.steps:
            entry = {**window.metrics(), "learning_rate": result.learning_rate, "skipped_nonfinite": float(skipped)}
            if check_ids:
                entry.update(sampled_check(model, processor, store, [samples[i] for i in check_ids],
                                           max_new_tokens=config.check_max_new_tokens))
                model.train()
            window.reset()
            history.append({"step": step, **entry})
            if on_log:
                on_log(step, entry)
        if step % config.checkpoint_every == 0 or step == end:
            last_ckpt = _checkpoint(model, processor, optimizer, scheduler, ckpt_dir, step, skipped, len(ids), config)
            if on_checkpoint:
                on_checkpoint(step, last_ckpt)
    bar.close()
    if last_ckpt is None:
        raise CareError(f"{ckpt_dir}: no checkpoint to return; steps must be at least 1")
    return {"checkpoint": last_ckpt, "step": step, "skipped_steps": skipped, "resumed_from": resumed_from,
            "seconds": time.perf_counter() - started, "history": history}


def _checkpoint(model, processor, optimizer, scheduler, ckpt_dir: Path, step: int, skipped: int, n: int,
                config: SFTConfig) -> str:
    cursor = cursor_after(n, batch_size=config.batch_size, index=step - 1)
    state = TrainingState(step=step, iteration=0, data_cursor=cursor.as_dict(), extra={"skipped_steps": skipped})
    model.eval()
    path = save_checkpoint(ckpt_dir / checkpoint_name(step), policy=model, processor=processor,
                           optimizer=optimizer, scheduler=scheduler, state=state)
    model.train()
    prune_checkpoints(ckpt_dir, config.keep_checkpoints, prefix=CHECKPOINT_PREFIX)
    return str(path)
