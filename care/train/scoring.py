"""The scoring stage: base rewards, reference likelihood of the answer, consistency bonus, advantages.

Reads the rollout shard, scores every completion exactly as sampled (same prompt and visual inputs followed by
the policy's own completion) under the reference model (EMA or frozen, from the input checkpoint), and writes
``scored.parquet`` next to it. The likelihood is computed for plain GRPO too, so the consistency likelihood of
both algorithms can be compared; only GRPO-CARE turns it into a bonus.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from pathlib import Path

import torch

from care.algo.advantages import compute_advantages
from care.algo.algorithms import algorithm
from care.algo.answer_span import answer_token_masks
from care.algo.consistency import consistency_bonus
from care.algo.likelihood import answer_likelihood
from care.algo.rewards import combine_rewards, extract_answer
from care.data.schema import Sample
from care.device import default_device
from care.failpoints import failpoint
from care.media.frame_cache import FrameCache
from care.models.inputs import encode_prompt_completions, model_inputs
from care.models.samples import row_template, shared_prompt_items
from care.store.rollout_log import SCORED_FILE, SCORED_SCHEMA, read_rows, write_rows_atomic
from care.train.config import ScoringConfig
from care.train.gang import stage_gang
from care.train.ranks import forward_model, gather_to_first
from care.train.replay import compute_dtype, materialise
from care.train.state import PolicyState, as_state
from care.train.toolkit import autocast


@torch.no_grad()
def reference_likelihoods(reference, processor, rows: list[dict], samples: Mapping[str, Sample], cache: FrameCache,
                          config: ScoringConfig) -> tuple[list[float], list[float], list[bool]]:
    """(p clamped, mean log-prob, has_answer) per rollout, in batches of ``config.scoring_batch_size``."""
    device = next(reference.parameters()).device
    p_all, logp_all, has_all = [], [], []
    for start in range(0, len(rows), config.scoring_batch_size):
        chunk = rows[start : start + config.scoring_batch_size]
        items, rates = shared_prompt_items([samples[r["sample_id"]] for r in chunk], cache,
                                           template=[row_template(r) for r in chunk])
        batch = encode_prompt_completions(processor, items, [r["completion_ids"] for r in chunk], fps=rates)
        span = answer_token_masks(batch["completion_ids"], batch["completion_mask"], processor.tokenizer,
                                  reproduce_reference=config.reproduce_reference)
        target = torch.cat([torch.zeros(len(chunk), batch["prompt_length"], dtype=torch.bool), span], dim=1)
        inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in model_inputs(batch).items()}
        out = answer_likelihood(reference, inputs, target.to(device), upper_bound=config.confidence_upper_bound,
                                shared_prompts=batch["shared_prompts"], reproduce_reference=config.reproduce_reference)
        p_all += out.p.float().cpu().tolist()
        logp_all += out.mean_logp.float().cpu().tolist()
        has_all += out.has_answer.cpu().tolist()
    return p_all, logp_all, has_all


def run_scoring_stage(*, generated_path: str | Path, checkpoint: str | Path | PolicyState,
                      samples: Mapping[str, Sample], cache: FrameCache, config: ScoringConfig, algo: str) -> dict:
    """Score the shard at ``generated_path`` under the reference of ``checkpoint`` (a checkpoint path or a
    PolicyState); write ``scored.parquet`` beside it; return a manifest with metrics. With
    ``optim.num_processes > 1`` the reference forward runs on every rank of the run's gang."""
    state = as_state(checkpoint)
    if (crew := stage_gang(state)) is not None:
        job = {"generated_path": str(generated_path), "state": state.model_dump(mode="json"),
               "config": config.model_dump(mode="json"), "algo": algo}
        return crew.call("scoring", job)[0]
    return score_shard(generated_path=generated_path, state=state, samples=samples, cache=cache, config=config,
                       algo=algo)


def score_shard(*, generated_path: str | Path, state: PolicyState, samples: Mapping[str, Sample], cache: FrameCache,
                config: ScoringConfig, algo: str, rank: int = 0, world: int = 1) -> dict:
    """The scoring stage on one process, or on rank ``rank`` of ``world``: batch ``k`` of
    ``scoring_batch_size`` rollouts goes to rank ``k % world`` (the same batches as one process, so the same
    likelihoods); rank 0 gathers them, computes rewards, bonus and advantages and writes the shard. Other ranks
    return ``{"rank", "rows", "seconds"}``."""
    started = time.perf_counter()
    generated_path = Path(generated_path)
    rows = read_rows(generated_path)
    trainer = materialise(state)  # read-only here; resident when an earlier stage of this process had it
    reference = forward_model(trainer, "reference")
    size = config.scoring_batch_size
    mine = [start for k, start in enumerate(range(0, len(rows), size)) if k % world == rank]
    parts = []
    t0 = time.perf_counter()
    with autocast(default_device(), compute_dtype(state)):
        for start in mine:
            parts.append((start, *reference_likelihoods(reference, trainer.processor, rows[start : start + size],
                                                        samples, cache, config)))
    compute = time.perf_counter() - t0  # the reference forward alone
    del reference
    if world > 1:
        gathered = gather_to_first((parts, compute), rank=rank, world=world)
        if rank != 0:
            return {"rank": rank, "rows": sum(len(p[1]) for p in parts), "seconds": time.perf_counter() - started}
        per_rank = [sum(len(p[1]) for p in part) for part, _ in gathered]
        compute = max(c for _, c in gathered)
        parts = sorted((p for part, _ in gathered for p in part), key=lambda p: p[0])
    p = [x for part in parts for x in part[1]]
    mean_logp = [x for part in parts for x in part[2]]
    has_answer = [x for part in parts for x in part[3]]
    manifest = _write_scored(generated_path, rows, p, mean_logp, has_answer, state=state, config=config, algo=algo,
                             started=started)
    manifest["compute_seconds"] = compute
    return {**manifest, "rows_per_rank": per_rank} if world > 1 else manifest


