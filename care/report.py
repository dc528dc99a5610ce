"""Results of a pipeline run as a table (levels x accuracy and consistency per judge) and training series.

Pure formatting plus reads of the ``metrics`` table; used by the pipeline's report task and ``care show``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from care.eval.scoring import with_domains
from care.store.overview import metric_values, stage_seconds

STAGE_SECONDS = "stage_seconds"  # the plot's panel of seconds per stage per iteration (care.eval.plots)
TRAINING_METRICS = {
    "loss": "SFT loss",
    "check_format": "SFT format (greedy, train prompts)",
    "check_accuracy": "SFT accuracy (greedy, train prompts)",
    "reward_mean": "RL reward (mean)",
    "reward_accuracy_mean": "accuracy reward (sampled)",
    "bonus_rate": "consistency bonus rate",
    "consistency_likelihood_mean": "answer likelihood (reference)",
}


def _fmt(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.3f}"


def pipeline_table(evaluations: Mapping[str, Mapping]) -> list[dict]:
    """One row per (evaluated checkpoint, level): accuracy with its 95 % interval, consistency per judge.

    A figure that does not exist (no judged sample) is None, so the rows are valid JSON.
    """
    rows = []
    for point, ev in evaluations.items():
        for m in with_domains(ev["levels"]):  # a level, then its per-domain records (L3/Hobbies, ...)
            a = m["accuracy"]
            row = {"checkpoint": point, "level": m["level"], "n": a["n"], "accuracy": a["accuracy"],
                   "ci_low": a["ci_low"], "ci_high": a["ci_high"]}
            for s in m["consistency"]:
                row[f"consistency[{s['judge_label']}]"] = s["rate"]
            rows.append({k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()})
    return rows


def render_table(rows: Sequence[Mapping], *, markdown: bool = False) -> str:
    """A fixed-width (or markdown) rendering of ``pipeline_table`` rows."""
    if not rows:
        return "(no evaluation)"
    columns = list(dict.fromkeys(k for r in rows for k in r if k not in ("ci_low", "ci_high")))
    cells = []
    for r in rows:
        line = []
        for c in columns:
            v = r.get(c)
            if c == "accuracy":
                line.append(f"{_fmt(v)} [{_fmt(r.get('ci_low'))}, {_fmt(r.get('ci_high'))}]")
            else:
                line.append(_fmt(v) if isinstance(v, float) else str(v if v is not None else "-"))
        cells.append(line)
    if markdown:
        head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns)
        return head + "\n" + "\n".join("| " + " | ".join(line) + " |" for line in cells)
    widths = [max(len(c), *(len(line[i]) for line in cells)) for i, c in enumerate(columns)]
    out = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    out += ["  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)) for line in cells]
    return "\n".join(out)


def training_series(con, run_ids: Mapping[str, str]) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """metric label -> {stage label: [(step, value)]} from the catalog's ``metrics`` of the given runs, plus
    ``stage_seconds`` -> {RL stage: [(iteration's first step, seconds)]}: the seconds per stage per iteration of
    the RL runs (the stage prefixed by the run's label when several runs have them)."""
    series: dict[str, dict[str, list[tuple[float, float]]]] = {}
    timings = {}
    for label, run_id in run_ids.items():
        for name, step, value in metric_values(con, run_id):
            if name in TRAINING_METRICS and not (name == "loss" and label != "sft"):
                series.setdefault(TRAINING_METRICS[name], {}).setdefault(label, []).append((step, value))
        per_stage = {s: pts for s, pts in stage_seconds(con, run_id).items() if s != "sft"}
        if per_stage:
            timings[label] = per_stage
    for label, per_stage in timings.items():
        for stage, points in per_stage.items():
            name = stage if len(timings) == 1 else f"{label} {stage}"
            series.setdefault(STAGE_SECONDS, {})[name] = [(float(s), v) for s, v in points]
    return series
