"""Catalog tables of training runs: ``runs``, ``stages``, ``checkpoints``, ``metrics``, and the ``rollouts`` view.

Every write is an upsert on the table's natural key, so a re-run of a stage (after a crash, a retry or a cache
hit) replaces its rows instead of duplicating them:

- ``runs``        (run_id): kind, config JSON, git revision, status, timings
- ``stages``      (run_id, iteration, stage): status, attempts, cache hit, seconds, cache key, output
- ``checkpoints`` (run_id, name): path, optimizer step, iteration
- ``metrics``     (run_id, step, name): value, stage

The ``rollouts`` view joins the generated and scored Parquet shards of every run on ``rollout_uid``; like
``frames`` it is (re)created once files exist, because DuckDB binds a view's files when it is created.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from care import tracking
from care.store.catalog import connect, execute, insert_rows, insert_rows_on, query, register_schema

RUNS_DDL = """
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY, kind VARCHAR NOT NULL, config JSON, git_revision VARCHAR,
    status VARCHAR NOT NULL, created_at TIMESTAMP, updated_at TIMESTAMP, finished_at TIMESTAMP,
    seconds DOUBLE, message VARCHAR
)"""

STAGES_DDL = """
CREATE TABLE IF NOT EXISTS stages (
    run_id VARCHAR NOT NULL, iteration INTEGER NOT NULL, stage VARCHAR NOT NULL, status VARCHAR NOT NULL,
    attempts INTEGER, cache_hit BOOLEAN, seconds DOUBLE, cache_key VARCHAR, output VARCHAR, updated_at TIMESTAMP,
    PRIMARY KEY (run_id, iteration, stage)
)"""

CHECKPOINTS_DDL = """
CREATE TABLE IF NOT EXISTS checkpoints (
    run_id VARCHAR NOT NULL, name VARCHAR NOT NULL, path VARCHAR NOT NULL, step INTEGER, iteration INTEGER,
    created_at TIMESTAMP, PRIMARY KEY (run_id, name)
)"""

METRICS_DDL = """
CREATE TABLE IF NOT EXISTS metrics (
    run_id VARCHAR NOT NULL, step INTEGER NOT NULL, name VARCHAR NOT NULL, value DOUBLE, stage VARCHAR,
    PRIMARY KEY (run_id, step, name)
)"""

register_schema("runs", [RUNS_DDL, STAGES_DDL, CHECKPOINTS_DDL, METRICS_DDL])


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def git_revision(cwd: str | os.PathLike | None = None) -> str | None:
    """The source tree's commit (with ``-dirty`` when modified), or None outside a git checkout."""
    here = Path(cwd) if cwd else Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=12"], cwd=here,
                             capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return rev or None


def start_run(run_id: str, *, kind: str, config: Mapping[str, Any], path=None) -> None:
    """Create the run row, or mark an existing one running again (resume) keeping its creation time."""
    now = _now()
    with connect(path) as con:
        con.execute(
            """INSERT INTO runs (run_id, kind, config, git_revision, status, created_at, updated_at)
               VALUES (?, ?, ?, ?, 'running', ?, ?)
               ON CONFLICT (run_id) DO UPDATE SET status = 'running', updated_at = excluded.updated_at,
                   config = excluded.config, git_revision = excluded.git_revision, message = NULL""",
            [run_id, kind, json.dumps(dict(config), default=str), git_revision(), now, now],
        )


def finish_run(run_id: str, *, status: str, message: str | None = None, path=None) -> None:
    now = _now()
    execute(
        """UPDATE runs SET status = ?, message = ?, updated_at = ?, finished_at = ?,
               seconds = date_diff('millisecond', created_at, ?) / 1000.0 WHERE run_id = ?""",
        [status, message, now, now, now, run_id], path=path,
    )


