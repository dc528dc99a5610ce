"""Every RL-step optimisation leaves the numbers unchanged: the same tensors, log-probs, likelihoods, losses and
weights as the unoptimised path, on the tiny model and the demo set.

- ``encode_prompts`` processes a prompt repeated for its G rollouts once (``_repeat_rows``);
- the stages share one read of each sample's frames (``shared_prompt_items``);
- models, and the optimizer with its state, stay warm across stages of one process (``care.train.warm``) instead
  of being reloaded;
- behaviour log-probs are recorded while sampling instead of by a second forward pass;
- the G rollouts of a prompt share one pass over the prompt (``care.models.shared_prompts``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from care.algo.likelihood import token_log_probs
from care.models.generation import Decoding, sample_completions
from care.models.inputs import completion_target_mask, encode_prompt_completions, encode_prompts, model_inputs
from care.models.loading import (
    enable_activation_checkpointing,
    load_model,
    load_processor,
    suppressed_token_ids,
)
from care.models.rollout_config import RolloutConfig, SamplingParams
from care.models.samples import prompt_items, shared_prompt_items
from care.store.rollout_log import read_rows
from care.train import warm
from care.train.checkpoint import make_initial_checkpoint
from care.train.config import OptimConfig, RLConfig, ScoringConfig
from care.train.optimise import load_scored_batch
from care.train.optimise_stage import optimise
from care.train.replay import materialise
from care.train.rollout import behaviour_logprobs, run_rollout_stage
from care.train.scoring import run_scoring_stage
from tests.rl_helpers import cache_demo

G, P, MAX_NEW = 3, 2, 12


@pytest.fixture(scope="module")
def setup(tmp_path_factory, demo_root, tiny_model_dir):
    home = tmp_path_factory.mktemp("perf_home")
    data = cache_demo(home, demo_root)
    samples = data.load().samples
    return {"home": home, "data": data, "samples": samples, "model": tiny_model_dir,
            "processor": load_processor(tiny_model_dir)}


def _copies(items):
    """The same prompts as distinct objects with copied arrays: the per-row (unoptimised) encoding path."""
    return [dataclasses.replace(i, video=None if i.video is None else np.copy(i.video),
                                image=None if i.image is None else np.copy(i.image)) for i in items]


@pytest.mark.parametrize("video", [True, False])
def test_repeated_prompts_encode_exactly_like_separate_ones(setup, video):
    chosen = [s for s in setup["samples"] if s.video][:P]
    if not video:
        chosen = [dataclasses.replace(s, video=None) for s in chosen]
    rows = [s for s in chosen for _ in range(G)]
    shared, rates = shared_prompt_items(rows, setup["data"].cache())
    assert len({id(i) for i in shared}) == P  # one object per distinct prompt
    separate, rates_sep = prompt_items(rows, setup["data"].cache())
    assert rates == rates_sep
    a = encode_prompts(setup["processor"], shared, fps=rates)
    b = encode_prompts(setup["processor"], separate, fps=rates)
    assert set(a.keys()) == set(b.keys())
    for k in b:
        assert torch.equal(a[k], b[k]), k
    # repeated objects in a shuffled order, mixed with a distinct copy
    order = [1, 0, 0, 1, 1, 0]
    mixed = [shared[0] if o == 0 else shared[G] for o in order] + _copies(shared[:1])
    fps = [rates[0] if o == 0 else rates[G] for o in order] + rates[:1]
    a = encode_prompts(setup["processor"], mixed, fps=fps)
    b = encode_prompts(setup["processor"], _copies(mixed), fps=fps)
    for k in b:
        assert torch.equal(a[k], b[k]), k


def test_log_probs_of_a_shared_prompt_batch_are_unchanged(setup):
    model = load_model(setup["model"])
    rows = [s for s in setup["samples"] if s.video][:P]
    rows = [s for s in rows for _ in range(G)]
    shared, rates = shared_prompt_items(rows, setup["data"].cache())
    gen = torch.Generator().manual_seed(0)
    completions = [torch.randint(20, 200, (int(n),), generator=gen).tolist() for n in torch.randint(3, 9, (len(rows),))]
    out = []
    for items in (shared, _copies(shared)):
        batch = encode_prompt_completions(setup["processor"], items, completions, fps=rates)
        with torch.no_grad():
            out.append(token_log_probs(model, model_inputs(batch), completion_target_mask(batch)).logp)
    torch.testing.assert_close(out[0], out[1], rtol=0, atol=0)


def _two_iterations(setup, tag: str) -> dict:
    """Two RL iterations in this process: rollout, scoring, optimisation; everything they produced."""
    home, data = setup["home"] / tag, setup["data"]
    ck = make_initial_checkpoint(setup["model"], home / "ck0")
    by_id = {s.sample_id: s for s in setup["samples"]}
    rollout = RolloutConfig(group_size=G, prompts_per_iteration=P, sampling=SamplingParams(max_new_tokens=MAX_NEW))
    optim = OptimConfig(learning_rate=1e-2, micro_batch_size=4, ema_every=1, ema_decay=0.5, lr_scheduler="constant")
    result = {"generated": [], "scored": [], "losses": []}
    for it in range(2):
        batch = setup["samples"][it * P : (it + 1) * P]
        gen = run_rollout_stage(run_id="eq", iteration=it, checkpoint=ck, samples=batch, cache=data.cache(),
                                config=rollout, seed=3, out_dir=home / f"it{it}")
        sc = run_scoring_stage(generated_path=gen["path"], checkpoint=ck, samples=by_id, cache=data.cache(),
                               config=ScoringConfig(), algo="grpo_care")
        rows = load_scored_batch(gen["path"], sc["path"])
        for i, r in enumerate(rows):  # a random model earns no reward: give the update a signal
            r["advantage"] = 1.0 if i % 2 else -1.0
        res = optimise(checkpoint_in=ck, checkpoint_out=home / f"ck{it + 1}", rows=rows, samples=by_id,
                       cache=data.cache(), config=optim, total_steps=2, temperature=1.0, max_new_tokens=MAX_NEW,
                       iteration=it)
        ck = Path(res["checkpoint"])
        result["generated"] += [(r["completion_ids"], r["behaviour_logprobs"]) for r in read_rows(Path(gen["path"]))]
        result["scored"] += [(r["ref_likelihood"], r["ref_logprob_mean"]) for r in read_rows(Path(sc["path"]))]
        result["losses"] += [(s["loss"], s["grad_norm"]) for s in res["steps"]]
    result["policy"] = load_file(ck / "policy" / "model.safetensors")
    result["reference"] = load_file(ck / "reference" / "model.safetensors")
    return result


def test_warm_models_give_the_numbers_of_reloaded_ones(setup, monkeypatch):
    import care.train.trainer as trainer_module

    restored = []  # optimizer states read back from checkpoint files
    load_state = trainer_module.load_checkpoint_state
    monkeypatch.setattr(trainer_module, "load_checkpoint_state",
                        lambda *a, **k: restored.append(a[0]) or load_state(*a, **k))
    monkeypatch.setenv("CARE_WARM_MODELS", "0")
    cold = _two_iterations(setup, "cold")
    assert len(restored) == 1  # iteration 2 restores iteration 1's optimizer state from its checkpoint
    monkeypatch.setenv("CARE_WARM_MODELS", "1")
    warm.clear()
    hot = _two_iterations(setup, "warm")
    warm.clear()
    assert len(restored) == 1  # warm: iteration 2 continued with the optimizer object iteration 1 saved
    assert [g[0] for g in hot["generated"]] == [g[0] for g in cold["generated"]]  # same sampled tokens
    for (_, a), (_, b) in zip(hot["generated"], cold["generated"], strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.array(hot["scored"], dtype=float), np.array(cold["scored"], dtype=float),
                               rtol=0, atol=1e-6, equal_nan=True)
    np.testing.assert_allclose(hot["losses"], cold["losses"], rtol=1e-6, atol=1e-7)
    for which in ("policy", "reference"):
        for k in cold[which]:
            torch.testing.assert_close(hot[which][k], cold[which][k], rtol=0, atol=1e-6, msg=f"{which} {k}")


def test_warm_cache_hands_over_models_by_content(setup, monkeypatch):
    monkeypatch.setenv("CARE_WARM_MODELS", "1")
    warm.clear()
    ck = make_initial_checkpoint(setup["model"], setup["home"] / "warm-ck")
    trainer = materialise(ck)
    assert materialise(ck) is trainer  # shared, not reloaded
    assert trainer.policy.dtype == torch.float32 and trainer.reference.dtype == torch.float32  # master weights
    taken = materialise(ck, take=True)
    assert taken is trainer and materialise(ck) is not trainer  # taken out: the next user loads a fresh copy
    warm.clear()


@pytest.mark.parametrize("vocab", [7, 436, 151_936])
def test_blocked_logsumexp_equals_the_per_row_one(vocab):
    from care.algo.likelihood import selective_log_softmax

    gen = torch.Generator().manual_seed(vocab)
    rows = 40 if vocab > 1000 else 700
    logits = torch.randn(rows, vocab, generator=gen) * 3
    index = torch.randint(0, vocab, (rows,), generator=gen)
    per_row = torch.gather(logits, -1, index[:, None])[:, 0] - torch.stack([torch.logsumexp(r, -1) for r in logits])
    torch.testing.assert_close(selective_log_softmax(logits, index), per_row, rtol=0, atol=1e-6)
    torch.testing.assert_close(selective_log_softmax(logits, index),
                               torch.log_softmax(logits, -1).gather(-1, index[:, None])[:, 0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("video", [True, False])
def test_sampler_log_probs_equal_a_forward_pass(setup, temperature, video):
    """Recorded while sampling (KV cache, left-padded prompts, top-k / top-p / suppression active) equals the
    update's own function over prompt + completion, and recording does not change what is sampled."""
    model, processor = load_model(setup["model"]), setup["processor"]
    tok = processor.tokenizer
    # an untrained model rarely samples EOS: raise its logit so rows end at different lengths (padding after EOS)
    eos_boost = torch.zeros(model.get_output_embeddings().out_features)
    eos_boost[tok.eos_token_id] = 2.0
    model.get_output_embeddings().register_forward_hook(lambda module, args, out: out + eos_boost)
    chosen = [s for s in setup["samples"] if s.video][:P]
    if not video:
        chosen = [dataclasses.replace(s, video=None) for s in chosen]
    items, rates = shared_prompt_items(chosen, setup["data"].cache())
    enc = encode_prompts(processor, items, fps=rates)
    decoding = Decoding(temperature=temperature, top_p=0.9, top_k=20, max_new_tokens=24)
    kwargs = {"group_size": G, "decoding": decoding, "seed": 5, "eos_token_ids": [tok.eos_token_id],
              "pad_token_id": tok.pad_token_id, "suppress_token_ids": suppressed_token_ids(processor)}
    recorded = sample_completions(model, enc, tok, record_logprobs=True, **kwargs)
    plain = sample_completions(model, enc, tok, **kwargs)
    assert [c.token_ids for c in recorded] == [c.token_ids for c in plain]
    assert all(c.logprobs is None for c in plain)
    forward = behaviour_logprobs(model, processor, [items[c.prompt_index] for c in recorded],
                                 [rates[c.prompt_index] for c in recorded], [c.token_ids for c in recorded],
                                 temperature=temperature)
    for c, f in zip(recorded, forward, strict=True):
        assert len(c.logprobs) == len(c.token_ids) == len(f)
        np.testing.assert_allclose(c.logprobs, f, rtol=0, atol=1e-5)
    lengths = {len(c.token_ids) for c in recorded}
    assert len(lengths) > 1 and max(lengths) <= decoding.max_new_tokens, lengths  # rows ended at EOS, unequally


