"""``care compare``'s statistics on constructed inputs (pairing by (sft_seed, rl_seed), the bootstrap interval,
n < 2, reproducibility, rendering) and the flow end to end on a tiny config: 2 SFT seeds x 2 algorithms x 2 RL
seeds, the pairs, the CI rows, comparison.json, and a re-run of some arms that recomputes nothing."""

from __future__ import annotations

import doctest
import json
import math
from pathlib import Path

import numpy as np
import pytest

import care.compare
from care.compare import (
    CompareConfig,
    bootstrap_ci,
    compare_results,
    paired_differences,
    pairings,
    render_comparison,
    summarize_differences,
    to_json,
)
from care.pipeline import PipelineConfig
from care.store import catalog


def _evaluation(accuracy: float, rate: float | None = 0.5) -> dict:
    return {"levels": [{"level": "L1", "accuracy": {"accuracy": accuracy},
                        "consistency": [{"judge_label": "rule@v1", "rate": rate}]}]}


def _arm(algo: str, sft_seed: int, rl_seed: int, accuracy: float, rate: float | None = 0.5) -> dict:
    return {"algo": algo, "sft_seed": sft_seed, "rl_seed": rl_seed, "evaluation": _evaluation(accuracy, rate)}


def test_doctests_of_the_statistics():
    assert doctest.testmod(care.compare, raise_on_error=False).failed == 0


def test_constant_shift_gives_a_ci_excluding_zero():
    rng = np.random.default_rng(1)
    differences = 0.05 + rng.normal(0, 0.01, size=10)
    r = bootstrap_ci(differences, groups=[0] * 5 + [1] * 5)
    assert r["ci_low"] > 0 and r["significant"] and (r["n"], r["n_groups"], r["note"]) == (10, 2, "")
    assert r["ci_low"] <= r["mean"] <= r["ci_high"]
    exact = bootstrap_ci([0.1, 0.1, 0.1])  # no noise at all: the interval collapses onto the shift
    assert (exact["ci_low"], exact["ci_high"], exact["significant"]) == pytest.approx((0.1, 0.1, True))


