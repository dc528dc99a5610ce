"""Parquet rollout logs: one row per sampled completion, hive-partitioned by run and iteration.

Two sibling files per iteration, joined by ``rollout_uid`` in the catalog's ``rollouts`` view:

    <home>/rollouts/run=<run_id>/iteration=<n>/generated.parquet   written by the rollout stage
    <home>/rollouts/run=<run_id>/iteration=<n>/scored.parquet      written by the scoring stage

Splitting them keeps each stage's output immutable once written (a re-run of scoring never rewrites the
rollouts it scored), so each stage can be cached and retried on its own. Files are written to a temporary
name and renamed, so a reader (or a crashed writer's re-run) never sees half a file.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

GENERATED_FILE = "generated.parquet"
SCORED_FILE = "scored.parquet"

GENERATED_SCHEMA = pa.schema(
    [
        ("rollout_uid", pa.string()),
        ("run_id", pa.string()),
        ("iteration", pa.int32()),
        ("group", pa.int32()),
        ("sample_index", pa.int32()),
        ("sample_id", pa.string()),
        ("split", pa.string()),
        ("gold", pa.string()),
        ("options", pa.list_(pa.string())),
        ("question", pa.string()),
        ("prompt_version", pa.string()),
        ("prompt_template", pa.string()),  # care.algo.prompt template id (name@version) the prompt was built from
        ("policy_checkpoint", pa.string()),
        ("backend", pa.string()),
        ("seed", pa.int64()),
        ("temperature", pa.float32()),
        ("top_p", pa.float32()),
        ("top_k", pa.int32()),
        ("max_new_tokens", pa.int32()),
        ("prompt_tokens", pa.int32()),
        ("completion_tokens", pa.int32()),
        ("truncated", pa.bool_()),
        ("completion", pa.string()),
        ("completion_ids", pa.list_(pa.int32())),
        ("behaviour_logprobs", pa.list_(pa.float32())),
        ("generation_seconds", pa.float32()),
    ]
)

SCORED_SCHEMA = pa.schema(
    [
        ("rollout_uid", pa.string()),
        ("run_id", pa.string()),
        ("iteration", pa.int32()),
        ("group", pa.int32()),
        ("sample_index", pa.int32()),
        ("prediction", pa.string()),
        ("reward_accuracy", pa.float32()),
        ("reward_format", pa.float32()),
        ("reward_base", pa.float32()),
        ("has_answer_span", pa.bool_()),
        ("ref_logprob_mean", pa.float32()),
        ("ref_likelihood", pa.float32()),
        ("bonus", pa.float32()),
        ("reward", pa.float32()),
        ("advantage", pa.float32()),
        ("reference_checkpoint", pa.string()),
        ("algo", pa.string()),
        ("scoring_seconds", pa.float32()),
    ]
)


def iteration_dir(rollouts_root: Path, run_id: str, iteration: int) -> Path:
    return Path(rollouts_root) / f"run={run_id}" / f"iteration={iteration}"


def rollout_uid(run_id: str, iteration: int, group: int, sample_index: int) -> str:
    """Stable key of one completion: ``<run>/<iteration>/<group>/<sample_index>``."""
    return f"{run_id}/{iteration}/{group}/{sample_index}"


def write_rows_atomic(path: Path, rows: Sequence[dict[str, Any]], schema: pa.Schema) -> Path:
    """Write ``rows`` (dicts keyed by the schema's field names) as one zstd Parquet file, atomically.

    A missing key or a value of the wrong type raises, naming the column, before anything is written.
    Hive partition columns (run_id, iteration) are stored in the file as well, so a file read on its own is
    self-describing.
    """
    path = Path(path)
    missing = [f.name for f in schema if any(f.name not in row for row in rows)]
    if missing:
        raise ValueError(f"{path.name}: rows lack column(s) {missing}")
    table = pa.Table.from_pylist([{f.name: row[f.name] for f in schema} for row in rows], schema=schema)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        pq.write_table(table, tmp, compression="zstd")
        with tmp.open("rb") as fh:
            os.fsync(fh.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def read_rows(path: Path) -> list[dict[str, Any]]:
    return pq.read_table(path).to_pylist()
