"""One switch for the algorithm (``algo``, care.algo.algorithms): it yields the advantage estimator, the bonus
and the update's KL defaults; the paper's GRPO baseline keeps its KL penalty; ``care compare`` uses it."""

from __future__ import annotations

import typing

import pytest

from care.algo.algorithms import Algorithm, algorithm, register_algorithm, registered_algorithms
from care.compare import CompareConfig
from care.pipeline import PipelineConfig
from care.train.config import AlgorithmName, OptimConfig, RLConfig

BASE = {"model": "m", "data_root": "d"}


def test_the_schema_lists_every_registered_algorithm():
    assert set(typing.get_args(AlgorithmName)) == set(registered_algorithms())


def test_grpo_is_the_papers_baseline_with_its_kl_penalty():
    grpo = RLConfig(**BASE, algo="grpo")
    assert (grpo.optim.kl_beta, grpo.optim.kl_estimator, grpo.optim.ref_mode) == (0.1, "k3", "frozen")
    care = RLConfig(**BASE)
    assert (care.algo, care.optim.kl_beta, care.optim.ref_mode) == ("grpo_care", 0.0, "ema")
    assert RLConfig(**BASE, algo="grpo_nokl").optim.kl_beta == 0.0
    # the user's settings win, one by one, in a dict or an OptimConfig
    assert RLConfig(**BASE, algo="grpo", optim={"kl_beta": 0.04}).optim.kl_beta == 0.04
    given = RLConfig(**BASE, algo="grpo", optim=OptimConfig(ref_mode="ema"))
    assert (given.optim.kl_beta, given.optim.ref_mode) == (0.1, "ema")
    assert RLConfig(**BASE, algo="grpo").run_id() != RLConfig(**BASE, algo="grpo_nokl").run_id()


def test_the_estimator_and_bonus_come_from_the_algorithm_only():
    for name in registered_algorithms():
        algo = algorithm(name)
        assert algo.consistency_bonus == (algo.advantage == "grpo_care"), name
    with pytest.raises(ValueError, match=r"scoring.advantage is set by the algorithm: choose `algo`"):
        RLConfig(**BASE, scoring={"advantage": "rloo"})
    with pytest.raises(ValueError, match=r"scoring.consistency_bonus is set by the algorithm"):
        RLConfig(**BASE, algo="grpo", scoring={"consistency_bonus": False})
    with pytest.raises(ValueError, match="the consistency bonus goes with the 'grpo_care' estimator only"):
        register_algorithm(Algorithm("bonus_rloo", advantage="rloo", consistency_bonus=True))
    with pytest.raises(KeyError, match="unknown algorithm 'ppo'"):
        algorithm("ppo")
    with pytest.raises(ValueError, match="algo"):
        RLConfig(**BASE, algo="ppo")


def test_compare_arms_differ_by_algorithm_and_seed_only():
    cfg = CompareConfig(pipeline=PipelineConfig(rl={"iterations": 2, "optim": {"learning_rate": 1e-4}}), seeds=[3])
    grpo, care = (cfg.rl_config(a, 3, "policy", "data") for a in cfg.algos)
    assert (grpo.algo, grpo.seed, grpo.optim.kl_beta, grpo.optim.learning_rate) == ("grpo", 3, 0.1, 1e-4)
    assert (care.algo, care.seed, care.optim.kl_beta) == ("grpo_care", 3, 0.0)
    assert grpo.model_dump(exclude={"algo", "optim"}) == care.model_dump(exclude={"algo", "optim"})
    assert grpo.optim.model_dump(exclude={"kl_beta", "ref_mode"}) == care.optim.model_dump(exclude={"kl_beta", "ref_mode"})


def test_scoring_takes_estimator_and_bonus_from_the_algorithm(tmp_path):
    import math
    from types import SimpleNamespace

    from care.store.rollout_log import read_rows
    from care.train.config import ScoringConfig
    from care.train.scoring import _write_scored
    from tests.test_reference_exact import _rows

    rows, p = _rows([1, 1, 0, 1]), [0.9, 0.8, 0.6, 0.5]  # two prompts of two rollouts; prompt 1 half right
    scored = {}
    for name in ("grpo_care", "grpo", "dr_grpo"):
        _write_scored(tmp_path / "generated.parquet", rows, p, [math.log(x) for x in p], [True] * 4,
                      state=SimpleNamespace(state_id="s0"), config=ScoringConfig(), algo=name, started=0.0)
        scored[name] = read_rows(tmp_path / "scored.parquet")
    assert [r["bonus"] for r in scored["grpo_care"]] == [0.5, 0.0, 0.0, 0.5]  # the likelier of prompt 0; prompt 1's right one
    assert all(r["bonus"] == 0.0 for r in scored["grpo"] + scored["dr_grpo"])
    assert {r["algo"] for r in scored["grpo"]} == {"grpo"}
    base = [r["reward_base"] for r in scored["grpo"]]
    assert [r["advantage"] for r in scored["dr_grpo"]] == pytest.approx(  # r - group mean
        [base[0] - (base[0] + base[1]) / 2, base[1] - (base[0] + base[1]) / 2,
         base[2] - (base[2] + base[3]) / 2, base[3] - (base[2] + base[3]) / 2])
    assert [r["advantage"] for r in scored["grpo"]] != [r["advantage"] for r in scored["dr_grpo"]]