def run_kind(run_id: str, *, path=None) -> str | None:
    """The ``kind`` of run ``run_id`` (``sft``, ``rl``, ``eval``, ...), or None when the catalog has no such run.

    Opens the catalog read-write, so a fresh catalog gets its tables (and this returns None)."""
    with connect(path) as con:
        rows = con.execute("SELECT kind FROM runs WHERE run_id = ?", [run_id]).fetchall()
    return rows[0][0] if rows else None


def stored_config(run_id: str, *, path=None) -> tuple[str, dict[str, Any]] | None:
    """``(kind, config)`` of run ``run_id``: its kind and the config stored by ``start_run`` (a dict, empty when
    none was stored), or None when the catalog has no such run. Read-only: ``CatalogError`` without a catalog."""
    rows = query("SELECT kind, config FROM runs WHERE run_id = ?", [run_id], path=path)
    if not rows:
        return None
    kind, config = rows[0]
    return kind, json.loads(config) if config is not None else {}


@contextmanager
def recorded(run_id: str, *, kind: str, config: Mapping[str, Any], path=None, own: bool = True) -> Iterator[None]:
    """The ``runs`` row around a flow's body: ``running`` on entry (``start_run``), ``completed`` when the body
    ends, ``failed`` with the exception's type and message when it raises (the exception goes on).
    ``own=False`` records nothing: the body belongs to a run whose row another flow keeps."""
    if not own:
        yield
        return
    start_run(run_id, kind=kind, config=config, path=path)
    try:
        yield
    except BaseException as exc:
        finish_run(run_id, status="failed", message=f"{type(exc).__name__}: {exc}"[:500], path=path)
        raise
    finish_run(run_id, status="completed", path=path)


class StageOutcome(NamedTuple):
    """One ``stages`` row and the metrics its stage produced (one ``MetricRecord`` per step)."""

    run_id: str
    iteration: int
    stage: str
    status: str
    attempts: int = 1
    cache_hit: bool = False
    seconds: float | None = None
    cache_key: str | None = None
    output: str | None = None
    metrics: Sequence[MetricRecord] = ()


def record_stage(run_id: str, iteration: int, stage: str, *, status: str, attempts: int = 1,
                 cache_hit: bool = False, seconds: float | None = None, cache_key: str | None = None,
                 output: str | None = None, metrics: Sequence[MetricRecord] = (), path=None) -> None:
    """Upsert the stage's row and, in the same transaction, the metrics it produced."""
    record_stages([StageOutcome(run_id, iteration, stage, status, attempts, cache_hit, seconds, cache_key, output,
                                metrics)], path=path)


def record_stages(outcomes: Sequence[StageOutcome], *, path=None) -> None:
    """Upsert stage rows and their metrics in one transaction, one connection: opening the catalog costs
    25-100 ms on a 2-core machine, so an RL iteration writes its three stages at once (``run_stage``'s
    ``pending``), not one connection each."""
    if not outcomes:
        return
    stage_rows = [[o.run_id, o.iteration, o.stage, o.status, o.attempts, o.cache_hit, o.seconds, o.cache_key,
                   o.output, _now()] for o in outcomes]
    metric_rows = [row for o in outcomes for record in o.metrics for row in _metric_rows(o.run_id, record)]
    with connect(path) as con:
        con.execute("BEGIN")
        try:
            insert_rows_on(con, "stages", STAGE_COLUMNS, stage_rows, key=("run_id", "iteration", "stage"))
            insert_rows_on(con, "metrics", METRIC_COLUMNS, metric_rows, key=METRIC_KEY)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
    for o in outcomes:
        for record in o.metrics:
            tracking.log(o.run_id, record.step, _finite(record.values), stage=record.stage)


def record_checkpoint(run_id: str, name: str, ckpt_path: str, *, step: int, iteration: int, path=None) -> None:
    execute(
        "INSERT OR REPLACE INTO checkpoints (run_id, name, path, step, iteration, created_at) VALUES (?, ?, ?, ?, ?, ?)",
        [run_id, name, str(ckpt_path), step, iteration, _now()], path=path,
    )


