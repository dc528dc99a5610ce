"""The rollout stage: G completions per prompt from the current policy, written as a Parquet shard.

Reads frames only from the frame cache. For each chunk of ``generation_batch_prompts`` prompts: encode the
prompts, sample G completions each (seeded per chunk from the run seed and iteration, so a re-run samples the
same tokens) and keep the behaviour log-probs of the sampled tokens: recorded by the sampler
(``behaviour_logprobs="sampler"``), or from one more forward pass that applies the LM head only at completion
positions (``"forward"``: ``care.algo.likelihood.token_log_probs``, the same function the update uses).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from care.algo.likelihood import token_log_probs
from care.algo.prompt import build_messages, prompt_template
from care.data.schema import Sample
from care.failpoints import failpoint
from care.media.frame_cache import FrameCache
from care.models.generation import Completion, Decoding, chunk_seed, sample_completions
from care.models.inputs import (
    PromptItem,
    completion_target_mask,
    encode_prompt_completions,
    encode_prompts,
    model_inputs,
)
from care.models.loading import load_processor, stop_token_ids, suppressed_token_ids
from care.models.rollout_config import RolloutConfig, SamplingParams
from care.models.samples import prompt_items
from care.models.vllm_backend import generate_vllm, logprob_gap, vllm_prompt_seeds
from care.store.rollout_log import GENERATED_FILE, GENERATED_SCHEMA, read_rows, rollout_uid, write_rows_atomic
from care.train.gang import stage_gang
from care.train.ranks import forward_model, gather_to_first
from care.train.replay import compute_dtype, materialise
from care.train.state import PolicyState, as_state
from care.train.toolkit import autocast


@torch.no_grad()
def behaviour_logprobs(model, processor, items, rates, completion_ids, *, temperature: float) -> list[list[float]]:
    """Log-probs of each sampled token under ``model`` (the behaviour policy), one list per completion."""
    batch = encode_prompt_completions(processor, items, completion_ids, fps=rates)
    device = next(model.parameters()).device
    inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in model_inputs(batch).items()}
    mask = completion_target_mask(batch).to(device)
    logp = token_log_probs(model, inputs, mask, temperature=temperature,
                           shared_prompts=batch["shared_prompts"]).logp[:, batch["prompt_length"]:]
    return [logp[i, : len(ids)].tolist() for i, ids in enumerate(completion_ids)]


def rollout_rows(*, run_id: str, iteration: int, first_group: int, samples: Sequence[Sample],
                 completions: Sequence[Completion], logprobs: Sequence[Sequence[float]],
                 prompt_tokens: Sequence[int], seeds: Sequence[int], checkpoint: str, backend: str,
                 sampling: SamplingParams, seconds: float, prompt: str = "care") -> list[dict]:
    """One ``GENERATED_SCHEMA`` row per completion; shared by every backend so the shards are alike.

    ``prompt``: the rollout config's prompt option; its training template's id and version are recorded.

    ``samples[k]`` is group ``first_group + k``; ``completions[i].prompt_index`` indexes ``samples``;
    ``prompt_tokens[k]`` and ``seeds[k]`` are per prompt; ``logprobs[i]`` belongs to ``completions[i]``;
    ``seconds`` is the generation time per completion.
    """
    template = prompt_template(prompt, "train")
    rows = []
    for c, lp in zip(completions, logprobs, strict=True):
        sample = samples[c.prompt_index]
        g = first_group + c.prompt_index
        rows.append({
            "rollout_uid": rollout_uid(run_id, iteration, g, c.sample_index), "run_id": run_id,
            "iteration": iteration, "group": g, "sample_index": c.sample_index,
            "sample_id": sample.sample_id, "split": sample.split, "gold": sample.answer,
            "options": list(sample.options), "question": sample.question, "prompt_version": template.version,
            "prompt_template": template.template_id,
            "policy_checkpoint": checkpoint, "backend": backend, "seed": int(seeds[c.prompt_index]),
            "temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": sampling.top_k,
            "max_new_tokens": sampling.max_new_tokens, "prompt_tokens": int(prompt_tokens[c.prompt_index]),
            "completion_tokens": len(c.token_ids), "truncated": c.truncated, "completion": c.text,
            "completion_ids": list(c.token_ids), "behaviour_logprobs": list(lp), "generation_seconds": seconds,
        })
    return rows


def write_generated(out_dir: str | Path, rows: Sequence[dict], *, prompts: int, started: float) -> dict:
    """Write ``generated.parquet`` atomically; the stage manifest (path, rows, prompts, seconds, tokens)."""
    failpoint("rollout", rows[0]["iteration"] if rows else None)
    path = write_rows_atomic(Path(out_dir) / GENERATED_FILE, rows, GENERATED_SCHEMA)
    return {"path": str(path), "rows": len(rows), "prompts": prompts, "seconds": time.perf_counter() - started,
            "completion_tokens": sum(r["completion_tokens"] for r in rows)}


def run_rollout_stage(*, run_id: str, iteration: int, checkpoint: str | Path | PolicyState,
                      samples: Sequence[Sample], cache: FrameCache, config: RolloutConfig, seed: int,
                      out_dir: str | Path) -> dict:
    """Sample ``config.group_size`` completions for each of ``samples`` from the policy of ``checkpoint`` (a
    checkpoint path or a PolicyState); write ``generated.parquet``. With ``optim.num_processes > 1`` the hf
    backend runs on every rank of the run's gang (``care.train.gang``), each taking its share of the chunks.

    Returns a small manifest: the shard path, row count and timings.
    """
    if config.backend != "hf":
        return _vllm_rollouts(run_id=run_id, iteration=iteration, state=as_state(checkpoint), samples=samples,
                              cache=cache, config=config, seed=seed, out_dir=Path(out_dir))
    state = as_state(checkpoint)
    if (crew := stage_gang(state)) is not None:
        job = {"run_id": run_id, "iteration": iteration, "state": state.model_dump(mode="json"),
               "sample_ids": [s.sample_id for s in samples], "config": config.model_dump(mode="json"),
               "seed": seed, "out_dir": str(out_dir)}
        return crew.call("rollout", job)[0]
    return hf_rollouts(run_id=run_id, iteration=iteration, state=state, samples=samples, cache=cache,
                       config=config, seed=seed, out_dir=out_dir)


def hf_rollouts(*, run_id: str, iteration: int, state: PolicyState, samples: Sequence[Sample], cache: FrameCache,
                config: RolloutConfig, seed: int, out_dir: str | Path, rank: int = 0, world: int = 1) -> dict:
    """The hf backend on one process, or on rank ``rank`` of ``world``: chunk ``k`` of
    ``generation_batch_prompts`` prompts is sampled by rank ``k % world`` with the same seed and the same
    batch as in one process, so the rows are the one-process rows (tested); rank 0 gathers them and writes
    the shard. Other ranks return ``{"rank", "rows", "chunks", "seconds"}``."""
    started = time.perf_counter()
    trainer = materialise(state)  # shared with the other stages of this process, read-only
    model, processor = forward_model(trainer, "policy"), trainer.processor
    dtype = compute_dtype(state)
    tokenizer = processor.tokenizer
    device = next(model.parameters()).device
    s = config.sampling
    decoding = Decoding(temperature=s.temperature, top_p=s.top_p, top_k=s.top_k, max_new_tokens=s.max_new_tokens)
    stop = stop_token_ids(processor, s.eos)
    suppress = suppressed_token_ids(processor, stop=stop)
    template = prompt_template(config.prompt, "train")
    ckpt = state.state_id
    from_sampler = config.behaviour_logprobs != "forward"  # an unresolved 'auto' (stage called alone): sampler
    rows: list[dict] = []
    step = config.generation_batch_prompts
    mine = [(chunk, start) for chunk, start in enumerate(range(0, len(samples), step)) if chunk % world == rank]
    compute = 0.0  # sampling and behaviour log-probs only: no model rebuild, no gather, no write
    for chunk, start in mine:
        group = list(samples[start : start + step])
        t0 = time.perf_counter()
        items, rates = prompt_items(group, cache, template=template)
        enc = encode_prompts(processor, items, fps=rates)
        inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in enc.items()}
        with autocast(device, dtype):
            completions = sample_completions(
                model, inputs, tokenizer, group_size=config.group_size, decoding=decoding,
                seed=chunk_seed(seed, iteration, chunk), eos_token_ids=stop,
                pad_token_id=tokenizer.pad_token_id, suppress_token_ids=suppress, record_logprobs=from_sampler,
            )
        if from_sampler:
            logps = [list(c.logprobs) for c in completions]
        else:
            with autocast(device, dtype):
                logps = behaviour_logprobs(model, processor, [items[c.prompt_index] for c in completions],
                                           [rates[c.prompt_index] for c in completions],
                                           [c.token_ids for c in completions], temperature=s.temperature)
        compute += time.perf_counter() - t0
        seconds = (time.perf_counter() - t0) / max(len(completions), 1)
        rows += rollout_rows(
            run_id=run_id, iteration=iteration, first_group=start, samples=group, completions=completions,
            logprobs=logps, prompt_tokens=enc["attention_mask"].sum(dim=1).tolist(),
            seeds=[chunk_seed(seed, iteration, chunk)] * len(group), checkpoint=ckpt, backend="hf", sampling=s,
            seconds=seconds, prompt=config.prompt,
        )
    del model
    if world > 1:
        gathered = gather_to_first((rows, compute), rank=rank, world=world)
        if rank != 0:
            return {"rank": rank, "rows": len(rows), "chunks": [c for c, _ in mine],
                    "seconds": time.perf_counter() - started}
        rows = sorted((r for part, _ in gathered for r in part), key=lambda r: (r["group"], r["sample_index"]))
        return {**write_generated(out_dir, rows, prompts=len(samples), started=started),
                "rows_per_rank": [len(part) for part, _ in gathered],
                "compute_seconds": max(c for _, c in gathered)}  # the ranks sample at the same time
    return {**write_generated(out_dir, rows, prompts=len(samples), started=started), "compute_seconds": compute}


def _vllm_rollouts(*, run_id: str, iteration: int, state: PolicyState, samples: Sequence[Sample],
                   cache: FrameCache, config: RolloutConfig, seed: int, out_dir: Path) -> dict:
    """vLLM reads a model folder: the state's checkpoint, or (between checkpoints) a policy-only folder written
    from the resident state for this stage and removed after it (the weights, not the optimizer: a third of a
    checkpoint's bytes).

    With ``config.vllm_resident`` one engine serves all the stages of the run: its scratch folder is
    ``out_dir.parent/.vllm-engine`` (next to the run's iteration folders, so it outlives each iteration; a short
    path is not needed, the engine's sockets are relative to its working directory), and it refreshes its
    weights from the folder of each stage whose weights differ from what it holds. The flow stops it at the
    end of the run (``care.models.vllm_backend.close_engines``)."""
    import shutil

    from care.models.vllm_backend import ENGINE_DIR
    from care.train.policy_io import policy_path
    from care.train.state import checkpoint_path

    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    folder = checkpoint_path(state)
    scratch = None
    if folder is None:  # between checkpoints the state lives in the resident trainer only
        # One folder per state in the iteration's folder, removed once the engine has read it, rather than one
        # refresh folder per run rewritten each iteration: the bytes written are the same either way (a
        # save_pretrained per iteration), a per-state folder appears complete or not at all (save_checkpoint
        # renames it into place) and its name never stands for two different sets of weights, and vLLM keeps
        # nothing of it after a start or a refresh (it reads the weights into the engine; tested), so disk
        # use stays at one policy copy during the stage, as with a fresh engine per stage.
        scratch = folder = out_dir / f".policy-{state.state_id}"
        if (crew := stage_gang(state)) is not None:  # the state is in the gang's ranks: rank 0 writes it
            crew.call("export_policy", {"state": state.model_dump(mode="json"), "folder": str(folder)})
        else:
            export_policy(state, folder)
    # otherwise nothing model-sized is loaded here before the engine has generated: on a GPU, vLLM takes its
    # memory share for weights and KV cache while it runs (a fresh engine exits afterwards, a resident one
    # sleeps, giving the memory back to this process's HF forward and the optimisation stage)
    processor = load_processor(policy_path(folder))
    items, rates = prompt_items(list(samples), cache, template=prompt_template(config.prompt, "train"))
    seeds = vllm_prompt_seeds(seed, iteration, len(samples), config.group_size)
    try:
        generation = generate_vllm(processor, items, rates, seeds=seeds, model_dir=policy_path(folder),
                                   config=config, seed=seed, work_dir=out_dir, engine_dir=out_dir.parent / ENGINE_DIR)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    tail = {"run_id": run_id, "iteration": iteration, "prompt_tokens": generation.prompt_tokens, "seeds": seeds,
            "backend": "vllm", "seconds_per_completion": generation.seconds / max(len(generation.completions), 1)}
    if (crew := stage_gang(state)) is not None:  # behaviour log-probs on every rank, from a completions file
        listing = write_completions(out_dir / COMPLETIONS_FILE, generation.completions)
        job = {**tail, "state": state.model_dump(mode="json"), "sample_ids": [x.sample_id for x in samples],
               "config": config.model_dump(mode="json"), "completions": str(listing), "out_dir": str(out_dir),
               "elapsed": time.perf_counter() - started}
        try:
            manifest = crew.call("behaviour_tail", job)[0]
        finally:
            listing.unlink(missing_ok=True)
        behaviour = [r["behaviour_logprobs"] for r in read_rows(Path(manifest["path"]))]
        manifest["engine_logprob_gap"] = logprob_gap(behaviour, generation.engine_logprobs)
    else:
        manifest = shard_from_completions(
            state=state, samples=samples, items=items, rates=rates, completions=generation.completions,
            config=config, out_dir=out_dir, started=started, engine_logprobs=generation.engine_logprobs, **tail)
    engine = {"vllm_engine": generation.engine_name, "vllm_engine_pid": generation.engine_pid,
              "vllm_start_seconds": generation.start_seconds, "vllm_refresh_seconds": generation.refresh_seconds,
              "vllm_refreshed": generation.refreshed} if config.vllm_resident else {}
    return {**manifest, "generation_seconds": generation.seconds, "vllm_device": generation.engine.device,
            "vllm_dtype": generation.engine.dtype, "vllm_enforce_eager": generation.engine.enforce_eager,
            "vllm_resident": config.vllm_resident, **engine}


def with_template(items: Sequence[PromptItem], samples: Sequence[Sample], template) -> list[PromptItem]:
    """``items`` (one per sample) with their text rebuilt from ``template``, visual inputs kept: the behaviour
    log-probs are those of the prompt that was sampled, whoever built the items."""
    out = []
    for item, sample in zip(items, samples, strict=True):
        messages = build_messages(sample.question, sample.options, has_video=item.video is not None,
                                  has_image=item.image is not None, template=template)
        out.append(PromptItem(messages=messages, video=item.video, image=item.image,
                              seconds_per_grid=item.seconds_per_grid))
    return out


COMPLETIONS_FILE = ".completions.json"  # an engine's completions, for the gang's ranks (removed after the tail)


def export_policy(state: PolicyState, folder: str | Path, *, rank: int = 0, world: int = 1) -> Path:
    """The policy of ``state`` as a model folder an engine reads (weights and processor, no optimizer): written
    by rank 0; under FSDP2 the ranks first gather the full weights (a collective)."""
    from care.train.checkpoint import TrainingState, save_checkpoint

    trainer = materialise(state)
    model = forward_model(trainer, "policy")
    if rank == 0:
        save_checkpoint(folder, policy=model, processor=trainer.processor,
                        state=TrainingState(step=trainer.step, iteration=trainer.iteration,
                                            extra={"state_id": state.state_id}))
    if world > 1:
        import torch.distributed as dist

        dist.barrier()  # the folder is complete before any rank reports the stage done
    return Path(folder)


def write_completions(path: Path, completions: Sequence[Completion]) -> Path:
    """Completions as JSON (token ids, text, flags), for ranks that rebuild them (``read_completions``)."""
    path.write_text(json.dumps([[c.prompt_index, c.sample_index, list(c.token_ids), c.text, c.truncated]
                                for c in completions]))
    return path


def read_completions(path: str | Path) -> list[Completion]:
    return [Completion(prompt_index=p, sample_index=i, token_ids=tuple(ids), text=text, truncated=truncated)
            for p, i, ids, text, truncated in json.loads(Path(path).read_text())]


def shard_from_completions(*, run_id: str, iteration: int, state: str | Path | PolicyState,
                           samples: Sequence[Sample], items: Sequence[PromptItem], rates: Sequence[float | None],
                           completions: Sequence[Completion], prompt_tokens: Sequence[int], seeds: Sequence[int],
                           config: RolloutConfig, backend: str, seconds_per_completion: float, out_dir: str | Path,
                           started: float, engine_logprobs: Sequence[Sequence[float]] | None = None,
                           rank: int = 0, world: int = 1) -> dict:
    """The tail every engine's completions go through: behaviour log-probs from the HF policy of ``state``
    (``generation_batch_prompts`` prompts per forward, in the update's compute dtype), then the shard. On rank
    ``rank`` of ``world``: chunk ``k`` of prompts is this rank's when ``k % world == rank``; rank 0 gathers
    the log-probs and writes the shard (other ranks return ``{"rank", "rows"}``).

    Returns the stage manifest, plus ``engine_logprob_gap`` when the engine's own log-probs are given
    (meaningful at temperature 1: vLLM returns log-probs of the raw logits, before temperature and logit_bias).
    """
    state = as_state(state)
    items = with_template(items, samples, prompt_template(config.prompt, "train"))
    trainer = materialise(state)
    model, processor = forward_model(trainer, "policy"), trainer.processor
    device, dtype = next(model.parameters()).device, compute_dtype(state)
    by_prompt: dict[int, list[int]] = {}
    for n, c in enumerate(completions):
        by_prompt.setdefault(c.prompt_index, []).append(n)
    mine: list[tuple[int, list[float]]] = []
    step = config.generation_batch_prompts
    for chunk_index, start in enumerate(range(0, len(items), step)):
        idx = [n for k in range(start, min(start + step, len(items))) for n in by_prompt.get(k, [])]
        if not idx or chunk_index % world != rank:
            continue
        with autocast(device, dtype):
            chunk = behaviour_logprobs(model, processor, [items[completions[n].prompt_index] for n in idx],
                                       [rates[completions[n].prompt_index] for n in idx],
                                       [completions[n].token_ids for n in idx],
                                       temperature=config.sampling.temperature)
        mine += list(zip(idx, chunk, strict=True))
    del model
    if world > 1:
        gathered = gather_to_first(mine, rank=rank, world=world)
        if rank != 0:
            return {"rank": rank, "rows": len(mine)}
        mine = [pair for part in gathered for pair in part]
    logps: list[list[float]] = [[] for _ in completions]
    for n, lp in mine:
        logps[n] = lp
    rows = rollout_rows(run_id=run_id, iteration=iteration, first_group=0, samples=list(samples),
                        completions=completions, logprobs=logps, prompt_tokens=prompt_tokens, seeds=seeds,
                        checkpoint=state.state_id, backend=backend, sampling=config.sampling,
                        seconds=seconds_per_completion, prompt=config.prompt)
    manifest = write_generated(out_dir, rows, prompts=len(samples), started=started)
    if engine_logprobs is not None:
        manifest["engine_logprob_gap"] = logprob_gap(logps, engine_logprobs)
    return manifest
