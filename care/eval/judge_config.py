"""The factory that builds the consistency judge a ``JudgeConfig`` (``care.eval_schema``) names."""

from __future__ import annotations

from care.eval.judges import ConsistencyJudge, ReferenceLikelihoodJudge, RuleJudge
from care.eval.llm_judge import LLMJudge
from care.eval_schema import LIKELIHOOD_POLICY, JudgeConfig


def make_judge(config: JudgeConfig) -> ConsistencyJudge:
    """The judge a config names.

    >>> make_judge(JudgeConfig(name="reference_likelihood", threshold=0.3)).settings["threshold"]
    0.3
    """
    if config.name == "rule":
        return RuleJudge()
    if config.name == "reference_likelihood":
        return ReferenceLikelihoodJudge(threshold=config.threshold,  # unset: the evaluation default's name
                                        reference=config.reference or LIKELIHOOD_POLICY)
    assert config.llm is not None  # checked by the validator
    return LLMJudge(config.llm)
