"""Prefect tasks of the evaluation stage: one cached task per level, and publishing the results.

``evaluate_level`` is cached by the evaluated model's content id, the level, the annotation file's bytes and the
whole ``EvalConfig`` (decoding, frames, judges, batch size, limit), so re-running an evaluation is a cache hit;
its Parquet file going missing re-runs it (``run_stage``). Results are JSON manifests; the catalog's
``eval_results`` rows are upserts, so nothing is duplicated by a re-run.
"""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from care.data.benchmarks import get_benchmark, load_levels
from care.eval.evaluate import overall_record, results_rows, run_eval_level
from care.eval.scoring import with_domains
from care.eval_schema import LIKELIHOOD_POLICY, LIKELIHOOD_REFERENCE, EvalConfig
from care.identity import content_id
from care.store import evals
from tasks.common import JSON_RESULTS, attempts, is_transient, stage_key


def annotation_sha(config: EvalConfig, level: str) -> str:
    if config.benchmark:  # every file the benchmark's adapter reads
        digest = hashlib.sha256()
        for path in get_benchmark(config.benchmark).annotation_files(Path(config.data_root)):
            digest.update(path.name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
        return digest.hexdigest()
    path = Path(config.data_root) / "annotations" / config.annotation_file(level)
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "missing"


@task(name="benchmark-levels", retries=1, retry_delay_seconds=1, retry_condition_fn=is_transient)
def benchmark_levels(config: EvalConfig) -> list[str]:
    """The levels to evaluate: ``config.levels``, or for a benchmark without them every category its data has
    (in first-seen order)."""
    if config.levels or not config.benchmark:
        return list(config.levels)
    return list(dict.fromkeys(s.split for s in load_levels(config.benchmark, config.data_root).samples))


def _likelihood_id(config: EvalConfig) -> str:
    if config.likelihood_model in (LIKELIHOOD_POLICY, LIKELIHOOD_REFERENCE):
        return config.likelihood_model
    return content_id(config.likelihood_model)


def _level_key(context, p) -> str:
    config: EvalConfig = p["config"]
    return "eval-" + stage_key(p["run_id"], p["checkpoint_id"], p["level"], annotation_sha(config, p["level"]),
                               config.model_dump(mode="json", exclude={"run_id"}), _likelihood_id(config),
                               p["out_dir"])


@task(name="evaluate-level", cache_key_fn=_level_key, retries=1, retry_delay_seconds=2,
      retry_condition_fn=is_transient, **JSON_RESULTS)
def evaluate_level(run_id: str, iteration: int, config: EvalConfig, level: str, checkpoint_id: str,
                   cache_root: str, out_dir: str, catalog_file: str) -> dict:
    """Generate, score and judge one level -> ``<out_dir>/<level>.parquet``; its ``eval_results`` rows recorded."""
    manifest = run_eval_level(config, level, cache_root=cache_root, out_dir=out_dir, run_id=run_id,
                              checkpoint_id=checkpoint_id)
    evals.record_eval_results(_level_rows(manifest), path=catalog_file)
    return {**manifest, "attempts": attempts()}


def _level_rows(record: dict, path: str | None = None) -> list[tuple]:
    """The level's rows, then those of its per-domain records (level ``L3/Hobbies``, ...) when it has any."""
    return [row for r in with_domains([record])
            for row in evals.result_rows(run_id=record["run_id"], checkpoint_id=record["checkpoint_id"],
                                         label=record["label"], checkpoint=record["checkpoint"],
                                         accuracy=r["accuracy"], consistency=r["consistency"],
                                         predictions_path=record.get("path", path))]


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", "-".join(parts).lower())).strip("-")


def _pct(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.1%}"


def table_records(rows: list[dict]) -> list[dict]:
    """Flat string cells for the table artifact and the printed table (accuracy and each judge's rate ± CI)."""
    out = []
    for r in rows:
        cells = {"level": r["level"], "n": r["n"],
                 "accuracy": f"{_pct(r['accuracy'])} [{_pct(r['ci_low'])}, {_pct(r['ci_high'])}]"}
        for key, c in r.items():
            if key.startswith("consistency["):
                cells["consistency " + key[len("consistency["):-1]] = (f"{_pct(c['rate'])} [{_pct(c['ci_low'])}, {_pct(c['ci_high'])}] "
                              f"judged {c['n_judged']}, unjudged {c['n_unjudged']}")
        out.append(cells)
    return out


def markdown_report(manifests: list[dict], cells: list[dict], *, run_id: str, label: str) -> str:
    first = manifests[0]
    header = list(cells[0])
    lines = [f"# Evaluation `{label}` of run `{run_id}`", "",
             f"Checkpoint `{first['checkpoint']}` (content id `{first['checkpoint_id']}`). Accuracy: exact letter "
             "match of the first answer tag (or the whole output); 95 % Wilson intervals. Consistency: rate over "
             "judged completions, per named judge.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c[h]) for h in header) + " |" for c in cells]
    lines += ["", "Per-sample predictions (Parquet):", *[f"- `{m['path']}`" for m in manifests], "",
              "Dig further: `care sql \"select level, prediction, gold, correct, completion from eval_predictions "
              f"where run_id = '{run_id}' and label = '{label}'\"`"]
    return "\n".join(lines)


@task(name="publish-eval-results", retries=2, retry_delay_seconds=1, retry_condition_fn=is_transient)
def publish_results(manifests: list[dict], confidence: float, runs_dir: str, catalog_file: str) -> dict:
    """Upsert every level's and the pooled ``all`` rows, refresh ``eval_predictions``, publish the artifacts."""
    overall = overall_record(manifests, confidence)
    first = manifests[0]
    rows = [row for m in manifests for row in _level_rows(m)]
    rows += evals.result_rows(run_id=first["run_id"], checkpoint_id=first["checkpoint_id"], label=first["label"],
                              checkpoint=first["checkpoint"], accuracy=overall["accuracy"],
                              consistency=overall["consistency"])
    evals.record_eval_results(rows, path=catalog_file)
    evals.refresh_eval_predictions_view(runs_dir, path=catalog_file)
    results = results_rows([*with_domains(manifests), overall])
    cells = table_records(results)
    key = artifact_key("eval", first["run_id"], first["label"])
    create_table_artifact(table=cells, key=key, description=f"Accuracy and consistency per level: {first['label']}")
    create_markdown_artifact(markdown=markdown_report(manifests, cells, run_id=first["run_id"], label=first["label"]),
                             key=f"{key}-report", description="Evaluation report")
    return {"results": results, "cells": cells, "artifact_key": key}
