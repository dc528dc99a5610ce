"""The ``rl`` flow through the ``care`` command, in real processes: 3 iterations end to end, the rollout log
and ``care sql``, and a real SIGKILL during the optimisation stage followed by a re-run that ends with the same
weights as an uninterrupted run and no duplicate catalog rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.fault_helpers import care as _care
from tests.fault_helpers import sql as _sql
from tests.rl_helpers import cache_demo
from tests.tracking_helpers import catalog_scalars, tensorboard_scalars

P, G, ITERATIONS = 2, 4, 3


def _config(tmp: Path, demo_root: Path, model: Path) -> Path:
    cfg = {"model": str(model), "data_root": str(demo_root), "iterations": ITERATIONS, "shuffle_options": False,
           "run_name": "flowtest", "frames": {"nframes": 4}, "report_to": ["tensorboard"],
           "rollout": {"group_size": G, "prompts_per_iteration": P, "sampling": {"max_new_tokens": 16}},
           "optim": {"learning_rate": 1e-2, "micro_batch_size": 4, "ema_every": 1},
           "eval_every": 3, "eval": {"levels": ["L1"], "limit_per_level": 2, "decoding": {"max_new_tokens": 8}}}
    path = tmp / "rl.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, demo_root, tiny_model_dir):
    home = tmp_path_factory.mktemp("home_a")
    cache_demo(home, demo_root)
    config = _config(home, demo_root, tiny_model_dir)
    proc = _care(home, "rl", "--config", str(config))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"home": home, "config": config, "stdout": proc.stdout + proc.stderr}


def _final_weights(home: Path) -> dict[str, torch.Tensor]:
    ckpt = home / "runs" / "flowtest" / "checkpoints" / f"iter-{ITERATIONS:05d}"
    return {**{f"p.{k}": v for k, v in load_file(ckpt / "policy" / "model.safetensors").items()},
            **{f"r.{k}": v for k, v in load_file(ckpt / "reference" / "model.safetensors").items()}}


def test_three_iterations_fill_the_rollout_log(uninterrupted):
    home = uninterrupted["home"]
    assert "iteration 3/3" in uninterrupted["stdout"]
    per_iteration = _sql(home, "select iteration, count(*) as n from rollouts group by 1 order by 1")
    assert per_iteration == [{"iteration": i, "n": P * G} for i in range(ITERATIONS)]
    nulls = _sql(home, "select count(*) as n from rollouts where "
                       + " or ".join(f'"{c}" is null' for c in (
                           "completion", "completion_ids", "behaviour_logprobs", "reward", "reward_accuracy",
                           "reward_format", "bonus", "advantage", "policy_checkpoint", "reference_checkpoint")))
    assert nulls == [{"n": 0}]
    stages = _sql(home, "select stage, count(*) as n, bool_and(status = 'completed') as ok from stages "
                        "where stage not like 'eval:%' group by 1 order by 1")
    assert stages == [{"stage": s, "n": ITERATIONS, "ok": True} for s in ("optimise", "rollout", "scoring")]
    # each stage row names the Prefect cache key of its result: one per iteration, prefixed by the task
    keys = _sql(home, "select stage, count(distinct cache_key) as k, "
                      "bool_and(starts_with(cache_key, split_part(stage, ':', 1) || '-')) as ok "
                      "from stages group by 1 order by 1")
    assert keys == [{"stage": "eval:iter-00003:L1", "k": 1, "ok": True},
                    *({"stage": s, "k": ITERATIONS, "ok": True} for s in ("optimise", "rollout", "scoring"))]
    steps = _sql(home, "select count(distinct step) as n from metrics where name = 'grad_norm'")
    assert steps == [{"n": ITERATIONS}]
    # per-stage timings users compare runs by: generation, reference forward, update, tokens/s
    timings = _sql(home, "select name, stage, count(*) as n, bool_and(value > 0) as positive from metrics where name "
                         "in ('generation_seconds', 'generation_tokens_per_second', 'reference_forward_seconds', "
                         "'update_seconds') group by 1, 2 order by 1")
    assert timings == [{"name": "generation_seconds", "stage": "rollout", "n": ITERATIONS, "positive": True},
                       {"name": "generation_tokens_per_second", "stage": "rollout", "n": ITERATIONS, "positive": True},
                       {"name": "reference_forward_seconds", "stage": "scoring", "n": ITERATIONS, "positive": True},
                       {"name": "update_seconds", "stage": "optimise", "n": ITERATIONS, "positive": True}]
    assert _sql(home, "select status from runs") == [{"status": "completed"}]
    # the periodic evaluation hook evaluated the checkpoint of iteration 3, attached to this run
    evals = _sql(home, "select label, level, n from eval_results where judge = 'accuracy' and level = 'L1'")
    assert evals == [{"label": "iter-00003", "level": "L1", "n": 2}]


def test_tensorboard_mirrors_the_catalog_and_care_show_times_the_stages(uninterrupted):
    home = uninterrupted["home"]
    # report_to: [tensorboard]: every metric the tasks recorded, at the same step, with the same value
    want, got = catalog_scalars(home / "care.duckdb", "flowtest"), tensorboard_scalars(home / "tracking" / "flowtest")
    assert set(got) == set(want)
    assert all(got[k] == pytest.approx(v, rel=1e-6) for k, v in want.items())
    assert {t for t, _ in got} >= {"rollout/generation_seconds", "scoring/reward_mean", "optimise/loss"}
    # each stage's peak memory, once per iteration (one process, hf backend: all measured in the flow's process)
    peaks = _sql(home, "select name, stage, count(*) as n, bool_and(value > 0) as positive from metrics "
                       "where name like '%peak_memory_mib' group by 1, 2 order by 1")
    assert peaks == [{"name": f"{s}_peak_memory_mib", "stage": s, "n": ITERATIONS, "positive": True}
                     for s in ("optimise", "rollout", "scoring")]
    shown = _care(home, "--json", "show", "flowtest")
    assert shown.returncode == 0, shown.stderr[-2000:]
    timing = {r["stage"]: r for r in json.loads(shown.stdout)["timing"]}
    assert list(timing) == ["rollout", "scoring", "optimise"] and all(r["n"] == ITERATIONS for r in timing.values())
    assert timing["rollout"]["tokens_per_second"] > 0 and timing["optimise"]["peak_memory_mib"] > 0
    table = _care(home, "show", "flowtest")
    assert table.returncode == 0 and "timing (median per iteration)" in table.stdout, table.stderr[-2000:]


def test_rerun_of_a_finished_run_does_nothing_new(uninterrupted):
    home = uninterrupted["home"]
    before = _final_weights(home)
    proc = _care(home, "rl", "--config", str(uninterrupted["config"]))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "already complete" in proc.stdout + proc.stderr
    after = _final_weights(home)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert _sql(home, "select count(*) as n from rollouts") == [{"n": ITERATIONS * P * G}]


def test_sigkill_during_optimisation_then_rerun_matches(uninterrupted, tmp_path, demo_root, tiny_model_dir):
    home = tmp_path / "home_b"
    cache_demo(home, demo_root)
    config = _config(tmp_path, demo_root, tiny_model_dir)
    killed = _care(home, "rl", "--config", str(config), env={"CARE_FAILPOINT": "optimise@1"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not (home / "runs" / "flowtest" / "checkpoints" / "iter-00002").exists()
    resumed = _care(home, "rl", "--config", str(config))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    out = resumed.stdout + resumed.stderr
    assert "cached: rollout, scoring" in out  # the interrupted iteration re-did only the optimisation
    want, got = _final_weights(uninterrupted["home"]), _final_weights(home)
    for k in want:
        assert torch.equal(want[k], got[k]), k
    assert _sql(home, "select count(*) as n, count(distinct rollout_uid) as u from rollouts") == [
        {"n": ITERATIONS * P * G, "u": ITERATIONS * P * G}]
    assert _sql(home, "select count(*) as n from stages") == [{"n": 3 * ITERATIONS + 1}]  # + the evaluation
    dup = _sql(home, "select count(*) as n from (select run_id, step, name from metrics group by all having count(*) > 1)")
    assert dup == [{"n": 0}]
