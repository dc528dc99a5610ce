"""Rollout-log Parquet files: schema enforced, atomic write, readable by DuckDB across partitions."""

from __future__ import annotations

import duckdb
import pytest

from care.store.rollout_log import (
    GENERATED_SCHEMA,
    SCORED_FILE,
    SCORED_SCHEMA,
    iteration_dir,
    read_rows,
    rollout_uid,
    write_rows_atomic,
)


def _scored_row(run, it, g, k, reward):
    return {
        "rollout_uid": rollout_uid(run, it, g, k), "run_id": run, "iteration": it, "group": g, "sample_index": k,
        "prediction": "A", "reward_accuracy": 1.0, "reward_format": 1.0, "reward_base": 2.0,
        "has_answer_span": True, "ref_logprob_mean": -0.1, "ref_likelihood": 0.9, "bonus": 0.5,
        "reward": reward, "advantage": 0.0, "reference_checkpoint": "c0", "algo": "grpo_care",
        "scoring_seconds": 0.1,
    }


def test_write_read_round_trip_and_partitions_queryable(tmp_path):
    for it in (0, 1):
        rows = [_scored_row("r1", it, 0, k, 2.0 + k) for k in range(3)]
        write_rows_atomic(iteration_dir(tmp_path, "r1", it) / SCORED_FILE, rows, SCORED_SCHEMA)
    back = read_rows(iteration_dir(tmp_path, "r1", 1) / SCORED_FILE)
    assert [r["reward"] for r in back] == [2.0, 3.0, 4.0]
    assert back[0]["rollout_uid"] == "r1/1/0/0"
    glob = str(tmp_path / "**" / "*.parquet")
    res = duckdb.sql(
        f"select iteration, count(*), sum(reward) from read_parquet('{glob}', hive_partitioning=false) group by 1 order by 1"
    ).fetchall()
    assert res == [(0, 3, 9.0), (1, 3, 9.0)]
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_missing_column_named_and_nothing_written(tmp_path):
    row = _scored_row("r", 0, 0, 0, 1.0)
    del row["bonus"]
    target = tmp_path / "x" / SCORED_FILE
    with pytest.raises(ValueError, match=r"\['bonus'\]"):
        write_rows_atomic(target, [row], SCORED_SCHEMA)
    assert not target.exists()


def test_schemas_share_keys():
    keys = {"rollout_uid", "run_id", "iteration", "group", "sample_index"}
    assert keys <= set(GENERATED_SCHEMA.names) and keys <= set(SCORED_SCHEMA.names)
