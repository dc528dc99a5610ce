"""Run metadata tables: upserts never duplicate; the rollouts view joins generated and scored shards."""

from __future__ import annotations

import json

import duckdb
import pytest

from care.store import catalog, runs
from care.store.rollout_log import (
    GENERATED_FILE,
    GENERATED_SCHEMA,
    SCORED_FILE,
    SCORED_SCHEMA,
    iteration_dir,
    rollout_uid,
    write_rows_atomic,
)


def _gen_row(run, it, g, k):
    row = {f.name: None for f in GENERATED_SCHEMA}
    row.update(rollout_uid=rollout_uid(run, it, g, k), run_id=run, iteration=it, group=g, sample_index=k,
               sample_id=f"s{g}", completion=f"c{k}", completion_ids=[1, 2], behaviour_logprobs=[-0.1, -0.2])
    return row


def _scored_row(run, it, g, k):
    row = {f.name: None for f in SCORED_SCHEMA}
    row.update(rollout_uid=rollout_uid(run, it, g, k), run_id=run, iteration=it, group=g, sample_index=k,
               reward=float(k), bonus=0.5 if k == 0 else 0.0)
    return row


def test_runs_stages_metrics_upsert(tmp_path):
    db = tmp_path / "c.duckdb"
    runs.start_run("r1", kind="rl", config={"lr": 1e-6}, path=db)
    runs.start_run("r1", kind="rl", config={"lr": 2e-6}, path=db)  # resume: same row
    for _ in range(2):  # a stage re-run replaces its row
        runs.record_stage("r1", 0, "rollout", status="completed", seconds=1.0, path=db)
        runs.record_metrics("r1", 1, {"reward_mean": 1.5, "nan_metric": float("nan")}, stage="optimise", path=db)
        runs.record_checkpoint("r1", "step-1", "/x/step-1", step=1, iteration=0, path=db)
    runs.finish_run("r1", status="completed", path=db)
    assert catalog.query("select count(*), any_value(status) from runs", path=db) == [(1, "completed")]
    assert json.loads(catalog.query("select config from runs", path=db)[0][0]) == {"lr": 2e-6}
    assert catalog.query("select count(*) from stages", path=db) == [(1,)]
    assert catalog.query("select count(*) from checkpoints", path=db) == [(1,)]
    assert sorted(catalog.query("select name, value from metrics", path=db)) == [("nan_metric", None),
                                                                                  ("reward_mean", 1.5)]


def test_stage_row_and_its_metrics_are_one_transaction(tmp_path):
    db = tmp_path / "c.duckdb"
    records = [runs.MetricRecord(3, {"loss": 0.5, "bad": float("inf")}, "optimise"),
               runs.MetricRecord(4, {"loss": 0.25}, "optimise")]
    runs.record_stage("r1", 2, "optimise", status="completed", seconds=0.1, metrics=records, path=db)
    runs.record_stage("r1", 2, "optimise", status="completed", cache_hit=True, metrics=records, path=db)  # cache hit
    assert catalog.query("select cache_hit from stages", path=db) == [(True,)]
    assert sorted(catalog.query("select step, name, value, stage from metrics", path=db)) == [
        (3, "bad", None, "optimise"), (3, "loss", 0.5, "optimise"), (4, "loss", 0.25, "optimise")]
    # a metric row that cannot be written (no step) rolls the stage row back with it
    with pytest.raises(duckdb.ConstraintException, match="NOT NULL"):
        runs.record_stage("r1", 5, "rollout", status="completed", metrics=[runs.MetricRecord(None, {"x": 1.0})],
                          path=db)
    assert catalog.query("select count(*) from stages where iteration = 5", path=db) == [(0,)]


def test_rollouts_view_joins_scores(tmp_path):
    db, root = tmp_path / "c.duckdb", tmp_path / "rollouts"
    assert runs.refresh_rollouts_view(root, path=db) is False
    for it in (0, 1):
        write_rows_atomic(iteration_dir(root, "r1", it) / GENERATED_FILE,
                          [_gen_row("r1", it, 0, k) for k in range(2)], GENERATED_SCHEMA)
    assert runs.refresh_rollouts_view(root, path=db) is True
    assert catalog.query("select count(*) from rollouts", path=db) == [(4,)]
    write_rows_atomic(iteration_dir(root, "r1", 0) / SCORED_FILE,
                      [_scored_row("r1", 0, 0, k) for k in range(2)], SCORED_SCHEMA)
    runs.refresh_rollouts_view(root, path=db)
    rows = catalog.query(
        "select iteration, sample_index, reward, bonus, completion from rollouts order by iteration, sample_index",
        path=db)
    assert rows == [(0, 0, 0.0, 0.5, "c0"), (0, 1, 1.0, 0.0, "c1"), (1, 0, None, None, "c0"), (1, 1, None, None, "c1")]


def test_recorded_keeps_the_run_row_of_a_flow_body(tmp_path):
    db = tmp_path / "c.duckdb"
    with runs.recorded("ok", kind="rl", config={}, path=db):
        assert catalog.query("select status from runs where run_id = 'ok'", path=db) == [("running",)]
    with pytest.raises(KeyboardInterrupt), runs.recorded("stopped", kind="rl", config={}, path=db):
        raise KeyboardInterrupt  # a BaseException: Ctrl-C still marks the run failed
    with pytest.raises(ValueError, match="bad row"), runs.recorded("bad", kind="sft", config={}, path=db):
        raise ValueError("bad row 3")
    with runs.recorded("inner", kind="eval", config={}, path=db, own=False):
        pass
    assert sorted(catalog.query("select run_id, status, message from runs", path=db)) == [
        ("bad", "failed", "ValueError: bad row 3"), ("ok", "completed", None), ("stopped", "failed", "KeyboardInterrupt: ")]
