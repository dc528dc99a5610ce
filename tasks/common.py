"""Conventions shared by every stage task.

- Results are small JSON manifests (paths, counts, metrics), persisted with Prefect's JSON serializer: no pickle
  is ever written to or read from the workspace.
- Cache keys are content-based (``stage_key``: the stage name, the run, the input checkpoint's content id, the
  batch, the stage config). A stage whose expected output has disappeared is re-run (``refresh_cache``) rather
  than answered from a cached manifest that points at nothing.
- Retries only on IO errors that can pass (``is_transient``), never on bad data or a bug.
- ``run_stage`` calls a task, records the outcome in the catalog's ``stages`` table (status, attempts, cache
  hit, seconds) together with the metrics the task returned (``records``), in one catalog connection (or
  queues it in ``pending``, which the RL flow writes once per iteration), and returns its manifest. The metrics travel in the manifest, so a cache hit writes them again (an upsert: same
  rows) and a process killed between a task's end and its catalog write loses nothing.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import Task

from care import identity
from care.store import catalog, runs

JSON_RESULTS = {"persist_result": True, "result_serializer": "json"}


def stage_key(*parts: Any) -> str:
    """A stable hash of the stage's inputs (pydantic models are dumped as JSON; ``care.identity.digest``)."""
    return identity.digest(list(parts))


def is_transient(task, task_run, state) -> bool:
    """Retry condition: IO errors that may pass (not a missing file, not bad data), and catalog locks."""
    try:
        state.result()
    except FileNotFoundError:
        return False
    except (OSError, catalog.CatalogError):
        return True
    except Exception:
        return False
    return False


def attempts() -> int:
    from prefect.runtime import task_run

    return int(task_run.run_count or 1)


def run_stage(task: Task, *, run_id: str, iteration: int, stage: str, output_ready: Callable[[], bool],
              catalog_file: str, pending: list[runs.StageOutcome] | None = None, **params: Any) -> dict:
    """Run ``task(run_id=, iteration=, **params)``; a cached result whose output is gone is recomputed.

    Records the outcome (and the metrics the task returned) in the ``stages`` table, or, given ``pending``,
    appends it there for the caller to write with others (``runs.record_stages``); a failure is written at
    once, with whatever is pending.
    """
    t0 = time.perf_counter()
    chosen = task if output_ready() else task.with_options(refresh_cache=True)
    if "catalog_file" in inspect.signature(task.fn).parameters:
        params["catalog_file"] = catalog_file
    state = chosen(run_id=run_id, iteration=iteration, **params, return_state=True)
    seconds = time.perf_counter() - t0
    queue = pending if pending is not None else []
    if not state.is_completed():
        queue.append(runs.StageOutcome(run_id, iteration, stage, "failed", seconds=seconds))
        runs.record_stages(queue, path=catalog_file)
        queue.clear()
        state.result()  # raises the task's exception
    manifest = dict(state.result())
    metrics = [runs.MetricRecord(*r) for r in manifest.pop(RECORDS_KEY, [])]
    cache_hit = state.name == "Cached"
    # the key Prefect cached the result under (same function, same inputs), so SQL can tie a row to its result
    key = task.cache_key_fn(None, {"run_id": run_id, "iteration": iteration, **params}) if task.cache_key_fn else None
    queue.append(runs.StageOutcome(run_id, iteration, stage, "completed",
                                   attempts=0 if cache_hit else int(manifest.get("attempts", 1)), cache_hit=cache_hit,
                                   seconds=seconds, cache_key=key,
                                   output=manifest.get("path") or manifest.get("checkpoint"), metrics=metrics))
    if pending is None:
        runs.record_stages(queue, path=catalog_file)
    return {**manifest, "cache_hit": cache_hit}


RECORDS_KEY = "metric_records"


def records(rows: list[tuple[int, dict, str]]) -> dict:
    """The part of a task's manifest that ``run_stage`` writes to ``metrics``: (step, values, stage) rows."""
    return {RECORDS_KEY: [list(r) for r in rows]}


def file_ready(path: str | Path) -> Callable[[], bool]:
    return lambda: Path(path).is_file()


def checkpoint_ready(path: str | Path) -> Callable[[], bool]:
    from care.train.checkpoint import is_complete

    return lambda: is_complete(path, full=False)  # sizes only: loading it verifies every byte