def test_rollout_stage_log_probs_from_sampler_equal_forward(setup):
    """The rollout stage with either source writes the same shard (tokens exact, log-probs to float rounding)."""
    ck = make_initial_checkpoint(setup["model"], setup["home"] / "source-ck")
    shards = {}
    for source in ("sampler", "forward"):
        config = RolloutConfig(group_size=G, prompts_per_iteration=P, behaviour_logprobs=source,
                               sampling=SamplingParams(max_new_tokens=MAX_NEW))
        gen = run_rollout_stage(run_id="src", iteration=0, checkpoint=ck, samples=setup["samples"][:P],
                                cache=setup["data"].cache(), config=config, seed=1,
                                out_dir=setup["home"] / f"source-{source}")
        shards[source] = read_rows(Path(gen["path"]))
    for a, b in zip(shards["sampler"], shards["forward"], strict=True):
        assert a["completion_ids"] == b["completion_ids"]
        np.testing.assert_allclose(a["behaviour_logprobs"], b["behaviour_logprobs"], rtol=0, atol=1e-5)


@pytest.mark.parametrize(("steps", "given", "expected"), [
    (1, None, "sampler"), (3, None, "forward"), (1, "auto", "sampler"), (3, "sampler", "sampler"),
    (1, "forward", "forward"),
])
def test_rl_config_resolves_the_behaviour_log_prob_source(steps, given, expected):
    rollout = {} if given is None else {"behaviour_logprobs": given}
    as_dicts = RLConfig.model_validate({"model": "m", "data_root": "d", "rollout": rollout,
                                        "optim": {"steps_per_generation": steps}})
    as_models = RLConfig(model="m", data_root="d", rollout=RolloutConfig(**rollout),
                         optim=OptimConfig(steps_per_generation=steps))
    assert as_dicts.rollout.behaviour_logprobs == as_models.rollout.behaviour_logprobs == expected


