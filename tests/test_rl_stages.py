"""The RL stages called directly: 2 processes equal 1, weights move, EMA moves exactly, frozen does not,
non-finite steps are skipped, PPO steps report clipping."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from care.models.rollout_config import RolloutConfig, SamplingParams
from care.store.rollout_log import SCORED_FILE, SCORED_SCHEMA, read_rows, write_rows_atomic
from care.train.checkpoint import is_complete, make_initial_checkpoint, read_training_state
from care.train.config import OptimConfig, ScoringConfig
from care.train.optimise_stage import run_optimisation_stage
from care.train.rollout import run_rollout_stage
from care.train.scoring import run_scoring_stage
from tests.rl_helpers import cache_demo

G, P, MAX_NEW = 4, 2, 16


@pytest.fixture(scope="module")
def batch(tmp_path_factory, demo_root, tiny_model_dir):
    """One real generation batch (P prompts x G) of the tiny model, scored, with advantages set to +-1."""
    home = tmp_path_factory.mktemp("rl_home")
    data = cache_demo(home, demo_root)
    samples = data.load()
    ck0 = make_initial_checkpoint(tiny_model_dir, home / "ckpt" / "iter-00000")
    rollout_cfg = RolloutConfig(group_size=G, prompts_per_iteration=P, sampling=SamplingParams(max_new_tokens=MAX_NEW))
    gen = run_rollout_stage(run_id="t", iteration=0, checkpoint=ck0, samples=samples.samples[:P], cache=data.cache(),
                            config=rollout_cfg, seed=0, out_dir=home / "rollouts" / "it0")
    sc = run_scoring_stage(generated_path=gen["path"], checkpoint=ck0, samples=samples.by_id(), cache=data.cache(),
                           config=ScoringConfig(), algo="grpo_care")
    rows = read_rows(Path(sc["path"]))
    for i, r in enumerate(rows):  # a random model earns no reward: give the update a signal to follow
        r["advantage"] = 1.0 if i % 2 == 0 else -1.0
    write_rows_atomic(Path(sc["path"]), rows, SCORED_SCHEMA)
    return {"home": home, "data": data, "ck0": ck0, "generated": gen["path"], "scored": sc["path"]}


def _optimise(batch, out_name, **optim):
    config = OptimConfig(**{"learning_rate": 1e-2, "micro_batch_size": 2, **optim})
    out = batch["home"] / "ckpt" / out_name
    result = run_optimisation_stage(checkpoint_in=batch["ck0"], checkpoint_out=out, generated_path=batch["generated"],
                                    scored_path=batch["scored"], data=batch["data"], config=config,
                                    total_steps=10, temperature=1.0, max_new_tokens=MAX_NEW, iteration=0,
                                    timeout_s=300)
    return result, out


def _weights(ckpt: Path, which: str = "policy") -> dict[str, torch.Tensor]:
    return load_file(ckpt / which / "model.safetensors")


def test_rollout_shard_has_every_column(batch):
    rows = read_rows(Path(batch["generated"]))
    assert len(rows) == P * G
    for r in rows:
        assert all(v is not None for v in r.values()), r
        assert len(r["behaviour_logprobs"]) == len(r["completion_ids"]) == r["completion_tokens"]
    scored = read_rows(Path(batch["scored"]).parent / SCORED_FILE)
    assert len(scored) == P * G and {s["rollout_uid"] for s in scored} == {r["rollout_uid"] for r in rows}


def test_two_processes_equal_one_process(batch):
    # Adam's first step is ~lr * sign(g): float noise in near-zero gradients would flip whole updates. A large
    # eps makes the step ~lr * g / eps, linear in the gradient, so equal gradients give equal weights.
    linear = {"adam_eps": 1.0, "learning_rate": 1.0, "weight_decay": 0.0, "ema_every": 1, "ema_decay": 0.9}
    one, ck_one = _optimise(batch, "one", **linear)
    two, ck_two = _optimise(batch, "two", num_processes=2, **linear)
    assert one["step"] == two["step"] == 1
    assert one["steps"][0]["loss"] == pytest.approx(two["steps"][0]["loss"], rel=1e-5, abs=1e-7)
    assert one["steps"][0]["grad_norm"] == pytest.approx(two["steps"][0]["grad_norm"], rel=1e-4)
    w1, w2 = _weights(ck_one), _weights(ck_two)
    assert w1.keys() == w2.keys()
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], rtol=1e-5, atol=1e-6, msg=k)


def test_policy_moves_and_ema_reference_moves_exactly(batch):
    result, ck = _optimise(batch, "ema", ema_every=1, ema_decay=0.9)
    before, after, ref = _weights(batch["ck0"]), _weights(ck), _weights(ck, "reference")
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) > len(before) // 2
    for k in before:  # ref <- 0.9 * ref0 + 0.1 * policy_after_step (ref0 == policy0)
        torch.testing.assert_close(ref[k], 0.9 * before[k] + 0.1 * after[k], rtol=1e-5, atol=1e-6, msg=k)
    assert result["steps"][0]["ema_updates"] == 1.0
    assert read_training_state(ck).extra["ema_updates"] == 1
    assert not _same_file(ck, batch["ck0"], "reference/model.safetensors")  # moved: written anew


def test_activation_checkpointing_gives_the_same_update(batch):
    """The memory knob recomputes activations (and scores without the shared prompt pass): same numbers."""
    # adam_eps 1 makes the step ~ lr * gradient: with the default eps, Adam's first step is lr * sign(gradient),
    # which turns float-rounding differences of near-zero gradients into full-size steps
    plain, ck_plain = _optimise(batch, "no-ckpt", adam_eps=1.0)
    ckpt, ck_ckpt = _optimise(batch, "ckpt", gradient_checkpointing=True, adam_eps=1.0)
    assert ckpt["steps"][0]["loss"] == pytest.approx(plain["steps"][0]["loss"], rel=1e-5, abs=1e-7)
    assert ckpt["steps"][0]["grad_norm"] == pytest.approx(plain["steps"][0]["grad_norm"], rel=1e-4)
    before, a, b = _weights(batch["ck0"]), _weights(ck_plain), _weights(ck_ckpt)
    assert max(float((a[k] - before[k]).abs().max()) for k in a) > 1e-4  # the step moved the weights
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=k)


def _same_file(a: Path, b: Path, rel: str) -> bool:
    return (Path(a) / rel).stat().st_ino == (Path(b) / rel).stat().st_ino


@pytest.mark.parametrize(("name", "options"), [("frozen", {"ref_mode": "frozen", "ema_every": 1}),
                                               ("ema-not-due", {"ema_every": 1000})])
def test_reference_that_did_not_move_is_linked_not_rewritten(batch, name, options):
    result, ck = _optimise(batch, name, **options)
    before, ref = _weights(batch["ck0"], "reference"), _weights(ck, "reference")
    assert all(torch.equal(before[k], ref[k]) for k in before)
    assert result["steps"][0]["ema_updates"] == 0.0
    assert _same_file(ck, batch["ck0"], "reference/model.safetensors") and is_complete(ck)
    assert not _same_file(ck, batch["ck0"], "policy/model.safetensors")


def test_nonfinite_loss_skips_the_step(batch, tmp_path):
    rows = read_rows(Path(batch["scored"]))
    rows[0]["advantage"] = float("nan")
    bad = dict(batch, scored=str(tmp_path / SCORED_FILE))
    write_rows_atomic(Path(bad["scored"]), rows, SCORED_SCHEMA)
    result, ck = _optimise(bad, "nan")
    assert result["step"] == 0 and result["steps"][0]["skipped_nonfinite"] == 1.0
    before, after = _weights(batch["ck0"]), _weights(ck)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert is_complete(ck) and read_training_state(ck).extra["skipped_steps"] == 1


def test_several_ppo_steps_per_generation(batch):
    result, _ = _optimise(batch, "ppo", steps_per_generation=3, eps_low=0.01, eps_high=0.01)
    steps = result["steps"]
    assert [s["step"] for s in steps] == [1, 2, 3]
    assert steps[0]["approx_kl"] == pytest.approx(0.0, abs=1e-6)  # first step: policy == behaviour
    assert steps[2]["approx_kl"] > 0
    assert steps[2]["clip_frac_low"] + steps[2]["clip_frac_high"] > 0


def _state_dicts(ckpt: Path) -> tuple[dict, dict]:
    """(policy, reference) tensors of a checkpoint, one-process or sharded (read through load_model)."""
    from care.models.loading import load_model

    return ({k: v for k, v in load_model(ckpt / "policy").state_dict().items()},
            {k: v for k, v in load_model(ckpt / "reference").state_dict().items()})


def _continue(batch, source: Path, name: str, **optim) -> tuple[dict, Path]:
    config = OptimConfig(**{"learning_rate": 1e-2, "micro_batch_size": 2, **optim})
    out = batch["home"] / "ckpt" / name
    result = run_optimisation_stage(checkpoint_in=source, checkpoint_out=out, generated_path=batch["generated"],
                                    scored_path=batch["scored"], data=batch["data"], config=config, total_steps=10,
                                    temperature=1.0, max_new_tokens=MAX_NEW, iteration=1, timeout_s=300)
    return result, out


LINEAR = {"adam_eps": 1.0, "learning_rate": 1.0, "weight_decay": 0.0, "ema_every": 1, "ema_decay": 0.9}


@pytest.fixture(scope="module")
def fsdp_runs(batch):
    """One update as one process and as 2 FSDP2 ranks; then each checkpoint continued by the other layout."""
    one, ck_one = _optimise(batch, "fsdp-ref-one", **LINEAR)
    two, ck_two = _optimise(batch, "fsdp-two", num_processes=2, parallelism="fsdp2", **LINEAR)
    two_then_one = _continue(batch, ck_two, "fsdp-two-then-one", **LINEAR)
    one_then_two = _continue(batch, ck_one, "fsdp-one-then-two", num_processes=2, parallelism="fsdp2", **LINEAR)
    two_then_two = _continue(batch, ck_two, "fsdp-two-then-two", num_processes=2, parallelism="fsdp2", **LINEAR)
    one_then_one = _continue(batch, ck_one, "fsdp-one-then-one", **LINEAR)
    return {"one": (one, ck_one), "two": (two, ck_two), "two_then_one": two_then_one,
            "one_then_two": one_then_two, "two_then_two": two_then_two, "one_then_one": one_then_one}


def _assert_close(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=f"{what} {k}")


def test_fsdp2_update_on_two_ranks_equals_one_process(fsdp_runs, batch):
    """FSDP2 over 2 CPU ranks (gloo): same loss, gradient norm, weights and EMA reference as one process, within
    float tolerance (the gradient is reduce-scattered in another order: rtol 1e-5)."""
    from care.train.sharded import is_sharded_checkpoint

    (one, ck_one), (two, ck_two) = fsdp_runs["one"], fsdp_runs["two"]
    assert one["steps"][0]["loss"] == pytest.approx(two["steps"][0]["loss"], rel=1e-5, abs=1e-7)
    assert one["steps"][0]["grad_norm"] == pytest.approx(two["steps"][0]["grad_norm"], rel=1e-4)
    assert is_sharded_checkpoint(ck_two) and not (ck_two / "policy" / "model.safetensors").exists()
    assert sorted(p.name for p in (ck_two / "state").glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    policy_two, reference_two = _state_dicts(ck_two)
    policy_one, reference_one = _state_dicts(ck_one)
    _assert_close(policy_one, policy_two, "policy")
    _assert_close(reference_one, reference_two, "reference")
    _, start = _state_dicts(batch["ck0"])
    moved = [k for k in start if not torch.equal(start[k], reference_two[k])]
    assert len(moved) > len(start) // 2  # the EMA really moved each rank's shards
    assert two["steps"][0]["ema_updates"] == 1.0 and read_training_state(ck_two).extra["ema_updates"] == 1


def test_sharded_checkpoint_loads_into_one_process_and_back(fsdp_runs):
    """A checkpoint written by 2 ranks continues in 1 process (policy, reference and AdamW moments resharded)
    and on 2 ranks (a sharded run's every iteration), and a 1-process checkpoint continues on 2 ranks; each
    equals continuing the 1-process run in 1 process."""
    want_result, want = fsdp_runs["one_then_one"]
    for name in ("two_then_one", "one_then_two", "two_then_two"):
        result, ck = fsdp_runs[name]
        assert result["step"] == want_result["step"] == 2
        assert result["steps"][0]["loss"] == pytest.approx(want_result["steps"][0]["loss"], rel=1e-5, abs=1e-7)
        got_p, got_r = _state_dicts(ck)
        want_p, want_r = _state_dicts(want)
        _assert_close(want_p, got_p, f"{name} policy")
        _assert_close(want_r, got_r, f"{name} reference")


def test_care_export_reads_a_sharded_checkpoint(fsdp_runs, tmp_path):
    from care.train.export import export_checkpoint

    _, ck_two = fsdp_runs["two"]
    from transformers import AutoModelForImageTextToText

    export_checkpoint(ck_two, tmp_path / "hf", dtype="float32")
    assert (tmp_path / "hf" / "model.safetensors").is_file() and not (tmp_path / "hf" / "dcp.json").exists()
    exported = AutoModelForImageTextToText.from_pretrained(tmp_path / "hf").state_dict()
    policy, _ = _state_dicts(ck_two)
    assert exported.keys() == policy.keys()
    for k, v in exported.items():
        assert torch.equal(v, policy[k]), k


def test_the_kl_penalty_of_the_grpo_baseline_pulls_towards_the_frozen_reference(batch):
    """algo grpo's update (kl_beta 0.1, k3, frozen reference): the reference forward runs in the stage; on the
    first step the policy is the reference (KL 0, the same loss as without KL), on the second it has moved."""
    common = {"ref_mode": "frozen", "steps_per_generation": 2, "learning_rate": 1e-3}
    with_kl, _ = _optimise(batch, "kl", kl_beta=0.1, kl_estimator="k3", **common)
    without, _ = _optimise(batch, "no-kl", kl_beta=0.0, **common)
    first, second = with_kl["steps"]
    assert first["kl"] == pytest.approx(0.0, abs=1e-7) and second["kl"] > 1e-6
    assert first["loss"] == pytest.approx(without["steps"][0]["loss"], rel=1e-6, abs=1e-8)
    assert second["loss"] == pytest.approx(without["steps"][1]["loss"] + 0.1 * second["kl"], rel=1e-4, abs=1e-7)
    assert "kl" not in without["steps"][1]