def sync_checkpoints(run_id: str, present: list[tuple[str, str, int, int]], *, path=None) -> None:
    """Make the run's ``checkpoints`` rows the checkpoints on disk: ``present`` = (name, path, step, iteration) of
    each complete one. New ones are added, pruned ones removed, kept ones untouched (their ``created_at``)."""
    names = [p[0] for p in present]
    with connect(path) as con:
        known = {r[0] for r in con.execute("SELECT name FROM checkpoints WHERE run_id = ?", [run_id]).fetchall()}
        con.execute("BEGIN")
        try:
            for gone in known - set(names):
                con.execute("DELETE FROM checkpoints WHERE run_id = ? AND name = ?", [run_id, gone])
            for name, ckpt_path, step, iteration in present:
                if name not in known:
                    con.execute("INSERT INTO checkpoints (run_id, name, path, step, iteration, created_at) "
                                "VALUES (?, ?, ?, ?, ?, ?)", [run_id, name, str(ckpt_path), step, iteration, _now()])
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise


class MetricRecord(NamedTuple):
    """The metrics one stage produced at one optimizer step (``record_metrics`` / ``record_stage``)."""

    step: int
    values: Mapping[str, float | None]
    stage: str | None = None


STAGE_COLUMNS = ("run_id", "iteration", "stage", "status", "attempts", "cache_hit", "seconds", "cache_key", "output",
                 "updated_at")
METRIC_COLUMNS = ("run_id", "step", "name", "value", "stage")
METRIC_KEY = ("run_id", "step", "name")


def _finite(values: Mapping[str, float | None]) -> dict[str, float | None]:
    out = {}
    for name, value in values.items():
        v = float(value) if value is not None else None
        out[name] = v if v is not None and math.isfinite(v) else None
    return out


def _metric_rows(run_id: str, record: MetricRecord) -> list[tuple]:
    return [(run_id, record.step, name, v, record.stage) for name, v in _finite(record.values).items()]


def record_metrics(run_id: str, step: int, metrics: Mapping[str, float], *, stage: str | None = None,
                   path=None) -> int:
    """Upsert one value per metric name at ``step``; NaN/inf are stored as NULL (no value), not dropped.

    Then mirrored to the run's experiment trackers when its flow opened any in this process (``care.tracking``)."""
    record = MetricRecord(step, metrics, stage)
    written = insert_rows("metrics", METRIC_COLUMNS, _metric_rows(run_id, record), key=METRIC_KEY, path=path)
    tracking.log(run_id, step, _finite(metrics), stage=stage)
    return written


def refresh_rollouts_view(rollouts_root: str | os.PathLike, *, path=None) -> bool:
    """(Re)create ``rollouts``: generated shards left-joined with their scores. False while none exist."""
    root = Path(rollouts_root).resolve()
    if not any(root.glob("run=*/iteration=*/generated.parquet")):
        return False
    gen = str(root / "run=*" / "iteration=*" / "generated.parquet").replace("'", "''")
    scored = str(root / "run=*" / "iteration=*" / "scored.parquet").replace("'", "''")
    has_scores = any(root.glob("run=*/iteration=*/scored.parquet"))
    # paths, not values: DDL cannot bind parameters
    if has_scores:
        body = (f"SELECT g.*, s.* EXCLUDE (rollout_uid, run_id, iteration, \"group\", sample_index) "
                f"FROM read_parquet('{gen}', hive_partitioning=false, union_by_name=true) g "
                f"LEFT JOIN read_parquet('{scored}', hive_partitioning=false, union_by_name=true) s "
                f"USING (rollout_uid)")
    else:
        body = f"SELECT * FROM read_parquet('{gen}', hive_partitioning=false, union_by_name=true)"
    with connect(path) as con:
        con.execute(f"CREATE OR REPLACE VIEW rollouts AS {body}")
    return True
