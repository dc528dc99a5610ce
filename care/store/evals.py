"""Catalog table of evaluation results, ``eval_results``, and the ``eval_predictions`` view over the Parquet files.

``eval_results`` has one row per (run_id, checkpoint_id, label, level, judge):

- ``judge = 'accuracy'`` is the level's accuracy row: ``n, correct, accuracy, ci_low, ci_high`` (Wilson); its
  consistency columns are NULL.
- any other ``judge`` is a consistency judge's full label (``rule@v1``,
  ``reference_likelihood@v1[reference=policy,threshold=0.5]``): ``consistency_rate`` (= n_consistent /
  n_judged, NULL when nothing was judged) with ``consistency_ci_low/high``, ``n_judged, n_unjudged,
  n_consistent`` and ``unjudged_reasons`` (JSON: code -> count). These rows repeat the level's accuracy
  columns, so one row answers "accuracy and consistency under judge X".
- ``level = 'all'`` rows pool every evaluated level.
- ``prompt_template`` names the prompt template (``care.algo.prompt``, ``name@version``) of every row.

Writes are upserts on the key, so re-running an evaluation replaces its rows. ``eval_predictions`` reads
``<runs_dir>/*/eval/*/*.parquet`` (one row per sample; see care.eval.evaluate) and, like ``rollouts``, is
(re)created once such files exist.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from care.store.catalog import connect, insert_rows, register_schema

ACCURACY_JUDGE = "accuracy"

EVAL_RESULTS_DDL = """
CREATE TABLE IF NOT EXISTS eval_results (
    run_id VARCHAR NOT NULL, checkpoint_id VARCHAR NOT NULL, label VARCHAR NOT NULL, level VARCHAR NOT NULL,
    judge VARCHAR NOT NULL, judge_name VARCHAR, checkpoint VARCHAR, n INTEGER, correct INTEGER, accuracy DOUBLE,
    ci_low DOUBLE, ci_high DOUBLE, consistency_rate DOUBLE, consistency_ci_low DOUBLE,
    consistency_ci_high DOUBLE, n_judged INTEGER, n_unjudged INTEGER, n_consistent INTEGER,
    unjudged_reasons JSON, confidence DOUBLE, predictions_path VARCHAR, created_at TIMESTAMP,
    prompt_template VARCHAR,
    PRIMARY KEY (run_id, checkpoint_id, label, level, judge)
)"""

# catalogs created before the column existed get it (NULL in their old rows)
EVAL_RESULTS_MIGRATIONS = ["ALTER TABLE eval_results ADD COLUMN IF NOT EXISTS prompt_template VARCHAR"]

register_schema("evals", [EVAL_RESULTS_DDL, *EVAL_RESULTS_MIGRATIONS])

COLUMNS = ("run_id", "checkpoint_id", "label", "level", "judge", "judge_name", "checkpoint", "n", "correct",
           "accuracy", "ci_low", "ci_high", "consistency_rate", "consistency_ci_low", "consistency_ci_high",
           "n_judged", "n_unjudged", "n_consistent", "unjudged_reasons", "confidence", "predictions_path",
           "created_at", "prompt_template")


def _finite(x: Any) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else float(x)


def result_rows(*, run_id: str, checkpoint_id: str, label: str, checkpoint: str, accuracy: Mapping[str, Any],
                consistency: Sequence[Mapping[str, Any]], predictions_path: str | None = None,
                prompt_template: str | None = None) -> list[tuple]:
    """``eval_results`` rows of one level: the accuracy row, then one row per consistency summary.

    ``accuracy`` is a ``LevelAccuracy.as_dict()``, ``consistency`` holds ``ConsistencySummary.as_dict()``s.
    ``prompt_template``: the template id the prompts were built from (default: ``accuracy["prompt_template"]``,
    which ``care.eval.evaluate`` sets).
    """
    template = prompt_template or accuracy.get("prompt_template")
    now = datetime.now(UTC).replace(tzinfo=None)
    level = accuracy["level"]
    acc = (accuracy["n"], accuracy["correct"], _finite(accuracy["accuracy"]), accuracy["ci_low"],
           accuracy["ci_high"])
    key = (run_id, checkpoint_id, label, level)
    rows = [(*key, ACCURACY_JUDGE, None, checkpoint, *acc, None, None, None, None, None, None, None,
             accuracy.get("confidence"), predictions_path, now, template)]
    for s in consistency:
        if s["level"] != level:
            raise ValueError(f"consistency summary of level {s['level']!r} given with accuracy of {level!r}")
        rows.append((*key, s["judge_label"], s["judge"], checkpoint, *acc, _finite(s["rate"]), s["ci_low"],
                     s["ci_high"], s["n_judged"], s["n_unjudged"], s["n_consistent"],
                     json.dumps(s["unjudged_reasons"], sort_keys=True), accuracy.get("confidence"),
                     predictions_path, now, template))
    return rows


def record_eval_results(rows: Sequence[tuple], *, path: str | os.PathLike | None = None) -> int:
    """Upsert ``result_rows`` output on (run_id, checkpoint_id, label, level, judge)."""
    return insert_rows("eval_results", COLUMNS, rows, key=("run_id", "checkpoint_id", "label", "level", "judge"),
                       path=path)


def predictions_glob(runs_dir: str | os.PathLike) -> str:
    return str(Path(runs_dir).resolve() / "*" / "eval" / "*" / "*.parquet")


def refresh_eval_predictions_view(runs_dir: str | os.PathLike, *, path: str | os.PathLike | None = None) -> bool:
    """(Re)create ``eval_predictions`` over every run's prediction files; False while there are none."""
    if not any(Path(runs_dir).glob("*/eval/*/*.parquet")):
        return False
    glob = predictions_glob(runs_dir).replace("'", "''")  # a path, not a value: DDL cannot bind parameters
    with connect(path) as con:
        con.execute("CREATE OR REPLACE VIEW eval_predictions AS "
                    f"SELECT * FROM read_parquet('{glob}', union_by_name=true, hive_partitioning=false)")
    return True
