"""SFT: loss on the assistant turn only (against a hand computation from full logits), exact resume, non-finite
steps skipped, and a real flow run that teaches the tiny model the answer format, with catalog rows."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from care.models.loading import load_model, load_processor
from care.models.samples import DataSpec
from care.store import catalog
from care.train.checkpoint import is_complete, read_training_state
from care.train.sft import (
    PromptStore,
    run_sft,
    sampled_check,
    sft_loss,
    sft_optimizer,
    sft_samples,
    sft_step,
)
from care.train.sft_config import SFTConfig
from tests.rl_helpers import SAMPLING, cache_demo
from tests.tracking_helpers import catalog_scalars, tensorboard_scalars

COT = "training_with_cot_6k.jsonl"


@pytest.fixture(scope="module")
def data(tmp_path_factory, demo_root) -> DataSpec:
    home = tmp_path_factory.mktemp("sft_home")
    spec = cache_demo(home, demo_root, files=(COT,))
    return spec.model_copy(update={"annotation_file": COT})


def _config(model: Path, demo_root: Path, **kw) -> SFTConfig:
    base = {"model": str(model), "data_root": str(demo_root), "shuffle_options": False, "frames": SAMPLING,
            "steps": 6, "batch_size": 4, "learning_rate": 2e-3, "warmup_steps": 2, "lr_scheduler": "cosine",
            "checkpoint_every": 100, "log_every": 2, "check_prompts": 0, "keep_checkpoints": 0}
    return SFTConfig(**{**base, **kw})


def _store(data: DataSpec, model_dir: Path):
    processor = load_processor(model_dir)
    samples = sft_samples(data.load())
    return PromptStore(samples, data.cache(), processor.tokenizer), processor, sorted(samples)


def test_loss_is_the_mean_log_prob_of_the_assistant_tokens_only(data, tiny_model_dir):
    store, processor, ids = _store(data, tiny_model_dir)
    model = load_model(tiny_model_dir)
    items, rates, targets = store.get(ids[:3])
    tok = processor.tokenizer
    assert tok.decode(targets[0]).startswith("<think>") and targets[0][-1] == tok.eos_token_id
    assert tok.decode(targets[0][:-1]).endswith(f"<answer>{store.samples[ids[0]].answer}</answer>")
    loss, n_tokens = sft_loss(model, processor, items, rates, targets)
    assert n_tokens == sum(len(t) for t in targets)
    # by hand: the prompt alone through encode_prompts + each completion, full logits, only completion tokens
    from care.models.inputs import encode_prompt_completions, model_inputs

    batch = encode_prompt_completions(processor, items, targets, fps=rates)
    with torch.no_grad():
        logits = model(**model_inputs(batch), use_cache=False).logits.float()
    logp = torch.log_softmax(logits, dim=-1)
    p, total = batch["prompt_length"], 0.0
    for i, t in enumerate(targets):
        for j, token in enumerate(t):
            total += float(logp[i, p - 1 + j, token])
    assert float(loss.detach()) == pytest.approx(-total / n_tokens, abs=1e-5)
    # no prompt position enters the loss: the LM head (the only way into the loss) sees exactly the positions
    # that predict completion tokens, never a [b, t, vocab] tensor
    head_rows = []
    handle = model.get_output_embeddings().register_forward_hook(
        lambda m, args, out: head_rows.append(args[0].shape[0]))
    sft_loss(model, processor, items, rates, targets)[0].backward()
    handle.remove()
    assert sum(head_rows) == n_tokens < batch["input_ids"].numel()


def _weights(ckpt: str | Path) -> dict[str, torch.Tensor]:
    return load_file(Path(ckpt) / "policy" / "model.safetensors")


def test_resume_continues_exactly(data, tiny_model_dir, demo_root, tmp_path):
    sample_set = data.load()
    straight = run_sft(config=_config(tiny_model_dir, demo_root, steps=6), sample_set=sample_set,
                       cache=data.cache(), run_dir=tmp_path / "straight", progress=False)
    cfg = _config(tiny_model_dir, demo_root, steps=6, checkpoint_every=3)
    first = run_sft(config=cfg, sample_set=sample_set, cache=data.cache(), run_dir=tmp_path / "split",
                    progress=False, stop_at=3)
    assert first["step"] == 3 and Path(first["checkpoint"]).name == "step-00003"
    state = read_training_state(first["checkpoint"])
    assert state.step == 3 and state.data_cursor == {"epoch": 0, "offset": 12}
    resumed = run_sft(config=cfg, sample_set=sample_set, cache=data.cache(), run_dir=tmp_path / "split",
                      progress=False)
    assert resumed["resumed_from"] == 3 and resumed["step"] == 6
    a, b = _weights(straight["checkpoint"]), _weights(resumed["checkpoint"])
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
    moved = max(float((a[k] - _w0).abs().max()) for k, _w0 in load_file(tiny_model_dir / "model.safetensors").items()
                if k in a)
    assert moved > 1e-3  # the comparison is not between two untouched models
    straight_losses = [h["loss"] for h in straight["history"]]
    resumed_losses = [h["loss"] for h in first["history"][:1] + resumed["history"][1:]]
    assert straight_losses[0] == pytest.approx(resumed_losses[0], abs=1e-6)
    assert straight_losses[-1] == pytest.approx(resumed_losses[-1], abs=1e-6)
    # a finished run asked again does nothing new
    again = run_sft(config=cfg, sample_set=sample_set, cache=data.cache(), run_dir=tmp_path / "split", progress=False)
    assert again["resumed_from"] == 6 and again["history"] == [] and again["checkpoint"] == resumed["checkpoint"]


def test_nonfinite_step_is_skipped_and_counted(data, tiny_model_dir, demo_root):
    store, processor, ids = _store(data, tiny_model_dir)
    model = load_model(tiny_model_dir)
    model.train()
    cfg = _config(tiny_model_dir, demo_root, warmup_steps=0)
    optimizer, scheduler = sft_optimizer(model, cfg)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    head = model.get_output_embeddings()
    handle = head.register_forward_hook(lambda m, args, out: out * float("nan"))  # a real overflow, injected
    result = sft_step(model, processor, optimizer, scheduler, store.get(ids[:4]), max_grad_norm=1.0)
    handle.remove()
    assert not result.applied and math.isnan(result.loss)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert optimizer.state == {} or all(not s for s in optimizer.state.values())
    assert scheduler.last_epoch == 0  # the schedule counts applied steps only
    assert all(p.grad is None for p in model.parameters())
    ok = sft_step(model, processor, optimizer, scheduler, store.get(ids[:4]), max_grad_norm=1.0)
    assert ok.applied and math.isfinite(ok.loss) and scheduler.last_epoch == 1
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


FLOW_STEPS = 100  # format is 0.0 at step 50 and 1.0 at step 100 for data-order seeds 0-3 (measured)


def test_flow_teaches_the_format_and_fills_the_catalog(prefect_harness, data, tiny_model_dir, demo_root, tmp_path):
    from flows.sft import sft

    home = tmp_path / "home"
    (home / "cache").mkdir(parents=True)
    (home / "cache" / "frames").symlink_to(Path(data.cache_root), target_is_directory=True)
    cfg = _config(tiny_model_dir, demo_root, steps=FLOW_STEPS, batch_size=16, warmup_steps=30,
                  lr_scheduler="constant", checkpoint_every=50, log_every=50, check_prompts=16, keep_checkpoints=1,
                  betas=(0.9, 0.98), report_to=["tensorboard"])
    store, processor, ids = _store(data, tiny_model_dir)
    base_model = load_model(tiny_model_dir)
    base = sampled_check(base_model, processor, store, [store.samples[i] for i in ids[:16]], max_new_tokens=64)
    out = sft(cfg, home=str(home))
    assert out["run_id"] == cfg.run_id() and out["policy"] == f"{out['checkpoint']}/policy"
    assert Path(out["checkpoint"]).name == f"step-{FLOW_STEPS:05d}" and is_complete(out["checkpoint"])
    # the policy folder loads as the same architecture with trained (changed, finite) weights
    trained, initial = load_model(out["policy"]).state_dict(), base_model.state_dict()
    assert trained.keys() == initial.keys()
    assert all(trained[k].shape == initial[k].shape and torch.isfinite(trained[k]).all() for k in trained)
    assert any(not torch.equal(trained[k].float(), initial[k].float()) for k in trained)
    db = home / "care.duckdb"
    fmt = catalog.query("SELECT step, value FROM metrics WHERE run_id = ? AND name = 'check_format' ORDER BY step",
                        [out["run_id"]], path=db)
    assert [s for s, _ in fmt] == [50, 100]
    # report_to: [tensorboard] mirrored every recorded metric (tag sft/<name>, same step and value)
    want, got = catalog_scalars(db, out["run_id"]), tensorboard_scalars(home / "tracking" / out["run_id"])
    assert set(got) == set(want) and ("sft/check_format", 100) in got
    assert all(got[k] == pytest.approx(v, rel=1e-6) for k, v in want.items())
    assert base["check_format"] <= 0.1 and fmt[-1][1] >= 0.75, (base, fmt)
    names = {r[0] for r in catalog.query("SELECT DISTINCT name FROM metrics WHERE run_id = ?", [out["run_id"]],
                                         path=db)}
    assert {"loss", "grad_norm", "learning_rate", "tokens_per_second", "check_accuracy"} <= names
    ckpts = catalog.query("SELECT name, step FROM checkpoints WHERE run_id = ? ORDER BY step", [out["run_id"]], path=db)
    assert ckpts == [("step-00050", 50), ("step-00100", 100)]
    assert not (Path(out["checkpoint"]).parent / "step-00050").exists()  # keep_checkpoints=1 pruned it
    again = sft(cfg, home=str(home))
    assert again == out
    rows = catalog.query("SELECT kind, status FROM runs WHERE run_id = ?", [out["run_id"]], path=db)
    assert rows == [("sft", "completed")]
    stage = catalog.query("SELECT status, cache_hit FROM stages WHERE run_id = ? AND stage = 'sft'",
                          [out["run_id"]], path=db)
    assert stage == [("completed", True)]
