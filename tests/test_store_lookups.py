"""Catalog lookups the flows, the report and the CLI use, each on a real DuckDB file."""

from __future__ import annotations

import pytest

from care.store import catalog, media, runs
from care.store.catalog import CatalogError
from care.store.overview import metric_values


def test_run_kind_of_known_missing_and_fresh_catalog(tmp_path):
    db = tmp_path / "care.duckdb"
    assert runs.run_kind("r1", path=db) is None  # no file yet: created with its tables, no such run
    assert "runs" in {r[0] for r in catalog.query("SELECT table_name FROM information_schema.tables", path=db)}
    runs.start_run("r1", kind="rl", config={}, path=db)
    runs.start_run("e1", kind="eval", config={}, path=db)
    assert (runs.run_kind("r1", path=db), runs.run_kind("e1", path=db), runs.run_kind("x", path=db)) == (
        "rl", "eval", None)


def test_stored_config_round_trips_the_start_run_config(tmp_path):
    db = tmp_path / "care.duckdb"
    with pytest.raises(CatalogError, match="no catalog yet"):  # read-only: a missing catalog is not created
        runs.stored_config("r1", path=db)
    assert not db.exists()
    runs.start_run("r1", kind="sft", config={"lr": 1e-5, "data": {"root": "/d"}}, path=db)
    runs.start_run("r1", kind="sft", config={"lr": 2e-5, "data": {"root": "/d"}}, path=db)  # resumed: new config
    assert runs.stored_config("r1", path=db) == ("sft", {"lr": 2e-5, "data": {"root": "/d"}})
    assert runs.stored_config("missing", path=db) is None
    catalog.execute("INSERT INTO runs (run_id, kind, status) VALUES (?, ?, ?)", ["bare", "rl", "running"], path=db)
    assert runs.stored_config("bare", path=db) == ("rl", {})


def _media(path, *, status="ok", cache_hit=False) -> dict:
    return {"path": str(path), "kind": "video", "status": status, "cache_hit": cache_hit}


def test_decoded_count_counts_this_runs_decoded_ok_files(tmp_path):
    db = tmp_path / "care.duckdb"
    media.record_media([_media(tmp_path / "a.mp4"), _media(tmp_path / "b.mp4"),
                        _media(tmp_path / "c.mp4", cache_hit=True),
                        _media(tmp_path / "d.mp4", status="quarantined")], data_root=tmp_path, run_id="p1", path=db)
    media.record_media([_media(tmp_path / "e.mp4")], data_root=tmp_path, run_id="p0", path=db)
    assert media.decoded_count("p1", path=db) == 2  # a, b: c was a cache hit, d quarantined, e another run's
    assert media.decoded_count("p0", path=db) == 1
    assert media.decoded_count("none", path=db) == 0


def test_metric_values_leave_out_nulls_and_other_runs(tmp_path):
    db = tmp_path / "care.duckdb"
    runs.record_metrics("r1", 2, {"loss": 0.5, "bad": float("nan")}, stage="optimise", path=db)
    runs.record_metrics("r1", 1, {"loss": 0.75}, stage="optimise", path=db)
    runs.record_metrics("r2", 1, {"loss": 9.0}, path=db)
    with catalog.connect(db, read_only=True) as con:
        assert metric_values(con, "r1") == [("loss", 1, 0.75), ("loss", 2, 0.5)]
        assert metric_values(con, "none") == []


def test_resume_takes_the_stored_config_of_a_run_of_that_kind(tmp_path):
    from care.cli.common import training_config
    from care.config import ConfigError
    from care.train.sft_config import SFTConfig

    db = tmp_path / "care.duckdb"
    stored = SFTConfig(model="/m", data_root=str(tmp_path), steps=7)
    runs.start_run("sft-1", kind="sft", config=stored.model_dump(mode="json"), path=db)
    resumed = training_config(SFTConfig, "sft", config=None, overrides=["learning_rate=0.5"], resume="sft-1",
                              catalog_file=db)
    assert (resumed.steps, resumed.learning_rate, resumed.run_name, resumed.run_id()) == (7, 0.5, "sft-1", "sft-1")
    with pytest.raises(ConfigError, match="not found"):
        training_config(SFTConfig, "sft", config=None, overrides=None, resume="nope", catalog_file=db)
    with pytest.raises(ConfigError, match="is a sft run, not an rl run"):
        training_config(SFTConfig, "rl", config=None, overrides=None, resume="sft-1", catalog_file=db)
