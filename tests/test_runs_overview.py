"""care runs / care show over a real catalog: headline figures, stage and metric summaries, missing tables."""

from __future__ import annotations

import json

import pytest

from care.cli import main
from care.store import runs
from care.store.catalog import CatalogError
from care.store.overview import list_runs, show_run


def _catalog(tmp_path):
    db = tmp_path / "care.duckdb"
    runs.start_run("rl-a", kind="rl", config={"algo": "grpo_care"}, path=db)
    for step, reward in ((1, 1.0), (2, 1.5)):
        runs.record_metrics("rl-a", step, {"reward_mean": reward, "bonus_rate": 0.25}, stage="scoring", path=db)
        runs.record_stage("rl-a", step - 1, "rollout", status="completed", seconds=0.5, path=db)
    runs.record_checkpoint("rl-a", "iter-00002", "/x/iter-00002", step=2, iteration=2, path=db)
    runs.finish_run("rl-a", status="completed", path=db)
    runs.start_run("sft-b", kind="sft", config={}, path=db)
    return db


def test_list_runs_headline(tmp_path):
    db = _catalog(tmp_path)
    rows = list_runs(db)
    assert [r["run_id"] for r in rows] == ["sft-b", "rl-a"]
    rl = rows[1]
    assert rl["status"] == "completed" and rl["headline"]["reward_mean"] == 1.5 and rl["headline"]["steps"] == 2
    assert [r["run_id"] for r in list_runs(db, kind="sft")] == ["sft-b"]


def test_show_run_sections(tmp_path):
    db = _catalog(tmp_path)
    (tmp_path / "runs" / "rl-a").mkdir(parents=True)
    (tmp_path / "runs" / "rl-a" / "results.png").write_bytes(b"x")
    info = show_run(db, "rl-a", tmp_path / "runs" / "rl-a")
    assert info["run"]["config"] == {"algo": "grpo_care"}
    assert len(info["stages"]) == 2 and info["checkpoints"][0]["name"] == "iter-00002"
    reward = next(m for m in info["metrics"] if m["name"] == "reward_mean")
    assert (reward["first"], reward["last"], reward["n"]) == (1.0, 1.5, 2)
    assert info["evaluations"] == []  # no eval_results table yet: empty, not an error
    assert info["files"][0].endswith("results.png")
    with pytest.raises(CatalogError, match="not found"):
        show_run(db, "nope", tmp_path)


def test_cli_json(tmp_path, capsys, monkeypatch):
    _catalog(tmp_path)
    monkeypatch.setenv("CARE_HOME", str(tmp_path))
    main(["--json", "runs"])
    assert [r["run_id"] for r in json.loads(capsys.readouterr().out)] == ["sft-b", "rl-a"]
    with pytest.raises(SystemExit) as exit_info:
        main(["show", "missing-run"])
    assert exit_info.value.code == 2
    assert "not found" in capsys.readouterr().err


def test_stage_timing_medians_and_the_plot_panel(tmp_path, capsys, monkeypatch):
    from care.eval.plots import plot_results
    from care.report import STAGE_SECONDS, training_series
    from care.store.catalog import connect
    from care.store.overview import stage_seconds

    db = tmp_path / "care.duckdb"
    runs.start_run("rl-t", kind="rl", config={}, path=db)
    # 3 iterations of 2 optimizer steps each; rollout, scoring and the stage peaks at each iteration's first step
    for it, first in enumerate((1, 3, 5)):
        runs.record_metrics("rl-t", first, {
            "rollout_seconds": 10.0 + it, "generation_seconds": 8.0 + it, "generation_tokens_per_second": 100.0 * (it + 1),
            "generation_tokens_per_second_per_device": 50.0 * (it + 1), "rollout_peak_memory_mib": 500.0 + it},
            stage="rollout", path=db)
        runs.record_metrics("rl-t", first, {"scoring_seconds": 2.0 * (it + 1), "reference_forward_seconds": it + 1.0,
                                            "scoring_peak_memory_mib": 300.0}, stage="scoring", path=db)
        runs.record_metrics("rl-t", first, {"optimise_peak_memory_mib": 700.0 + 10 * it}, stage="optimise", path=db)
        for k, step in enumerate((first, first + 1)):
            runs.record_metrics("rl-t", step, {"update_seconds": 1.0 + it + k, "tokens_per_second": 40.0 + step},
                                stage="optimise", path=db)
    info = show_run(db, "rl-t", tmp_path / "runs" / "rl-t")
    # optimise: update seconds summed per iteration (1+2, 2+3, 3+4), tokens/s the median over its 6 steps
    assert info["timing"] == [
        {"stage": "rollout", "n": 3, "seconds": 11.0, "compute_seconds": 9.0, "tokens_per_second": 200.0,
         "tokens_per_second_per_device": 100.0, "peak_memory_mib": 502.0},
        {"stage": "scoring", "n": 3, "seconds": 4.0, "compute_seconds": 2.0, "tokens_per_second": None,
         "tokens_per_second_per_device": None, "peak_memory_mib": 300.0},
        {"stage": "optimise", "n": 3, "seconds": 5.0, "compute_seconds": None, "tokens_per_second": 43.5,
         "tokens_per_second_per_device": None, "peak_memory_mib": 720.0}]
    with connect(db, read_only=True) as con:
        assert stage_seconds(con, "rl-t")["optimise"] == [(1, 3.0), (3, 5.0), (5, 7.0)]
        series = training_series(con, {"rl": "rl-t"})
    assert series[STAGE_SECONDS] == {"rollout": [(1.0, 10.0), (3.0, 11.0), (5.0, 12.0)],
                                     "scoring": [(1.0, 2.0), (3.0, 4.0), (5.0, 6.0)],
                                     "optimise": [(1.0, 3.0), (3.0, 5.0), (5.0, 7.0)]}
    assert plot_results(tmp_path / "p.png", training=series).stat().st_size > 0
    monkeypatch.setenv("CARE_HOME", str(tmp_path))
    main(["show", "rl-t"])
    out = capsys.readouterr().out
    assert "timing (median per iteration)" in out and "tokens/s/device" in out
