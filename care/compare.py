"""The miniature reproduction: GRPO vs GRPO-CARE over SFT seeds and RL seeds, with paired bootstrap intervals.

``CompareConfig`` = a pipeline config (data, model, SFT, RL and eval options) + the algorithms, the SFT seeds and
the RL seeds. Each SFT seed trains its own SFT checkpoint; from each checkpoint every algorithm runs RL with every
RL seed. An arm is keyed (sft_seed, rl_seed): two algorithms' arms with the same key start from the same checkpoint,
read the same data in the same order and differ only by the algorithm, so they are compared as a pair.

- ``summarize``: per algorithm, level and metric, mean / std / min / max over its arms (the spread).
- ``pairings``: which differences are taken: GRPO-CARE minus every other algorithm.
- ``paired_differences``: per key, level and metric, the treatment's value minus the baseline's.
- ``bootstrap_ci``: percentile bootstrap interval of the mean difference (SFT seeds, then RL seeds within each).
- ``summarize_differences``: per (pairing, level, metric) the mean difference, its CI, n pairs, ``significant``.

Pure functions, no IO: the ``compare`` flow (flows/compare.py) runs the arms and writes what these return.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pydantic import Field, model_validator

from care.config import StageConfig
from care.identity import run_id
from care.pipeline import PipelineConfig
from care.train.config import AlgorithmName, RLConfig


class CompareConfig(StageConfig):
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig, description="Data, model, SFT, RL and eval options.")
    algos: list[AlgorithmName] = Field(["grpo", "grpo_care"], min_length=1, description="Algorithms to compare "
                                       "(care.algo.algorithms); grpo is the paper's baseline, with its KL penalty.")
    sft_seeds: list[int] = Field([0], min_length=1, description="SFT seeds: each trains its own SFT checkpoint "
                                 "(it replaces the pipeline's `seed` for SFT), and every RL arm runs from each one.")
    seeds: list[int] = Field([0, 1, 2, 3, 4], min_length=1, description="RL seeds (data order and sampling), run "
                             "from every SFT checkpoint; an arm is keyed (sft_seed, rl_seed).")
    bootstrap_resamples: int = Field(10_000, ge=100, description="Bootstrap resamples of the paired differences.")
    confidence: float = Field(0.95, gt=0, lt=1, description="Confidence level of the paired-difference intervals.")
    bootstrap_seed: int = Field(0, description="Seed of the bootstrap's numpy Generator (the printed CI is reproducible).")

    @model_validator(mode="after")
    def _arms_distinct(self) -> CompareConfig:
        for name in ("algos", "sft_seeds", "seeds"):
            values = getattr(self, name)
            if len(set(values)) != len(values):
                raise ValueError(f"{name}: {values} repeats a value; every arm must be distinct")
        if len(self.sft_seeds) > 1 and not self.pipeline.run_sft:
            raise ValueError("sft_seeds: several SFT seeds need pipeline.run_sft: true (without SFT they would "
                             "all start RL from the same model)")
        return self

    def run_id(self) -> str:
        """``compare-<name>-<hash>`` of what defines the arms (pipeline, algorithms, seeds), not of the statistics."""
        arms = self.model_dump(mode="json", include={"pipeline", "algos", "sft_seeds", "seeds"})
        return run_id(f"compare-{self.pipeline.name}", arms)

    def sft_pipeline(self, sft_seed: int) -> PipelineConfig:
        """The pipeline up to SFT (and SFT's evaluation) with SFT seeded by ``sft_seed``: its own SFT run id and
        checkpoint per seed, reused by a re-run like any pipeline stage."""
        return self.pipeline.model_copy(update={"seed": sft_seed, "run_rl": False, "evaluate": ["sft"]})

    def rl_config(self, algo: str, seed: int, policy: str, data_root: str) -> RLConfig:
        """One arm: the pipeline's RL section with ``algo`` (its own defaults, e.g. grpo's KL, unless the section
        sets them) and the RL seed ``seed``, from the shared SFT policy."""
        arm = self.pipeline.model_copy(update={"rl": self.pipeline.rl.model_copy(update={"algo": algo})})
        return arm.rl_config(policy, data_root).model_copy(update={"seed": seed})


TREATMENT = "grpo_care"


def _stats(values: Sequence[float]) -> dict[str, float]:
    values = [v for v in values if not _missing(v)]
    if not values:
        return {"mean": math.nan, "std": math.nan, "min": math.nan, "max": math.nan, "n": 0}
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "min": min(values), "max": max(values), "n": len(values)}


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def metric_values(evaluation: Mapping) -> dict[tuple[str, str], float]:
    """An evaluation manifest's numbers: (level, metric) -> value, metric = ``accuracy`` or
    ``consistency[<judge label>]``."""
    values: dict[tuple[str, str], float] = {}
    for m in evaluation["levels"]:
        values[(m["level"], "accuracy")] = m["accuracy"]["accuracy"]
        for s in m["consistency"]:
            values[(m["level"], f"consistency[{s['judge_label']}]")] = s["rate"]
    return values


def summarize(results: Mapping[str, Sequence[Mapping]]) -> list[dict]:
    """``algo -> [evaluation manifest per arm]`` to rows: algo, level, metric, mean, std, min, max, n arms.

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
            for key, value in metric_values(ev).items():
                values.setdefault(key, []).append(value)
        for (level, metric), vals in values.items():
            rows.append({"algo": algo, "level": level, "metric": metric, **_stats(vals)})
    return rows