def _write_scored(generated_path: Path, rows: list[dict], p: list[float], mean_logp: list[float],
                  has_answer: list[bool], *, state: PolicyState, config: ScoringConfig, algo: str,
                  started: float) -> dict:
    """Rewards, bonus and advantages from the likelihoods; ``scored.parquet``; the manifest."""
    completions = [r["completion"] for r in rows]
    breakdown = combine_rewards(completions, [r["gold"] for r in rows], config.reward_weights)
    accuracy = torch.tensor(breakdown.components.get("accuracy", [0.0] * len(rows)), dtype=torch.float64)
    fmt = breakdown.components.get("format", [math.nan] * len(rows))
    base = torch.tensor(breakdown.total, dtype=torch.float64)
    group_ids = torch.tensor([r["group"] for r in rows], dtype=torch.long)
    p_t = torch.tensor(p, dtype=torch.float64)
    chosen = algorithm(algo)  # its estimator, and whether the bonus goes into the rewards
    if chosen.consistency_bonus:
        bonus = consistency_bonus(torch.nan_to_num(accuracy, nan=0.0), p_t, group_ids, lam=config.bonus_weight,
                                  margin=config.bonus_margin, reproduce_reference=config.reproduce_reference,
                                  prompts_per_device=config.reference_prompts_per_device)
        adv = compute_advantages(chosen.advantage, base, group_ids, bonus=bonus)
    else:
        bonus = torch.zeros_like(base)
        adv = compute_advantages(chosen.advantage, base, group_ids)
    reward = base + bonus
    ref_ckpt = state.state_id
    per_row = (time.perf_counter() - started) / max(len(rows), 1)
    scored = []
    for i, r in enumerate(rows):
        scored.append({
            "rollout_uid": r["rollout_uid"], "run_id": r["run_id"], "iteration": r["iteration"],
            "group": r["group"], "sample_index": r["sample_index"], "prediction": extract_answer(r["completion"]),
            "reward_accuracy": float(accuracy[i]), "reward_format": float(fmt[i]), "reward_base": float(base[i]),
            "has_answer_span": bool(has_answer[i]), "ref_logprob_mean": _none_if_nan(mean_logp[i]),
            "ref_likelihood": _none_if_nan(p[i]), "bonus": float(bonus[i]), "reward": float(reward[i]),
            "advantage": float(adv.advantages[i]), "reference_checkpoint": ref_ckpt, "algo": algo,
            "scoring_seconds": per_row,
        })
    failpoint("scoring", rows[0]["iteration"] if rows else None)
    path = write_rows_atomic(generated_path.parent / SCORED_FILE, scored, SCORED_SCHEMA)
    metrics = scoring_metrics(rows, scored, adv.zero_variance_groups, adv.n_groups)
    return {"path": str(path), "rows": len(scored), "seconds": time.perf_counter() - started, "metrics": metrics}


def _none_if_nan(x: float) -> float | None:
    return None if x is None or math.isnan(x) else x


def _mean(xs: list[float]) -> float:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    return sum(xs) / len(xs) if xs else math.nan


def _std(xs: list[float]) -> float:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    if len(xs) < 2:
        return math.nan
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def scoring_metrics(rows: list[dict], scored: list[dict], zero_variance_groups: int, n_groups: int) -> dict[str, float]:
    """Per-iteration metrics of the rollouts: rewards per component, bonus rate, likelihood, groups, lengths."""
    acc_by_group: dict[int, list[float]] = {}
    for s in scored:
        acc_by_group.setdefault(s["group"], []).append(s["reward_accuracy"])
    lengths = [r["completion_tokens"] for r in rows]
    metrics = {
        "reward_mean": _mean([s["reward"] for s in scored]), "reward_std": _std([s["reward"] for s in scored]),
        "bonus_rate": _mean([1.0 if s["bonus"] > 0 else 0.0 for s in scored]),
        "bonus_mean": _mean([s["bonus"] for s in scored]),
        "consistency_likelihood_mean": _mean([s["ref_likelihood"] for s in scored]),
        "answer_span_rate": _mean([1.0 if s["has_answer_span"] else 0.0 for s in scored]),
        "frac_all_correct_groups": _mean([1.0 if min(a) >= 1.0 else 0.0 for a in acc_by_group.values()]),
        "frac_all_wrong_groups": _mean([1.0 if max(a) <= 0.0 else 0.0 for a in acc_by_group.values()]),
        "frac_zero_std_groups": zero_variance_groups / max(n_groups, 1),
        "completion_length_mean": _mean(lengths), "completion_length_max": float(max(lengths, default=0)),
        "truncation_rate": _mean([1.0 if r["truncated"] else 0.0 for r in rows]),
    }
    for name in ("reward_accuracy", "reward_format", "reward_base"):
        values = [s[name] for s in scored]
        metrics[f"{name}_mean"], metrics[f"{name}_std"] = _mean(values), _std(values)
    return metrics
