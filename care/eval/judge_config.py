"""Typed choice of a consistency judge, and the factory that builds it (the eval stage config embeds this)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from care.config import StageConfig
from care.eval.judges import ConsistencyJudge, ReferenceLikelihoodJudge, RuleJudge
from care.eval.llm_judge import LLMJudge, LLMJudgeConfig

JUDGE_NAMES = ("rule", "reference_likelihood", "llm")


class JudgeConfig(StageConfig):
    """Which judge produces the consistency rate, with its options."""

    name: Literal["rule", "reference_likelihood", "llm"] = Field(
        default="rule",
        description="rule: the option the think block concludes on equals the answer; reference_likelihood: the "
        "CARE answer likelihood under the reference model is above `threshold`; llm: an OpenAI-compatible chat "
        "endpoint answers YES (needs `llm`).",
    )
    threshold: float = Field(
        default=0.5, ge=0.0, lt=1.0, description="reference_likelihood only: consistent iff likelihood > threshold."
    )
    reference: str = Field(
        default="ema", description="reference_likelihood only: name of the model that scored the likelihoods."
    )
    llm: LLMJudgeConfig | None = Field(default=None, description="llm only: endpoint, model, key variable, timeout.")

    @model_validator(mode="after")
    def _llm_needs_endpoint(self) -> JudgeConfig:
        if self.name == "llm" and self.llm is None:
            raise ValueError("judge 'llm' needs an `llm:` section with base_url and model")
        return self


def make_judge(config: JudgeConfig) -> ConsistencyJudge:
    """The judge a config names.

    >>> make_judge(JudgeConfig(name="reference_likelihood", threshold=0.3)).settings["threshold"]
    0.3
    """
    if config.name == "rule":
        return RuleJudge()
    if config.name == "reference_likelihood":
        return ReferenceLikelihoodJudge(threshold=config.threshold, reference=config.reference)
    assert config.llm is not None  # checked by the validator
    return LLMJudge(config.llm)