def pairings(algos: Sequence[str]) -> list[tuple[str, str]]:
    """(treatment, baseline) per difference to report: GRPO-CARE minus each other algorithm, in ``algos`` order;
    without grpo_care in ``algos``, each other algorithm minus the first one.

    >>> pairings(["grpo", "grpo_care"])
    [('grpo_care', 'grpo')]
    >>> pairings(["grpo", "grpo_care", "dr_grpo"])
    [('grpo_care', 'grpo'), ('grpo_care', 'dr_grpo')]
    >>> pairings(["grpo", "rloo", "dr_grpo"])
    [('rloo', 'grpo'), ('dr_grpo', 'grpo')]
    """
    if TREATMENT in algos:
        return [(TREATMENT, a) for a in algos if a != TREATMENT]
    return [(a, algos[0]) for a in algos[1:]]


def _arms_by_key(arms: Sequence[Mapping], algo: str) -> dict[tuple[int, int], Mapping]:
    by_key: dict[tuple[int, int], Mapping] = {}
    for arm in arms:
        if arm["algo"] != algo:
            continue
        key = (arm["sft_seed"], arm["rl_seed"])
        if key in by_key:
            raise ValueError(f"{algo} has two arms for (sft_seed={key[0]}, rl_seed={key[1]}); each key must be unique")
        by_key[key] = arm
    return by_key


def paired_differences(arms: Sequence[Mapping], treatment: str, baseline: str) -> list[dict]:
    """``treatment`` minus ``baseline`` per (sft_seed, rl_seed), level and metric.

    ``arms``: dicts with ``algo``, ``sft_seed``, ``rl_seed`` and ``evaluation`` (an evaluation manifest). A pair is
    the two algorithms' arms with the same key, so both come from the same SFT checkpoint and RL data order.
    Refused (ValueError naming the keys) when an arm of either algorithm has no partner, or a key repeats: an
    unpaired arm means the runs are not the comparison asked for. A metric that one side lacks or has as
    None/NaN (e.g. a judge that judged nothing) is left out of that pair, so its ``n`` is smaller.

    >>> ev = lambda acc: {"levels": [{"level": "L1", "accuracy": {"accuracy": acc}, "consistency": []}]}
    >>> arms = [{"algo": a, "sft_seed": 0, "rl_seed": r, "evaluation": ev(acc)} for a, r, acc in
    ...         [("grpo", 0, 0.5), ("grpo_care", 0, 0.625), ("grpo", 1, 0.5), ("grpo_care", 1, 0.375)]]
    >>> [(p["rl_seed"], p["metric"], p["difference"]) for p in paired_differences(arms, "grpo_care", "grpo")]
    [(0, 'accuracy', 0.125), (1, 'accuracy', -0.125)]
    """
    treated, base = _arms_by_key(arms, treatment), _arms_by_key(arms, baseline)
    unpaired = [(algo, key) for algo, mine, other in ((treatment, treated, base), (baseline, base, treated))
                for key in mine if key not in other]
    if unpaired:
        listed = ", ".join(f"{algo} (sft_seed={k[0]}, rl_seed={k[1]})" for algo, k in unpaired)
        raise ValueError(f"{treatment} - {baseline}: arms without a partner on the same (sft_seed, rl_seed): {listed}")
    pairs = []
    for key in sorted(treated):
        t_values, b_values = metric_values(treated[key]["evaluation"]), metric_values(base[key]["evaluation"])
        for (level, metric), t in t_values.items():
            b = b_values.get((level, metric))
            if _missing(t) or _missing(b):
                continue
            pairs.append({"treatment": treatment, "baseline": baseline, "sft_seed": key[0], "rl_seed": key[1],
                          "level": level, "metric": metric, "treatment_value": t, "baseline_value": b,
                          "difference": t - b})
    return pairs


