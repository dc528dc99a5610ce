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
