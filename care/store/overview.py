"""Read-only summaries of runs for ``care runs`` and ``care show``: plain dicts, one short connection each.

Tables another module creates may not exist yet in a young catalog (e.g. no evaluation has run); each query
here checks for its table first, so an overview never fails on a missing table.
"""

from __future__ import annotations

import json
import os
import statistics
from bisect import bisect_right
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from care.store.catalog import CatalogError, connect

HEADLINE_METRICS = ("reward_mean", "reward_accuracy_mean", "bonus_rate", "loss", "check_format", "check_accuracy")

# Per-stage timing of ``care show`` and the run's plot: stage -> (seconds, compute seconds, tokens/s,
# tokens/s per device, peak MiB) metric names, as the tasks record them (None: the stage records none).
# Optimisation seconds are per optimizer step in the catalog and summed per iteration here; SFT's are per step.
TIMING_METRICS = {
    "rollout": ("rollout_seconds", "generation_seconds", "generation_tokens_per_second",
                "generation_tokens_per_second_per_device", "rollout_peak_memory_mib"),
    "scoring": ("scoring_seconds", "reference_forward_seconds", None, None, "scoring_peak_memory_mib"),
    "optimise": ("update_seconds", None, "tokens_per_second", None, "optimise_peak_memory_mib"),
    "sft": ("seconds_per_step", None, "tokens_per_second", None, None),
}


def _tables(con) -> set[str]:
    return {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}


def _dicts(cursor) -> list[dict[str, Any]]:
    cols = [d[0] for d in cursor.description]
    return [dict(zip(cols, row, strict=True)) for row in cursor.fetchall()]


