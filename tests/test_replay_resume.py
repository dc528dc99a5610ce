"""Checkpoints every K iterations, and exact resume by replay, through the ``care`` command in real processes.

A run of 7 iterations at ``checkpoint_every: 3`` writes iter-3, iter-6 (in the background) and iter-7 (the last),
and nothing model-sized in between. Another workspace is SIGKILLed twice: after iteration 5's update (between
checkpoints: its state existed only in memory) and inside the background write of iter-6 (on a boundary). Each
re-run starts from the newest complete checkpoint, takes every finished rollout and score from the log (no
shard is rewritten), re-applies only the updates, and the run ends with the uninterrupted run's weights bit for
bit. Retention keeps the newest 2 plus every 3rd; the catalog lists exactly what is on disk.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.fault_helpers import PrefectServer, care, sql
from tests.rl_helpers import cache_demo

P, G, ITERATIONS, K = 2, 4, 7, 3


def _config(tmp: Path, demo_root: Path, model: Path) -> Path:
    cfg = {"model": str(model), "data_root": str(demo_root), "iterations": ITERATIONS, "shuffle_options": False,
           "run_name": "replay", "frames": {"nframes": 4}, "checkpoint_every": K, "keep_checkpoints": 2,
           "keep_every": 3,
           "rollout": {"group_size": G, "prompts_per_iteration": P, "sampling": {"max_new_tokens": 12}},
           "optim": {"learning_rate": 1e-2, "micro_batch_size": 4, "ema_every": 1}}
    path = tmp / "rl.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _ckpts(home: Path) -> Path:
    return home / "runs" / "replay" / "checkpoints"


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return {**{f"p.{k}": v for k, v in load_file(ckpt / "policy" / "model.safetensors").items()},
            **{f"r.{k}": v for k, v in load_file(ckpt / "reference" / "model.safetensors").items()}}


def _shards(home: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(home)): (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in sorted(home.glob("rollouts/run=replay/iteration=*/*.parquet"))}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, demo_root, tiny_model_dir):
    # one Prefect server for the module's 4 `care rl` processes, so each pays only its imports
    server = PrefectServer(tmp_path_factory.mktemp("prefect"))
    try:
        yield _run_all(tmp_path_factory, demo_root, tiny_model_dir, server.env)
    finally:
        server.stop()


def _run_all(tmp_path_factory, demo_root, tiny_model_dir, server_env: dict) -> dict:
    clean = tmp_path_factory.mktemp("clean")
    cache_demo(clean, demo_root)
    proc = care(clean, "rl", "--config", str(_config(clean, demo_root, tiny_model_dir)), env=server_env)
    assert proc.returncode == 0, proc.stderr[-3000:]

    crashed = tmp_path_factory.mktemp("crashed")
    cache_demo(crashed, demo_root)
    config = _config(crashed, demo_root, tiny_model_dir)
    between = care(crashed, "rl", "--config", str(config), env={**server_env, "CARE_FAILPOINT": "optimise@4"})
    assert between.returncode == -9, between.stderr[-2000:]
    assert sorted(p.name for p in _ckpts(crashed).glob("iter-*")) == ["iter-00000", "iter-00003"]
    logged = _shards(crashed)
    assert len(logged) == 2 * 5  # iterations 0-4 generated and scored; iteration 4's update was lost
    boundary = care(crashed, "rl", "--config", str(config),
                    env={**server_env, "CARE_FAILPOINT": "checkpoint-write@6"})
    assert boundary.returncode == -9, boundary.stderr[-2000:]
    assert list(_ckpts(crashed).glob(".tmp-iter-00006-*")), "the killed background write leaves its temp folder"
    assert not (_ckpts(crashed) / "iter-00006").exists()
    after_kills = _shards(crashed)
    final = care(crashed, "rl", "--config", str(config), env=server_env)
    assert final.returncode == 0, final.stderr[-3000:]
    return {"clean": clean, "crashed": crashed, "logged": logged, "after_kills": after_kills,
            "between": between.stdout + between.stderr, "boundary": boundary.stdout + boundary.stderr,
            "final": final.stdout + final.stderr}


def test_checkpoints_only_every_k_iterations_and_retention(runs):
    clean = runs["clean"]
    # written: 0 (start), 3, 6, 7 (the last); kept: the newest 2 (6, 7) plus every 3rd (3, 6)
    assert sorted(p.name for p in _ckpts(clean).iterdir()) == ["iter-00003", "iter-00006", "iter-00007"]
    rows = sql(clean, "select name, iteration from checkpoints order by name")
    assert rows == [{"name": f"iter-{n:05d}", "iteration": n} for n in (3, 6, 7)]
    assert sql(clean, "select count(*) as n from rollouts") == [{"n": ITERATIONS * P * G}]


def test_resume_replays_updates_and_never_resamples_or_rescores(runs):
    # the first re-run: iterations 1-4 from the log, the lost update of iteration 5 redone
    assert "iteration 4/7" in runs["boundary"] and "(cached: rollout, scoring, optimise)" in runs["boundary"]
    assert "iteration 5/7" in runs["boundary"] and "(cached: rollout, scoring)" in runs["boundary"]
    # every shard written before a kill is the same file, untouched, after the re-runs
    now = _shards(runs["crashed"])
    for name, stamp in runs["after_kills"].items():
        assert now[name] == stamp, name
    for name, stamp in runs["logged"].items():
        assert now[name] == stamp, name


def test_resumed_run_ends_with_the_uninterrupted_weights_bit_for_bit(runs):
    for name in ("iter-00003", "iter-00006", "iter-00007"):
        want, got = _weights(_ckpts(runs["clean"]) / name), _weights(_ckpts(runs["crashed"]) / name)
        assert want.keys() == got.keys()
        for k in want:
            assert torch.equal(want[k], got[k]), (name, k)
        assert {v.dtype for v in got.values()} == {torch.float32}  # fp32 master weights and reference


def test_catalog_matches_an_uninterrupted_run(runs):
    clean, crashed = runs["clean"], runs["crashed"]
    for query in ("select name, step, iteration from checkpoints order by name",
                  "select iteration, stage, status from stages order by all",
                  "select count(*) as n, count(distinct rollout_uid) as u from rollouts"):
        assert sql(crashed, query) == sql(clean, query), query
    for home in (clean, crashed):
        stray = [p for p in _ckpts(home).iterdir() if p.name.startswith(".tmp-")]
        assert all(p.name.startswith(".tmp-iter-00006") for p in stray), stray
