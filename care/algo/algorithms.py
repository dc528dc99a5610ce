"""The RL algorithms a run can choose (``RLConfig.algo``), in a registry: one name says everything.

An algorithm is an advantage estimator (:mod:`care.algo.advantages`), whether the consistency bonus
(:mod:`care.algo.consistency`) goes into the rewards, and the defaults it implies for the update (the KL
penalty and its reference). The scoring stage asks the registry for the estimator and the bonus; the RL config
fills the update's KL and reference settings from it wherever the user left them unset, so they can still be
overridden one by one (``optim.kl_beta: 0`` turns the paper's GRPO into GRPO without KL).

* ``grpo_care``: GRPO-CARE (arXiv 2506.16141): GRPO advantages over rewards that include the consistency
  bonus; no KL term; the reference is the slowly updated EMA of the policy, used only for the likelihood.
* ``grpo``: the paper's GRPO baseline, as SEED-Bench-R1 trained it (``scripts/grpo.sh`` of TencentARC/
  SEED-Bench-R1: ``--beta 0.1`` with the open-r1 / TRL GRPO trainer of the time, whose per-token penalty is
  the k3 estimator against the frozen initial model).
* ``grpo_nokl``: GRPO with no KL penalty (what DAPO and Dr.GRPO recommend; ``algo: grpo`` before the paper's
  baseline was the default).
* ``dr_grpo``, ``rloo``: the Dr.GRPO and RLOO estimators, no bonus, no KL.

Without a KL term the reference (EMA by default) only scores the answer likelihood that the scoring stage logs
for every algorithm, so that their consistency can be compared.

>>> algorithm("grpo").optim_defaults
{'kl_beta': 0.1, 'kl_estimator': 'k3', 'ref_mode': 'frozen'}
>>> algorithm("grpo_care").consistency_bonus, algorithm("grpo_care").advantage
(True, 'grpo_care')
"""

from __future__ import annotations

from dataclasses import dataclass, field

from care.algo.advantages import registered_advantages


@dataclass(frozen=True)
class Algorithm:
    """What one ``algo`` name stands for (module docstring)."""

    name: str
    advantage: str
    consistency_bonus: bool
    optim_defaults: dict = field(default_factory=dict)
    description: str = ""


_ALGORITHMS: dict[str, Algorithm] = {}


def register_algorithm(algo: Algorithm) -> Algorithm:
    if algo.advantage not in registered_advantages():
        raise ValueError(f"algorithm {algo.name!r}: unknown advantage estimator {algo.advantage!r}")
    if algo.consistency_bonus != (algo.advantage == "grpo_care"):
        # the grpo_care estimator is GRPO over rewards with the bonus; no other estimator may see the bonus
        raise ValueError(f"algorithm {algo.name!r}: the consistency bonus goes with the 'grpo_care' estimator only")
    if algo.name in _ALGORITHMS and _ALGORITHMS[algo.name] != algo:
        raise ValueError(f"algorithm {algo.name!r} is already registered")
    _ALGORITHMS[algo.name] = algo
    return algo


def algorithm(name: str) -> Algorithm:
    try:
        return _ALGORITHMS[name]
    except KeyError:
        raise KeyError(f"unknown algorithm {name!r}; registered: {registered_algorithms()}") from None


def registered_algorithms() -> list[str]:
    return list(_ALGORITHMS)


register_algorithm(Algorithm(
    "grpo_care", advantage="grpo_care", consistency_bonus=True,
    optim_defaults={"kl_beta": 0.0, "ref_mode": "ema"},
    description="GRPO-CARE: consistency bonus, EMA reference, no KL"))
register_algorithm(Algorithm(
    "grpo", advantage="grpo", consistency_bonus=False,
    optim_defaults={"kl_beta": 0.1, "kl_estimator": "k3", "ref_mode": "frozen"},
    description="the paper's GRPO baseline: KL (k3, beta 0.1) to the frozen initial policy"))
register_algorithm(Algorithm(
    "grpo_nokl", advantage="grpo", consistency_bonus=False,
    optim_defaults={"kl_beta": 0.0}, description="GRPO without a KL penalty"))
register_algorithm(Algorithm(
    "dr_grpo", advantage="dr_grpo", consistency_bonus=False, optim_defaults={"kl_beta": 0.0},
    description="Dr.GRPO advantages (no std scaling), no KL"))
register_algorithm(Algorithm(
    "rloo", advantage="rloo", consistency_bonus=False, optim_defaults={"kl_beta": 0.0},
    description="RLOO leave-one-out advantages, no KL"))
