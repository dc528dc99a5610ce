"""Numerics of training at real scale, on the tiny model: fp32 master weights, fp32 EMA, bf16 autocast.

- An update from a bf16 checkpoint equals the update from its exact fp32 upcast (compute in fp32), and changes
  nearly every weight at lr 1e-6; on bf16 weights the same step changed 2.4 % of them.
- An EMA step ``(1 - decay) * diff`` with a diff of ~1e-5 is kept in the fp32 reference (lost in bf16).
- ``precision: bf16`` really runs the forward under bf16 autocast on CPU, in RL and in SFT, and the weights,
  the reference and the AdamW moments stay fp32.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from care.algo.ema import ema_update
from care.models.loading import load_model, load_processor
from care.models.rollout_config import RolloutConfig, SamplingParams
from care.store.rollout_log import SCORED_SCHEMA, read_rows, write_rows_atomic
from care.train import warm
from care.train.checkpoint import make_initial_checkpoint
from care.train.config import OptimConfig, ScoringConfig
from care.train.optimise_stage import run_optimisation_stage
from care.train.replay import materialise
from care.train.rollout import run_rollout_stage
from care.train.scoring import run_scoring_stage
from care.train.sft import PromptStore, sft_optimizer, sft_samples, sft_step
from care.train.sft_config import SFTConfig
from tests.rl_helpers import SAMPLING, cache_demo

G, P, MAX_NEW = 4, 2, 12


@pytest.fixture(scope="module")
def setup(tmp_path_factory, demo_root, tiny_model_dir):
    """A bf16 copy of the tiny model, its exact fp32 upcast, and one scored batch (advantages +-1)."""
    home = tmp_path_factory.mktemp("numerics")
    data = cache_demo(home, demo_root, files=("training_6k.jsonl", "training_with_cot_6k.jsonl"))
    processor = load_processor(tiny_model_dir)
    bf16, fp32 = home / "model-bf16", home / "model-fp32"
    load_model(tiny_model_dir).to(torch.bfloat16).save_pretrained(bf16)
    processor.save_pretrained(bf16)
    load_model(bf16, dtype=torch.float32).save_pretrained(fp32)
    processor.save_pretrained(fp32)
    ck_bf16 = make_initial_checkpoint(bf16, home / "ck-bf16" / "iter-00000")
    ck_fp32 = make_initial_checkpoint(fp32, home / "ck-fp32" / "iter-00000")
    samples = data.load()
    gen = run_rollout_stage(run_id="n", iteration=0, checkpoint=ck_fp32, samples=samples.samples[:P],
                            cache=data.cache(), config=RolloutConfig(group_size=G, prompts_per_iteration=P,
                                                                     sampling=SamplingParams(max_new_tokens=MAX_NEW)),
                            seed=0, out_dir=home / "rollouts")
    sc = run_scoring_stage(generated_path=gen["path"], checkpoint=ck_fp32, samples=samples.by_id(),
                           cache=data.cache(), config=ScoringConfig(), algo="grpo_care")
    rows = read_rows(Path(sc["path"]))
    for i, r in enumerate(rows):  # a random model earns no reward: give the update a signal
        r["advantage"] = 1.0 if i % 2 == 0 else -1.0
    write_rows_atomic(Path(sc["path"]), rows, SCORED_SCHEMA)
    warm.clear()
    return {"home": home, "data": data, "bf16": ck_bf16, "fp32": ck_fp32, "generated": gen["path"],
            "scored": sc["path"], "tiny": tiny_model_dir, "demo": Path(demo_root)}


def _update(setup, ckpt: Path, name: str, **optim) -> tuple[dict, Path]:
    warm.clear()
    config = OptimConfig(**{"learning_rate": 1e-6, "micro_batch_size": 4, "lr_scheduler": "constant", **optim})
    out = setup["home"] / name / "iter-00001"
    result = run_optimisation_stage(checkpoint_in=ckpt, checkpoint_out=out, generated_path=setup["generated"],
                                    scored_path=setup["scored"], data=setup["data"], config=config, total_steps=10,
                                    temperature=1.0, max_new_tokens=MAX_NEW, iteration=0)
    warm.clear()
    return result, out


def _policy(ckpt: Path) -> dict[str, torch.Tensor]:
    return load_file(ckpt / "policy" / "model.safetensors")


def test_a_bf16_checkpoint_trains_like_its_fp32_upcast(setup):
    assert {v.dtype for v in _policy(setup["bf16"]).values()} == {torch.bfloat16}  # stored as given
    from_bf16, out_b = _update(setup, setup["bf16"], "from-bf16")
    from_fp32, out_f = _update(setup, setup["fp32"], "from-fp32")
    assert from_bf16["steps"][0]["loss"] == from_fp32["steps"][0]["loss"]
    got, want, start = _policy(out_b), _policy(out_f), _policy(setup["fp32"])
    assert {v.dtype for v in got.values()} == {torch.float32}  # the checkpoint holds the fp32 master weights
    changed = total = 0
    for k in want:
        assert torch.equal(got[k], want[k]), k
        changed += int((got[k] != start[k]).sum())
        total += start[k].numel()
    # Adam's first step moves every weight with a gradient by ~lr; bf16 weights kept 2.4 % of such changes
    assert changed / total > 0.9, changed / total
    moments = load_file(out_b / "optimizer.safetensors")
    assert {v.dtype for k, v in moments.items() if k.endswith(("exp_avg", "exp_avg_sq"))} == {torch.float32}


def test_a_tiny_ema_step_is_kept_in_the_fp32_reference():
    torch.manual_seed(0)
    policy = torch.nn.Linear(64, 64)
    reference = torch.nn.Linear(64, 64)
    reference.load_state_dict(policy.state_dict())
    with torch.no_grad():
        policy.weight.add_(1e-5)  # what a few steps at lr 1e-6 move a weight
    before = reference.weight.detach().clone()
    ema_update(reference, policy, decay=0.995)
    moved = (reference.weight - before).detach()
    # every weight moved by 5e-8, give or take fp32 rounding at |w| ~ 0.1 (an ulp is ~7e-9)
    assert bool((moved > 0).all())
    assert abs(float(moved.double().mean()) / (0.005 * 1e-5) - 1) < 0.02
    lost = reference.to(torch.bfloat16)  # the same step on a bf16 reference rounds away entirely
    before16 = lost.weight.detach().clone()
    ema_update(lost, policy.to(torch.bfloat16), decay=0.995)
    assert torch.equal(lost.weight, before16)


def test_resident_state_of_a_bf16_checkpoint_is_fp32(setup):
    warm.clear()
    trainer = materialise(setup["bf16"])
    assert trainer.policy.dtype == torch.float32 and trainer.reference.dtype == torch.float32
    warm.clear()


def _bf16_linear_outputs(model) -> tuple[list[torch.dtype], object]:
    seen: list[torch.dtype] = []
    head = model.get_output_embeddings()
    handle = head.register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    return seen, handle


def test_bf16_autocast_update_runs_on_cpu_with_fp32_master_weights(setup, monkeypatch):
    import care.train.optimise as optimise_module

    seen: list[torch.dtype] = []
    original = optimise_module.CompletionLogProbs.forward

    def spy(self, inputs, target_mask, temperature, shared_prompts=None):
        out = original(self, inputs, target_mask, temperature, shared_prompts)
        seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else torch.float32)
        return out

    monkeypatch.setattr(optimise_module.CompletionLogProbs, "forward", spy)
    result, out = _update(setup, setup["fp32"], "bf16-autocast", precision="bf16", learning_rate=1e-4)
    assert seen and set(seen) == {torch.bfloat16}
    step = result["steps"][0]
    assert step["skipped_nonfinite"] == 0.0 and step["grad_norm"] > 0
    got, start = _policy(out), _policy(setup["fp32"])
    assert {v.dtype for v in got.values()} == {torch.float32}
    assert any(not torch.equal(got[k], start[k]) for k in got)


def test_bf16_autocast_sft_step_on_cpu(setup):
    data = setup["data"].model_copy(update={"annotation_file": "training_with_cot_6k.jsonl"})
    samples = sft_samples(data.load())
    config = SFTConfig(model=str(setup["tiny"]), data_root=str(setup["demo"]), frames=SAMPLING, steps=2,
                       precision="bf16", learning_rate=1e-3)
    model = load_model(setup["tiny"], dtype=torch.float32)
    processor = load_processor(setup["tiny"])
    model.train()
    optimizer, scheduler = sft_optimizer(model, config)
    store = PromptStore(samples, data.cache(), processor.tokenizer)
    seen, handle = _bf16_linear_outputs(model)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    result = sft_step(model, processor, optimizer, scheduler, store.get(sorted(samples)[:4]), max_grad_norm=1.0,
                      compute_dtype=torch.bfloat16)
    handle.remove()
    assert result.applied and seen and set(seen) == {torch.bfloat16}  # the LM head ran in bf16
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