def _shared_prompt_batch(setup, video: bool):
    chosen = [s for s in setup["samples"] if s.video][:P]
    if not video:
        chosen = [dataclasses.replace(s, video=None) for s in chosen]
    rows = [s for s in chosen for _ in range(G)]
    items, rates = shared_prompt_items(rows, setup["data"].cache())
    gen = torch.Generator().manual_seed(1)
    completions = [torch.randint(20, 200, (int(n),), generator=gen).tolist()
                   for n in torch.randint(3, 10, (len(rows),), generator=gen)]
    return encode_prompt_completions(setup["processor"], items, completions, fps=rates)


def _log_probs_and_grads(model, batch, shared):
    model.zero_grad(set_to_none=True)
    out = token_log_probs(model, model_inputs(batch), completion_target_mask(batch), temperature=0.9,
                          with_entropy=True, shared_prompts=batch["shared_prompts"] if shared else None)
    (out.logp.sum() + 0.1 * out.entropy.sum()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.logp.detach(), out.entropy.detach(), grads


@pytest.mark.parametrize("video", [True, False])
def test_shared_prompt_pass_gives_the_single_pass_numbers_and_gradients(setup, video):
    batch = _shared_prompt_batch(setup, video)
    shared = batch["shared_prompts"]
    assert shared is not None and shared.inputs["input_ids"].shape[0] == P and shared.rows.tolist() == \
        [k for k in range(P) for _ in range(G)]
    model = load_model(setup["model"])
    model.train()
    logp, entropy, grads = _log_probs_and_grads(model, batch, shared=False)
    logp_s, entropy_s, grads_s = _log_probs_and_grads(model, batch, shared=True)
    torch.testing.assert_close(logp_s, logp, rtol=0, atol=1e-5)
    torch.testing.assert_close(entropy_s, entropy, rtol=0, atol=1e-5)
    assert set(grads_s) == set(grads)
    assert any(name.startswith("model.visual") for name in grads)  # the vision tower is trained through the cache
    for name, g in grads.items():
        torch.testing.assert_close(grads_s[name], g, rtol=1e-4, atol=1e-5, msg=name)


def test_shared_prompt_pass_runs_the_prompt_once_per_distinct_prompt(setup):
    batch = _shared_prompt_batch(setup, video=True)
    model = load_model(setup["model"])
    seen = []
    model.model.register_forward_hook(lambda module, args, kwargs, out: seen.append(kwargs["input_ids"].shape),
                                      with_kwargs=True)
    with torch.no_grad():
        token_log_probs(model, model_inputs(batch), completion_target_mask(batch),
                        shared_prompts=batch["shared_prompts"])
    p, c = batch["prompt_length"], batch["completion_ids"].shape[1]
    assert seen == [torch.Size([P, p]), torch.Size([P * G, c])]


def test_shared_prompts_fall_back_to_the_single_pass_where_they_cannot_apply(setup):
    batch = _shared_prompt_batch(setup, video=True)
    model = load_model(setup["model"])
    enable_activation_checkpointing(model)
    model.train()
    assert not batch["shared_prompts"].applies(model.model, model_inputs(batch))
    logp, _, _ = _log_probs_and_grads(model, batch, shared=True)
    model.activation_checkpointing_disable()
    reference, _, _ = _log_probs_and_grads(model, batch, shared=False)
    torch.testing.assert_close(logp, reference, rtol=0, atol=1e-6)
    # distinct prompts only: nothing to share
    items, rates = shared_prompt_items(setup["samples"][:P], setup["data"].cache())
    assert encode_prompt_completions(setup["processor"], items, [[30, 31]] * P, fps=rates)["shared_prompts"] is None
    # a target inside the prompt cannot be scored from the shared pass
    target = completion_target_mask(batch)
    target[:, batch["prompt_length"] - 1] = True
    with pytest.raises(ValueError, match="after the prompt"), torch.no_grad():
        token_log_probs(model, model_inputs(batch), target, shared_prompts=batch["shared_prompts"])