def _resample_means(values: np.ndarray, groups: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(resamples,) means of hierarchical resamples: the groups with replacement, then the values within each
    drawn group with replacement. One group: plain resampling of the values."""
    n_groups = int(groups.max()) + 1
    if n_groups == 1:
        return values[rng.integers(0, len(values), size=(resamples, len(values)))].mean(axis=1)
    sizes = np.bincount(groups, minlength=n_groups)
    table = np.zeros((n_groups, sizes.max()))  # (k, m): group g's values, zero-padded to the largest group
    for g in range(n_groups):
        table[g, : sizes[g]] = values[groups == g]
    drawn = rng.integers(0, n_groups, size=(resamples, n_groups))  # (B, k) groups drawn
    drawn_sizes = sizes[drawn][..., None]  # (B, k, 1)
    within = (rng.random((resamples, n_groups, table.shape[1])) * drawn_sizes).astype(int)  # (B, k, m) positions
    used = np.arange(table.shape[1]) < drawn_sizes  # (B, k, m): a group of size n_g contributes n_g draws
    picked = np.where(used, table[drawn[..., None], within], 0.0)
    return picked.sum(axis=(1, 2)) / used.sum(axis=(1, 2))


def bootstrap_ci(differences: Sequence[float], groups: Sequence[int] | None = None, resamples: int = 10_000,
                 confidence: float = 0.95, seed: int = 0) -> dict:
    """Mean of ``differences`` with a percentile bootstrap interval; ``significant`` = the interval excludes 0.

    ``groups`` (e.g. the SFT seed of each pair): resample the groups with replacement, then the pairs within each
    drawn group. Why: the pairs of one SFT seed share its checkpoint, so their differences are not independent (a
    checkpoint that suits one algorithm shifts all its RL seeds alike). Resampling the pairs as if independent
    would count 2 SFT x 5 RL seeds as 10 replicates and leave the SFT seed's variation out of the interval; the
    two-stage resample keeps it in, at the price of a wider, coarser interval with few SFT seeds (which is the
    honest answer: the claim is about SFT seeds too). With one group (or ``groups`` unset) this is the plain
    bootstrap over pairs, and the interval is conditional on that one SFT checkpoint. The percentile interval
    is somewhat too narrow at a handful of pairs (it ignores the n-1), so read a barely significant result as such.

    Each call draws from a fresh ``numpy.random.default_rng(seed)``: the same inputs give the same interval.
    With n < 2 values the interval is undefined: NaN bounds, ``note`` "n<2", never significant. NaN inputs are
    dropped.

    >>> r = bootstrap_ci([0.10, 0.12, 0.08, 0.11, 0.09])
    >>> (round(r["mean"], 3), r["n"], r["significant"], 0.08 <= r["ci_low"] < r["ci_high"] <= 0.12)
    (0.1, 5, True, True)
    >>> bootstrap_ci([0.2])["ci_low"], bootstrap_ci([0.2])["significant"], bootstrap_ci([0.2])["note"]
    (nan, False, 'n<2')
    """
    values = np.asarray(differences, dtype=float)
    labels = np.zeros(len(values), dtype=int) if groups is None else np.asarray(groups)
    if labels.shape != values.shape:
        raise ValueError(f"groups: {labels.shape[0]} labels for {values.shape[0]} differences")
    keep = ~np.isnan(values)
    values, labels = values[keep], labels[keep]
    codes = np.unique(labels, return_inverse=True)[1].reshape(-1)
    out = {"mean": float(values.mean()) if len(values) else math.nan, "n": len(values),
           "n_groups": int(codes.max()) + 1 if len(values) else 0}
    if len(values) < 2:
        return {**out, "ci_low": math.nan, "ci_high": math.nan, "significant": False, "note": "n<2"}
    means = _resample_means(values, codes, resamples, np.random.default_rng(seed))
    tail = (1 - confidence) / 2
    low, high = (float(q) for q in np.quantile(means, [tail, 1 - tail]))
    return {**out, "ci_low": low, "ci_high": high, "significant": low > 0 or high < 0, "note": ""}


def summarize_differences(pairs: Sequence[Mapping], resamples: int = 10_000, confidence: float = 0.95,
                          seed: int = 0) -> list[dict]:
    """Pairs (``paired_differences``) to one row per (treatment, baseline, level, metric): mean difference,
    ci_low, ci_high, n pairs, n_sft_seeds, confidence, significant, note; the bootstrap groups pairs by SFT seed."""
    grouped: dict[tuple[str, str, str, str], list[Mapping]] = {}
    for p in pairs:
        grouped.setdefault((p["treatment"], p["baseline"], p["level"], p["metric"]), []).append(p)
    rows = []
    for (treatment, baseline, level, metric), group in grouped.items():
        ci = bootstrap_ci([p["difference"] for p in group], [p["sft_seed"] for p in group], resamples, confidence, seed)
        n_sft_seeds = ci.pop("n_groups")
        rows.append({"treatment": treatment, "baseline": baseline, "level": level, "metric": metric, **ci,
                     "n_sft_seeds": n_sft_seeds, "confidence": confidence})
    return rows


def compare_results(arms: Sequence[Mapping], algos: Sequence[str], resamples: int = 10_000,
                    confidence: float = 0.95, seed: int = 0) -> dict[str, list[dict]]:
    """Arms (algo, sft_seed, rl_seed, evaluation) to ``rows`` (the spread per algorithm, ``summarize``),
    ``pairs`` (every pairing's per-key differences) and ``differences`` (their CI rows)."""
    by_algo = {algo: [a["evaluation"] for a in arms if a["algo"] == algo] for algo in algos}
    pairs = [p for treatment, baseline in pairings(algos) for p in paired_differences(arms, treatment, baseline)]
    return {"rows": summarize(by_algo), "pairs": pairs,
            "differences": summarize_differences(pairs, resamples, confidence, seed)}


def _difference_cell(d: Mapping | None) -> str:
    if d is None or not d["n"]:
        return "-"
    if d["note"]:
        return f"{d['mean']:+.3f} (n={d['n']}, CI undefined: {d['note']})"
    mark = " *" if d["significant"] else ""
    return f"{d['mean']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}] (n={d['n']}){mark}"


def render_comparison(rows: Sequence[Mapping], differences: Sequence[Mapping] = (), markdown: bool = False) -> str:
    """One line per (metric, level): each algorithm's ``mean ± std [min, max] (n arms)``, then each paired
    difference's ``mean [CI low, CI high] (n pairs)``, `` *`` where the CI excludes 0; a legend follows when
    there are differences. ``markdown``: a table with a header rule (for the Prefect artifact).

    >>> rows = [{"algo": "grpo", "metric": "accuracy", "level": "L1", "mean": 0.5, "std": 0.1, "min": 0.4,
    ...          "max": 0.6, "n": 2}]
    >>> print(render_comparison(rows))
    metric | level | grpo
    accuracy | L1 | 0.500 ± 0.100 [0.400, 0.600] (n=2)
    """
    algos = list(dict.fromkeys(r["algo"] for r in rows))
    contrasts = list(dict.fromkeys((d["treatment"], d["baseline"]) for d in differences))
    keys = list(dict.fromkeys([(r["metric"], r["level"]) for r in rows]
                              + [(d["metric"], d["level"]) for d in differences]))
    by = {(r["algo"], r["metric"], r["level"]): r for r in rows}
    diff_by = {(d["treatment"], d["baseline"], d["metric"], d["level"]): d for d in differences}
    header = ["metric", "level", *algos, *(f"{t} - {b} (paired)" for t, b in contrasts)]
    lines = [header]
    for metric, level in keys:
        cells = []
        for algo in algos:
            r = by.get((algo, metric, level))
            cells.append("-" if r is None or not r["n"] else
                         f"{r['mean']:.3f} ± {r['std']:.3f} [{r['min']:.3f}, {r['max']:.3f}] (n={r['n']})")
        cells += [_difference_cell(diff_by.get((t, b, metric, level))) for t, b in contrasts]
        lines.append([metric, level, *cells])
    if markdown:
        text = "\n".join("| " + " | ".join(line) + " |" for line in [lines[0], ["---"] * len(header), *lines[1:]])
    else:
        text = "\n".join(" | ".join(line) for line in lines)
    if differences:
        confidence = differences[0]["confidence"]
        text += ("\n\n" if markdown else "\n") + (
            f"spread: mean ± std [min, max] over each algorithm's arms; paired: mean difference over "
            f"(sft_seed, rl_seed) pairs with its {confidence:.0%} percentile-bootstrap CI (SFT seeds, then RL "
            "seeds resampled); * = the CI excludes 0")
    return text


def to_json(value: Any) -> str:
    """``value`` as JSON with NaN written as null (a CI with n < 2, a metric with no values)."""
    def clean(v: Any) -> Any:
        if isinstance(v, float) and math.isnan(v):
            return None
        if isinstance(v, Mapping):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(value), indent=2, default=str)
