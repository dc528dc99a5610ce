"""The miniature reproduction: GRPO vs GRPO-CARE from the same SFT checkpoint over several seeds.

``CompareConfig`` = a pipeline config (data, model, SFT, RL and eval options) + the algorithms and seeds.
``summarize`` turns the per-run evaluation manifests into mean / std / min / max over seeds per algorithm and
level, for accuracy and for each consistency judge.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence

from pydantic import Field

from care.config import StageConfig
from care.pipeline import PipelineConfig
from care.train.config import AlgorithmName, RLConfig


class CompareConfig(StageConfig):
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig, description="Data, model, SFT, RL and eval options.")
    algos: list[AlgorithmName] = Field(["grpo", "grpo_care"], min_length=1, description="Algorithms to compare "
                                       "(care.algo.algorithms); grpo is the paper's baseline, with its KL penalty.")
    seeds: list[int] = Field([0, 1, 2], min_length=1, description="RL seeds (data order and sampling); SFT is shared.")

    def rl_config(self, algo: str, seed: int, policy: str, data_root: str) -> RLConfig:
        """One arm: the pipeline's RL section with ``algo`` (its own defaults, e.g. grpo's KL, unless the section
        sets them) and the RL seed ``seed``, from the shared SFT policy."""
        arm = self.pipeline.model_copy(update={"rl": {**self.pipeline.rl, "algo": algo}})
        return arm.rl_config(policy, data_root).model_copy(update={"seed": seed})


def _stats(values: Sequence[float]) -> dict[str, float]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return {"mean": math.nan, "std": math.nan, "min": math.nan, "max": math.nan, "n": 0}
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "min": min(values), "max": max(values), "n": len(values)}


def summarize(results: Mapping[str, Sequence[Mapping]]) -> list[dict]:
    """``algo -> [evaluation manifest per seed]`` to rows: algo, level, metric, mean, std, min, max, n seeds.

    >>> ev = lambda acc, rate: {"levels": [{"level": "L1", "accuracy": {"accuracy": acc},
    ...     "consistency": [{"judge_label": "rule@v1", "rate": rate}]}]}
    >>> rows = summarize({"grpo": [ev(0.5, 0.6), ev(0.7, 0.8)]})
    >>> [(r["metric"], round(r["mean"], 2), round(r["std"], 3)) for r in rows]
    [('accuracy', 0.6, 0.141), ('consistency[rule@v1]', 0.7, 0.141)]
    """
    rows = []
    for algo, evaluations in results.items():
        values: dict[tuple[str, str], list[float]] = {}
        for ev in evaluations:
            for m in ev["levels"]:
                values.setdefault((m["level"], "accuracy"), []).append(m["accuracy"]["accuracy"])
                for s in m["consistency"]:
                    values.setdefault((m["level"], f"consistency[{s['judge_label']}]"), []).append(s["rate"])
        for (level, metric), vals in values.items():
            rows.append({"algo": algo, "level": level, "metric": metric, **_stats(vals)})
    return rows


def render_comparison(rows: Sequence[Mapping]) -> str:
    """``metric  level  grpo: mean ± std [min, max]  grpo_care: ...`` one line per (metric, level)."""
    algos = list(dict.fromkeys(r["algo"] for r in rows))
    keys = list(dict.fromkeys((r["metric"], r["level"]) for r in rows))
    by = {(r["algo"], r["metric"], r["level"]): r for r in rows}
    lines = ["metric | level | " + " | ".join(algos)]
    for metric, level in keys:
        cells = []
        for algo in algos:
            r = by.get((algo, metric, level))
            cells.append("-" if r is None or not r["n"] else
                         f"{r['mean']:.3f} ± {r['std']:.3f} [{r['min']:.3f}, {r['max']:.3f}] (n={r['n']})")
        lines.append(f"{metric} | {level} | " + " | ".join(cells))
    return "\n".join(lines)