def test_symmetric_zero_mean_noise_gives_a_ci_including_zero():
    differences = [-0.04, 0.04, -0.02, 0.02, -0.01, 0.01, -0.03, 0.03, 0.0, 0.0]
    r = bootstrap_ci(differences, groups=[0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    assert r["ci_low"] < 0 < r["ci_high"] and not r["significant"]
    assert r["mean"] == pytest.approx(0.0)
    # negative shifts are significant too: "excludes 0" works on both sides
    assert bootstrap_ci([-0.2, -0.21, -0.19, -0.2])["significant"]


def test_fewer_than_two_pairs_have_no_ci_and_no_significance():
    for values, n in (([0.3], 1), ([], 0), ([0.3, math.nan], 1)):
        r = bootstrap_ci(values)
        assert math.isnan(r["ci_low"]) and math.isnan(r["ci_high"])
        assert (r["significant"], r["note"], r["n"]) == (False, "n<2", n)
    rows = summarize_differences(paired_differences([_arm("grpo", 0, 0, 0.5), _arm("grpo_care", 0, 0, 0.9)],
                                                    "grpo_care", "grpo"))
    assert {(r["metric"], r["n"], r["significant"], r["note"]) for r in rows} == {
        ("accuracy", 1, False, "n<2"), ("consistency[rule@v1]", 1, False, "n<2")}
    assert "CI undefined: n<2" in render_comparison([], rows) and "*" not in render_comparison([], rows).split("\n")[1]


def test_bootstrap_is_reproducible_with_its_seed_and_moves_with_another():
    differences, groups = np.random.default_rng(3).normal(0.01, 0.03, size=10).tolist(), [0] * 5 + [1] * 5
    first, again = bootstrap_ci(differences, groups, seed=7), bootstrap_ci(differences, groups, seed=7)
    assert first == again
    other = bootstrap_ci(differences, groups, seed=8)
    assert (other["ci_low"], other["ci_high"]) != (first["ci_low"], first["ci_high"])
    assert other["mean"] == first["mean"]


def test_resampling_by_sft_seed_widens_the_ci_when_sft_seeds_disagree():
    """Two SFT checkpoints whose RL seeds agree among themselves but not with each other: resampling pairs as if
    independent gives a narrow interval; resampling SFT seeds first keeps the between-checkpoint spread."""
    differences = [0.10, 0.11, 0.09, 0.10, 0.0, 0.01, -0.01, 0.0]
    by_pair = bootstrap_ci(differences)
    by_sft_seed = bootstrap_ci(differences, groups=[0, 0, 0, 0, 1, 1, 1, 1])
    assert by_pair["significant"] and not by_sft_seed["significant"]
    assert by_sft_seed["ci_high"] - by_sft_seed["ci_low"] > by_pair["ci_high"] - by_pair["ci_low"]
    assert by_sft_seed["mean"] == by_pair["mean"]


def test_pairs_match_on_sft_seed_and_rl_seed_whatever_the_order():
    arms = [_arm("grpo_care", 1, 0, 0.75), _arm("grpo", 0, 1, 0.25), _arm("grpo", 1, 0, 0.5),
            _arm("grpo_care", 0, 1, 0.5), _arm("grpo", 0, 0, 0.5), _arm("grpo_care", 0, 0, 0.625)]
    pairs = [p for p in paired_differences(arms, "grpo_care", "grpo") if p["metric"] == "accuracy"]
    assert [(p["sft_seed"], p["rl_seed"], p["baseline_value"], p["treatment_value"], p["difference"])
            for p in pairs] == [(0, 0, 0.5, 0.625, 0.125), (0, 1, 0.25, 0.5, 0.25), (1, 0, 0.5, 0.75, 0.25)]


def test_missing_or_repeated_partners_are_refused_by_name():
    arms = [_arm("grpo", 0, 0, 0.5), _arm("grpo_care", 0, 0, 0.6), _arm("grpo_care", 1, 2, 0.6)]
    with pytest.raises(ValueError, match=r"without a partner.*grpo_care \(sft_seed=1, rl_seed=2\)"):
        paired_differences(arms, "grpo_care", "grpo")
    with pytest.raises(ValueError, match=r"grpo has two arms for \(sft_seed=0, rl_seed=0\)"):
        paired_differences([*arms[:2], _arm("grpo", 0, 0, 0.4)], "grpo_care", "grpo")


def test_a_metric_missing_on_one_side_leaves_that_pair_out():
    arms = [_arm("grpo", 0, 0, 0.5, rate=None), _arm("grpo_care", 0, 0, 0.6), _arm("grpo", 0, 1, 0.5),
            _arm("grpo_care", 0, 1, 0.6)]
    rows = {r["metric"]: r for r in summarize_differences(paired_differences(arms, "grpo_care", "grpo"))}
    assert (rows["accuracy"]["n"], rows["consistency[rule@v1]"]["n"]) == (2, 1)


def test_pairings_put_grpo_care_against_every_other_algorithm():
    assert pairings(["grpo_care", "grpo_nokl", "grpo"]) == [("grpo_care", "grpo_nokl"), ("grpo_care", "grpo")]
    assert pairings(["grpo"]) == []


def test_config_refuses_repeated_seeds_and_sft_seeds_without_sft():
    with pytest.raises(ValueError, match="sft_seeds"):
        CompareConfig(sft_seeds=[0, 0])
    with pytest.raises(ValueError, match="run_sft"):
        CompareConfig(pipeline=PipelineConfig(run_sft=False), sft_seeds=[0, 1])
    config = CompareConfig(sft_seeds=[0, 1])
    assert config.seeds == [0, 1, 2, 3, 4]
    assert [config.sft_pipeline(s).seed for s in config.sft_seeds] == [0, 1]
    assert config.sft_pipeline(0).run_id() != config.sft_pipeline(1).run_id()
    assert config.sft_pipeline(0).sft_config("m", "d") != config.sft_pipeline(1).sft_config("m", "d")
    assert config.run_id() == CompareConfig(sft_seeds=[0, 1], confidence=0.9).run_id() != CompareConfig().run_id()


def test_render_marks_significant_differences_and_keeps_the_spread():
    arms = [_arm(a, s, r, acc + (0.1 if a == "grpo_care" else 0.0) + 0.01 * r, rate=0.5 + 0.01 * (r - 1))
            for a in ("grpo", "grpo_care") for s in (0, 1) for r in (0, 1, 2) for acc in [0.4 + 0.02 * s]]
    result = compare_results(arms, ["grpo", "grpo_care"], resamples=2000)
    text = render_comparison(result["rows"], result["differences"])
    header, accuracy, consistency, legend = text.split("\n")
    assert header == "metric | level | grpo | grpo_care | grpo_care - grpo (paired)"
    assert accuracy.startswith("accuracy | L1 | 0.420 ± ") and accuracy.endswith("(n=6) *")
    assert "+0.000 [+0.000, +0.000] (n=6)" in consistency and not consistency.endswith("*")
    assert "95% percentile-bootstrap CI" in legend
    markdown = render_comparison(result["rows"], result["differences"], markdown=True).split("\n")
    assert markdown[1] == "| --- | --- | --- | --- | --- |" and markdown[2].startswith("| accuracy | L1 |")
    assert json.loads(to_json({"x": math.nan, (0, 1): [1.0]})) == {"x": None, "(0, 1)": [1.0]}


TINY = {
    "demo": {"train": 16, "val": 4},
    "frames": {"nframes": 4},
    "sft": {"shuffle_options": False, "steps": 2, "batch_size": 4, "learning_rate": 2e-3, "checkpoint_every": 2,
            "log_every": 2, "check_prompts": 2, "check_max_new_tokens": 8},
    "rl": {"shuffle_options": False, "iterations": 1,
           "rollout": {"group_size": 2, "prompts_per_iteration": 2, "sampling": {"max_new_tokens": 8}},
           "optim": {"micro_batch_size": 4}},
    "eval": {"decoding": {"max_new_tokens": 8}, "batch_size": 4, "levels": ["L1"]},
}


@pytest.fixture(scope="module")
def compared(prefect_harness, tmp_path_factory):
    from flows.compare import compare

    home = tmp_path_factory.mktemp("compare_home")
    config = CompareConfig(pipeline=PipelineConfig.model_validate(TINY), sft_seeds=[0, 1], seeds=[0, 1],
                           bootstrap_resamples=1000)
    first = compare(config, home=str(home))
    rollouts = catalog.query("select count(*) from rollouts", path=home / "care.duckdb")
    # a re-run of a subset of the arms (SFT seed 1, RL seed 1): the same SFT checkpoint, RL runs and evaluations
    again = CompareConfig(pipeline=config.pipeline, sft_seeds=[1], seeds=[1], bootstrap_resamples=1000)
    second = compare(again, home=str(home))
    return home, config, first, second, rollouts


@pytest.mark.slow
def test_compare_flow_pairs_arms_and_writes_the_cis(compared):
    _, config, first, _, _ = compared
    keys = {(s, r) for s in (0, 1) for r in (0, 1)}
    assert len(first["arms"]) == 8 and len({a["run_id"] for a in first["arms"]}) == 8
    assert len(set(first["sft_runs"].values())) == 2  # each SFT seed trained its own checkpoint
    pairs, differences = first["pairs"], first["differences"]
    assert {(p["treatment"], p["baseline"]) for p in pairs} == {("grpo_care", "grpo")}
    assert {(p["sft_seed"], p["rl_seed"]) for p in pairs} == keys
    metrics = {(p["level"], p["metric"]) for p in pairs}
    assert {level for level, _ in metrics} == {"L1"} and ("L1", "accuracy") in metrics  # eval.levels: [L1]
    for p in pairs:
        assert p["difference"] == pytest.approx(p["treatment_value"] - p["baseline_value"])
    assert {(d["level"], d["metric"]) for d in differences} == metrics
    accuracy = [d for d in differences if d["metric"] == "accuracy"]
    assert all((d["n"], d["n_sft_seeds"], d["confidence"]) == (4, 2, 0.95) for d in accuracy)
    assert all(d["significant"] == (d["ci_low"] > 0 or d["ci_high"] < 0) for d in accuracy)
    assert {(r["algo"], r["n"]) for r in first["rows"] if r["metric"] == "accuracy"} == {("grpo", 4), ("grpo_care", 4)}
    written = json.loads(Path(first["path"]).read_text())
    assert Path(first["path"]).parent.name == config.run_id()
    assert written["pairs"] == json.loads(to_json(pairs)) and written["differences"] == json.loads(to_json(differences))
    assert written["sft_runs"] == {str(k): v for k, v in first["sft_runs"].items()}
    assert [(a["algo"], a["sft_seed"], a["rl_seed"]) for a in written["arms"]] == [
        (a, s, r) for s in (0, 1) for a in ("grpo", "grpo_care") for r in (0, 1)]


@pytest.mark.slow
def test_compare_rerun_reuses_every_run(compared):
    home, _, first, second, rollouts = compared
    assert second["sft_runs"] == {1: first["sft_runs"][1]}
    assert second["arms"] == [a for a in first["arms"] if (a["sft_seed"], a["rl_seed"]) == (1, 1)]
    assert second["pairs"] == [p for p in first["pairs"] if (p["sft_seed"], p["rl_seed"]) == (1, 1)]
    assert all(d["note"] == "n<2" and not d["significant"] for d in second["differences"])
    assert catalog.query("select count(*) from rollouts", path=home / "care.duckdb") == rollouts
    assert rollouts == [(8 * 2 * 2,)]  # 8 arms x 1 iteration x 2 prompts x group of 2
    stages = catalog.query("select stage, cache_hit from stages where stage like 'eval:%-sft1-rl1:%' "
                           "or (stage like 'eval:sft:%' and run_id = ?)", [first["sft_runs"][1]],
                           path=home / "care.duckdb")
    assert sorted(stage for stage, _ in stages) == ["eval:grpo-sft1-rl1:L1", "eval:grpo_care-sft1-rl1:L1", "eval:sft:L1"]
    assert all(hit for _, hit in stages)