def list_runs(catalog: str | os.PathLike, *, kind: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """Newest first: id, kind, status, timings, the last value of the headline metrics and L1-L3 accuracy."""
    with connect(catalog, read_only=True) as con:
        tables = _tables(con)
        if "runs" not in tables:
            return []
        runs = _dicts(con.execute(
            "SELECT run_id, kind, status, created_at, seconds, message FROM runs "
            "WHERE ? IS NULL OR kind = ? ORDER BY created_at DESC LIMIT ?", [kind, kind, limit]))
        for run in runs:
            run["headline"] = _headline(con, tables, run["run_id"])
    return runs


def _headline(con, tables: set[str], run_id: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "metrics" in tables:
        rows = con.execute(
            "SELECT name, arg_max(value, step), max(step) FROM metrics WHERE run_id = ? AND value IS NOT NULL "
            "AND name IN (SELECT unnest(?)) GROUP BY name", [run_id, list(HEADLINE_METRICS)]).fetchall()
        out.update({name: value for name, value, _ in rows})
        steps = con.execute("SELECT max(step) FROM metrics WHERE run_id = ?", [run_id]).fetchone()[0]
        if steps is not None:
            out["steps"] = steps
    if "eval_results" in tables:
        rows = con.execute(
            "SELECT label, level, accuracy FROM eval_results WHERE run_id = ? AND judge = 'accuracy' "
            "AND level <> 'all' ORDER BY created_at", [run_id]).fetchall()
        for label, level, acc in rows:
            out[f"acc[{label}:{level}]"] = acc
    return out


def show_run(catalog: str | os.PathLike, run_id: str, run_dir: str | os.PathLike) -> dict[str, Any]:
    """Everything about one run: its row and config, stages, metric summaries, checkpoints, evaluations, files."""
    with connect(catalog, read_only=True) as con:
        tables = _tables(con)
        rows = _dicts(con.execute("SELECT * FROM runs WHERE run_id = ?", [run_id])) if "runs" in tables else []
        if not rows:
            raise CatalogError(f"run {run_id!r} not found in {catalog}; `care runs` lists the runs")
        run = rows[0]
        run["config"] = json.loads(run["config"]) if run.get("config") else {}
        out: dict[str, Any] = {"run": run}
        out["stages"] = _dicts(con.execute(
            "SELECT iteration, stage, status, attempts, cache_hit, round(seconds, 2) AS seconds FROM stages "
            "WHERE run_id = ? ORDER BY iteration, updated_at", [run_id])) if "stages" in tables else []
        out["metrics"] = _dicts(con.execute(
            "SELECT name, count(value) AS n, arg_min(value, step) AS first, arg_max(value, step) AS last, "
            "min(value) AS min, max(value) AS max FROM metrics WHERE run_id = ? GROUP BY name ORDER BY name",
            [run_id])) if "metrics" in tables else []
        out["timing"] = stage_timing(con, run_id) if "metrics" in tables else []
        out["checkpoints"] = _dicts(con.execute(
            "SELECT name, step, iteration, path FROM checkpoints WHERE run_id = ? ORDER BY step",
            [run_id])) if "checkpoints" in tables else []
        out["evaluations"] = _dicts(con.execute(
            "SELECT label, level, judge, n, accuracy, ci_low, ci_high, consistency_rate, n_judged "
            "FROM eval_results WHERE run_id = ? ORDER BY label, level, judge", [run_id])) if "eval_results" in tables else []
    folder = Path(run_dir)
    out["files"] = sorted(str(p) for p in folder.rglob("*") if p.is_file() and p.suffix in (".png", ".json", ".parquet")
                          and "checkpoints" not in p.parts) if folder.is_dir() else []
    return out


def metric_values(con, run_id: str) -> list[tuple[str, int, float]]:
    """``(name, step, value)`` of every metric of ``run_id`` that has a value (NULLs left out), by step."""
    return con.execute("SELECT name, step, value FROM metrics WHERE run_id = ? AND value IS NOT NULL ORDER BY step",
                       [run_id]).fetchall()


def _timing_rows(con, run_id: str) -> dict[tuple[str, str], list[tuple[int, float]]]:
    wanted = [(stage, name) for stage, names in TIMING_METRICS.items() for name in names if name]
    rows = con.execute(
        "SELECT stage, name, step, value FROM metrics WHERE run_id = ? AND value IS NOT NULL "
        "AND (stage, name) IN (SELECT unnest(?), unnest(?)) ORDER BY step",
        [run_id, [w[0] for w in wanted], [w[1] for w in wanted]]).fetchall()
    out: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for stage, name, step, value in rows:
        out.setdefault((stage, name), []).append((step, value))
    return out


def _per_iteration(points: Iterable[tuple[int, float]], starts: list[int]) -> list[tuple[int, float]]:
    """Optimizer-step values summed per iteration (keyed by the iteration's first step, where its rollout is
    recorded); per step when there are no rollouts to group by."""
    if not starts:
        return list(points)
    sums: dict[int, float] = {}
    for step, value in points:
        i = bisect_right(starts, step) - 1
        key = starts[i] if i >= 0 else step
        sums[key] = sums.get(key, 0.0) + value
    return sorted(sums.items())


def stage_seconds(con, run_id: str) -> dict[str, list[tuple[int, float]]]:
    """stage -> [(first step of the iteration, wall seconds of the stage)] of an RL run (SFT: per step)."""
    return _stage_seconds(_timing_rows(con, run_id))


def _stage_seconds(rows: dict[tuple[str, str], list[tuple[int, float]]]) -> dict[str, list[tuple[int, float]]]:
    starts = [s for s, _ in rows.get(("rollout", "rollout_seconds"), [])]
    out = {}
    for stage, names in TIMING_METRICS.items():
        points = rows.get((stage, names[0]), [])
        if points:
            out[stage] = _per_iteration(points, starts) if stage == "optimise" else points
    return out


def stage_timing(con, run_id: str) -> list[dict[str, Any]]:
    """One row per stage that recorded timings: medians over iterations (SFT: over log points) of the stage's
    seconds, its compute seconds (generation, reference forward), tokens/s, and the largest peak memory."""
    rows = _timing_rows(con, run_id)
    seconds = _stage_seconds(rows)

    def median(stage: str, name: str | None) -> float | None:
        values = [v for _, v in rows.get((stage, name), [])] if name else []
        return statistics.median(values) if values else None

    table = []
    for stage, (_, compute, rate, per_device, peak) in TIMING_METRICS.items():
        if stage not in seconds:
            continue
        peaks = [v for _, v in rows.get((stage, peak), [])] if peak else []
        table.append({"stage": "sft (per step)" if stage == "sft" else stage, "n": len(seconds[stage]),
                      "seconds": statistics.median(v for _, v in seconds[stage]),
                      "compute_seconds": median(stage, compute), "tokens_per_second": median(stage, rate),
                      "tokens_per_second_per_device": median(stage, per_device),
                      "peak_memory_mib": max(peaks) if peaks else None})
    return table
