"""The pipeline flow end to end under the Prefect test harness (tiny sizes): every stage runs, the results
table covers base/sft/rl x L1-L3, the plot is written, and a second run reuses every finished stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from care.data.demo import L3_DOMAINS
from care.pipeline import PipelineConfig
from care.store import catalog

SMALL = {
    "demo": {"train": 16, "val": 4},
    "frames": {"nframes": 4},
    "sft": {"shuffle_options": False, "steps": 4, "batch_size": 4, "learning_rate": 2e-3, "checkpoint_every": 2,
            "log_every": 2, "check_prompts": 2, "check_max_new_tokens": 8},
    "rl": {"shuffle_options": False, "iterations": 1,
           "rollout": {"group_size": 2, "prompts_per_iteration": 2, "sampling": {"max_new_tokens": 8}},
           "optim": {"micro_batch_size": 4}},
    # evaluations sample more frames than training, as SEED-Bench-R1's 16-frame protocol does
    "eval": {"decoding": {"max_new_tokens": 8}, "batch_size": 4, "frames": {"nframes": 6}},
}


@pytest.fixture(scope="module")
def first_and_second(prefect_harness, tmp_path_factory):
    from flows.pipeline import pipeline

    home = tmp_path_factory.mktemp("pipeline_home")
    config = PipelineConfig.model_validate(SMALL)
    first = pipeline(config, home=str(home))
    second = pipeline(config, home=str(home))
    return home, first, second


def test_pipeline_runs_every_stage(first_and_second):
    home, first, _ = first_and_second
    table = first["table"]
    levels = [r for r in table if "/" not in r["level"]]
    assert {(r["checkpoint"], r["level"]) for r in levels} == {
        (p, lvl) for p in ("base", "sft", "rl") for lvl in ("L1", "L2", "L3")}
    assert all(r["n"] == 4 for r in levels)
    # L3's rows carry a domain (the demo deals four round-robin): 4 rows, one per domain, after each L3 row
    domains = [r for r in table if "/" in r["level"]]
    assert {r["level"] for r in domains} == {f"L3/{d}" for d in L3_DOMAINS}
    assert len(domains) == 3 * 4 and all(r["n"] == 1 for r in domains)
    assert set(first["runs"]) == {"sft", "grpo_care"}
    with open(first["plot"], "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    assert json.loads(Path(first["results"]).read_text())["table"] == table
    nframes = catalog.query("select distinct nframes from eval_predictions", path=home / "care.duckdb")
    assert nframes == [(6,)]
    kinds = dict(catalog.query("select kind, count(*) from runs group by 1", path=home / "care.duckdb"))
    assert kinds == {"pipeline": 1, "sft": 1, "rl": 1, "eval": 1}


def test_second_run_reuses_every_stage(first_and_second):
    home, first, second = first_and_second
    assert second["table"] == first["table"]
    assert second["policy"] == first["policy"]
    db = home / "care.duckdb"
    # a re-run adds no rows: stages, checkpoints and results are upserts, and nothing was recomputed
    stages = catalog.query("select stage, cache_hit from stages where stage like 'eval:%' order by 1", path=db)
    assert stages and all(hit for _, hit in stages)
    assert catalog.query("select count(*) from rollouts", path=db) == [(2 * 2,)]
    rl_stages = catalog.query("select count(*) from stages where stage in ('rollout', 'scoring', 'optimise')", path=db)
    assert rl_stages == [(3,)]


def test_eval_frames_override_the_pipeline_frames_field_by_field():
    config = PipelineConfig.model_validate({"frames": {"nframes": 4, "max_pixels": 3136},
                                            "eval": {"frames": {"nframes": 16}}})
    frames = config.eval_config("ckpt", "data", "base").frames
    assert (frames.nframes, frames.max_pixels) == (16, 3136)
    assert config.sft_config("m", "data").frames.nframes == config.rl_config("m", "data").frames.nframes == 4
    # without eval.frames the evaluations sample as training does
    assert PipelineConfig.model_validate({"frames": {"nframes": 4}}).eval_config("c", "d", "base").frames.nframes == 4


def test_unknown_eval_frame_option_is_refused_with_its_name():
    with pytest.raises(ValueError, match="nframe"):
        PipelineConfig.model_validate({"eval": {"frames": {"nframe": 16}}})


def test_real_data_config_in_data_folder_is_valid():
    """data/seedbench_r1.yaml, the README's recipe for the real benchmark, loads (16 evaluation frames)."""
    from care.config import load_config

    config = load_config(PipelineConfig, Path(__file__).parents[1] / "data" / "seedbench_r1.yaml")
    rl = config.rl_config("m", "d")
    assert rl.rollout.backend == "vllm"
    assert (rl.checkpoint_every, rl.keep_checkpoints, rl.keep_every) == (10, 2, 250)  # bounded disk at 7B
    assert (rl.optim.num_processes, rl.optim.parallelism, rl.optim.precision) == (8, "fsdp2", "bf16")
    assert config.eval_config("c", "d", "base").frames.nframes == 16
