"""Read-only summaries of runs for ``care runs`` and ``care show``: plain dicts, one short connection each.

Tables another module creates may not exist yet in a young catalog (e.g. no evaluation has run); each query
here checks for its table first, so an overview never fails on a missing table.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from care.store.catalog import CatalogError, connect

HEADLINE_METRICS = ("reward_mean", "reward_accuracy_mean", "bonus_rate", "loss", "check_format", "check_accuracy")


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
