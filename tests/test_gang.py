"""The resident rank gang (``care.train.gang``): 2 CPU ranks (gloo) run 3 RL iterations equal to one process,
with every rank generating and scoring and no process started between iterations; two "nodes" on 127.0.0.1
rendezvous through torchrun's c10d; a killed driver leaves no rank behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from care.models.loading import load_model
from care.store.rollout_log import read_rows
from care.train import gang, warm
from care.train.config import RLConfig
from care.train.gang import Gang, GangSpec, free_port
from care.train.iteration import initial_state, run_iteration
from care.train.sharded import is_sharded_checkpoint
from tests.rl_helpers import cache_demo

ITERATIONS = 3
# Adam's first steps are ~lr * sign(g): float noise in near-zero gradients would flip whole updates. A large eps
# makes a step ~lr * g / eps, linear in the gradient, so equal gradients (to float rounding) give equal weights.
LINEAR = {"adam_eps": 1.0, "learning_rate": 1.0, "weight_decay": 0.0, "ema_every": 1, "ema_decay": 0.9,
          "lr_scheduler": "constant", "micro_batch_size": 4}


@pytest.fixture(scope="module")
def data(tmp_path_factory, demo_root):
    return cache_demo(tmp_path_factory.mktemp("gang_home"), demo_root)


def _config(model: Path, data_root: Path, **optim) -> RLConfig:
    return RLConfig.model_validate({
        "run_name": "gang", "model": str(model), "data_root": str(data_root), "shuffle_options": False,
        "iterations": ITERATIONS, "seed": 1,
        # 2 generation chunks and 4 scoring batches: each rank takes half of both
        "rollout": {"group_size": 4, "prompts_per_iteration": 4, "generation_batch_prompts": 2,
                    "sampling": {"max_new_tokens": 12}},
        "scoring": {"scoring_batch_size": 4},
        "optim": {**LINEAR, **optim},
    })


def _run(root: Path, config: RLConfig, data) -> dict:
    """ITERATIONS iterations through ``run_iteration``, a checkpoint only after the last one."""
    warm.clear()
    state = initial_state(config, data, checkpoints=root / "checkpoints", rollouts_root=root / "rollouts")
    ids = sorted(s.sample_id for s in data.load().samples)
    out = {"generated": [], "scored": [], "steps": [], "pids": [], "rollout_ranks": [], "scoring_ranks": [], "peaks": []}
    for it in range(ITERATIONS):
        last = it + 1 == ITERATIONS
        result = run_iteration(config, state, data=data, sample_ids=ids, rollouts_root=root / "rollouts",
                               checkpoint_out=root / "checkpoints" / "final" if last else None, timeout_s=600)
        state = result.state
        out["generated"].append(read_rows(Path(result.rollout["path"])))
        out["scored"].append(read_rows(Path(result.scoring["path"])))
        out["steps"] += result.optimise["steps"]
        out["rollout_ranks"].append(result.rollout.get("rows_per_rank"))
        out["scoring_ranks"].append(result.scoring.get("rows_per_rank"))
        out["peaks"].append([len(m.get("peak_memory_per_rank") or []) for m in (result.rollout, result.scoring,
                                                                               result.optimise)])
        out["pids"].append([g.rank_pids() for g in gang.live()])
    out["checkpoint"] = root / "checkpoints" / "final"
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data, tiny_model_dir):
    root = tmp_path_factory.mktemp("gang_runs")
    one = _run(root / "one", _config(tiny_model_dir, Path(data.data_root)), data)
    ddp = _run(root / "ddp", _config(tiny_model_dir, Path(data.data_root), num_processes=2), data)
    fsdp = _run(root / "fsdp", _config(tiny_model_dir, Path(data.data_root), num_processes=2, parallelism="fsdp2"),
                data)
    gang.close_all()
    return {"one": one, "ddp": ddp, "fsdp2": fsdp}


def _assert_same_iterations(want: dict, got: dict) -> None:
    """Same sampled tokens and rewards; log-probs, likelihoods, advantages, losses to float tolerance.

    Tolerances: the ranks' gradients are all-reduced (DDP) or reduce-scattered (FSDP2) in another order than
    one process sums them, so weights after an update agree to ~1e-6 relative and log-probs computed from them
    to ~1e-5; sampled tokens are equal (a flip would need a uniform draw within ~1e-6 of a CDF boundary)."""
    for it in range(ITERATIONS):
        a, b = want["generated"][it], got["generated"][it]
        assert [r["completion_ids"] for r in a] == [r["completion_ids"] for r in b], f"iteration {it} tokens"
        assert [r["rollout_uid"] for r in a] == [r["rollout_uid"] for r in b]
        for ra, rb in zip(a, b, strict=True):
            np.testing.assert_allclose(ra["behaviour_logprobs"], rb["behaviour_logprobs"], rtol=0, atol=2e-5)
        sa, sb = want["scored"][it], got["scored"][it]
        assert [r["reward_base"] for r in sa] == [r["reward_base"] for r in sb]
        for key in ("ref_likelihood", "advantage", "bonus"):
            values = [[np.nan if r[key] is None else r[key] for r in rows] for rows in (sa, sb)]
            np.testing.assert_allclose(*values, rtol=0, atol=2e-5, equal_nan=True, err_msg=key)
    for sa, sb in zip(want["steps"], got["steps"], strict=True):
        assert sa["step"] == sb["step"]
        assert sa["loss"] == pytest.approx(sb["loss"], rel=1e-4, abs=1e-6)
        assert sa["grad_norm"] == pytest.approx(sb["grad_norm"], rel=1e-4)


@pytest.mark.parametrize("layout", ["ddp", "fsdp2"])
def test_two_rank_gang_equals_one_process_over_three_iterations(runs, layout):
    one, two = runs["one"], runs[layout]
    _assert_same_iterations(one, two)
    for part in ("policy", "reference"):  # through load_model: one-process or sharded checkpoints alike
        want, got = (load_model(run["checkpoint"] / part).state_dict() for run in (one, two))
        assert want.keys() == got.keys()
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6, msg=f"{part} {k}")
    assert is_sharded_checkpoint(two["checkpoint"]) == (layout == "fsdp2")


@pytest.mark.parametrize("layout", ["ddp", "fsdp2"])
def test_every_rank_generates_and_scores(runs, layout):
    two = runs[layout]
    assert two["rollout_ranks"] == [[8, 8]] * ITERATIONS  # 2 chunks of 2 prompts x G=4, one per rank
    assert two["scoring_ranks"] == [[8, 8]] * ITERATIONS  # 4 batches of 4 rollouts, two per rank
    assert runs["one"]["rollout_ranks"] == [None] * ITERATIONS  # one process: no gang
    assert two["peaks"] == [[2, 2, 2]] * ITERATIONS  # each rank measured its peak memory in every stage


@pytest.mark.parametrize("layout", ["ddp", "fsdp2"])
def test_no_process_starts_between_iterations(runs, layout):
    """One gang for the whole run: the same two rank processes in every iteration, and no checkpoint but
    the last (the state stayed resident in the ranks)."""
    pids = runs[layout]["pids"]
    assert len(pids[0]) == 1 and len(pids[0][0]) == 2
    assert pids == [pids[0]] * ITERATIONS
    folder = runs[layout]["checkpoint"].parent
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == ["final", "iter-00000"]


def test_two_nodes_rendezvous_over_c10d(tmp_path, data, tiny_model_dir):
    """Two torchrun agents ("nodes", 1 rank each) on 127.0.0.1 join one gang through the c10d rendezvous; a
    real iteration on them equals the first iteration of one process."""
    endpoint = f"127.0.0.1:{free_port()}"
    config = _config(tiny_model_dir, Path(data.data_root), num_processes=2, nnodes=2, rdzv_endpoint=endpoint)
    crew = gang.shared(gang.spec_of(config.optim), run_key="two-nodes")
    try:
        pings = crew.call("ping")
        assert [p["rank"] for p in pings] == [0, 1] and {p["world"] for p in pings} == {2}
        assert len(crew._agents) == 2  # one agent per node
        warm.clear()
        state = initial_state(config, data, checkpoints=tmp_path / "checkpoints", rollouts_root=tmp_path / "rollouts")
        ids = sorted(s.sample_id for s in data.load().samples)
        result = run_iteration(config, state, data=data, sample_ids=ids, rollouts_root=tmp_path / "rollouts",
                               timeout_s=600)
        assert result.rollout["rows_per_rank"] == [8, 8]
        one = _run(tmp_path / "one", _config(tiny_model_dir, Path(data.data_root)).model_copy(
            update={"iterations": ITERATIONS}), data)
        got = read_rows(Path(result.rollout["path"]))
        assert [r["completion_ids"] for r in got] == [r["completion_ids"] for r in one["generated"][0]]
        assert result.optimise["steps"][0]["loss"] == pytest.approx(one["steps"][0]["loss"], rel=1e-4, abs=1e-6)
    finally:
        crew.close()


def test_other_nodes_come_from_the_node_launcher(capsys):
    """With nnodes > local_nodes the driver starts its own node and asks the registered launcher for the rest
    (the rl flow registers Prefect's: tests/test_deployments_postgres.py); here the launcher runs the node with
    ``run_node`` in a thread, as a gang-node flow run does. Unset, the driver prints the command to run."""
    spec = GangSpec(nproc_per_node=1, nnodes=2, rdzv_endpoint=f"127.0.0.1:{free_port()}", local_nodes=1,
                    node_deployment="gang-node/gang-node")
    started: list[tuple] = []

    class ThreadNode:
        def __init__(self, control, run_key):
            self.code = None
            self.thread = threading.Thread(target=self._run, args=(control, run_key), daemon=True)
            self.thread.start()

        def _run(self, control, run_key):
            self.code = gang.run_node(spec, control, run_key=run_key)

        def describe(self):
            return "node 1: a thread"

        def ended(self):
            return None if self.code is None else f"exit status {self.code}"

        def cancel(self):
            pass

    def launcher(got, control, run_key, node_ranks):
        started.append((got, node_ranks))
        return [ThreadNode(control, run_key) for _ in node_ranks]

    gang.set_node_launcher(launcher)
    try:
        crew = Gang(spec, run_key="launched")
        try:
            assert [p["rank"] for p in crew.call("ping")] == [0, 1] and len(crew._agents) == 1
            assert started == [(spec, [1])]
        finally:
            crew.close()
        node = crew._remote[0]
        node.thread.join(60)
        # both nodes ended on the gang's stop command, not by a kill: the remote one leaves the rendezvous, which
        # the driver hosts, before it goes
        assert node.code == 0 and [a.returncode for a in crew._agents] == [0]
    finally:
        gang.set_node_launcher(None)
    assert "1 other node(s) submitted: node 1: a thread" in capsys.readouterr().out
    manual = GangSpec(nproc_per_node=1, nnodes=2, rdzv_endpoint=f"127.0.0.1:{free_port()}", local_nodes=1)
    with pytest.raises(gang.GangError, match="did not start within 3 s"):
        Gang(manual, start_timeout_s=3)  # nobody starts node 1
    out = capsys.readouterr().out
    assert "waiting for 1 other node(s)" in out and f"{gang.CONTROL_ENV}=127.0.0.1:" in out
    assert "--rdzv-endpoint " + manual.rdzv_endpoint in out


DRIVER = """
import json, sys, time
from care.train.gang import Gang, GangSpec
crew = Gang(GangSpec(nproc_per_node=2))
print(json.dumps({"ranks": crew.rank_pids(), "agents": [a.pid for a in crew._agents]}), flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by its parent) is gone for every purpose here
    return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"


def test_killed_driver_leaves_no_rank(tmp_path):
    """SIGKILL of the process that holds the gang (a flow's process): its ranks and torchrun agent exit."""
    driver = subprocess.Popen([sys.executable, "-c", DRIVER], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parent.parent)
    try:
        info = json.loads(driver.stdout.readline())
        pids = [*map(int, info["ranks"].values()), *info["agents"]]
        assert len(pids) == 3 and all(_alive(p) for p in pids)
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        deadline = time.monotonic() + 60
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [p for p in pids if _alive(p)], "gang processes outlived the driver"
    finally:
        driver.kill()


def test_a_dead_rank_fails_the_call_naming_it():
    crew = Gang(GangSpec(nproc_per_node=2))
    try:
        victim = crew.rank_pids()[1]
        os.kill(victim, signal.SIGKILL)
        with pytest.raises(gang.GangError, match=rf"rank 1 \(pid {victim}\) died|rank 1 .*failed"):
            crew.call("ping", timeout_s=120)
        assert not crew.alive()
    finally:
        crew.close()
    assert not _alive(victim)


def test_a_rank_error_names_the_rank_and_the_stage():
    crew = Gang(GangSpec(nproc_per_node=2))
    try:
        with pytest.raises(gang.GangError, match=r"rank \d of the gang failed in stage 'nonsense'.*KeyError"):
            crew.call("nonsense", timeout_s=120)
    finally:
        crew.close()


def test_placement_is_checked_and_is_not_part_of_a_runs_identity(tiny_model_dir, data):
    from care.train.config import OptimConfig

    with pytest.raises(ValueError, match="needs rdzv_endpoint"):
        OptimConfig(num_processes=2, nnodes=2)
    with pytest.raises(ValueError, match="not a multiple of nnodes"):
        OptimConfig(num_processes=3, nnodes=2, rdzv_endpoint="h:1")
    here = _config(tiny_model_dir, Path(data.data_root), num_processes=2)
    there = _config(tiny_model_dir, Path(data.data_root), num_processes=2, nnodes=2, rdzv_endpoint="10.0.0.1:29400",
                    local_nodes=1, control_host="10.0.0.1", node_deployment="gang-node/gang-node")
    assert here.run_id() == there.run_id() and here.optim.identity() == there.optim.identity()
    assert _config(tiny_model_dir, Path(data.data_root), num_processes=4).optim.identity() != here.optim.identity()
    spec = gang.spec_of(there.optim)
    assert (spec.nproc_per_node, spec.nnodes, spec.nodes_started_here, spec.world_size) == (1, 2, 1, 2)
    command = gang.node_command(spec, run_key="r")
    assert command[command.index("--rdzv-endpoint") + 1] == "10.0.0.1:29400" and "--standalone" not in command


def test_a_batch_the_ranks_cannot_split_is_refused_before_any_work():
    from care.train.config import RLConfig

    base = {"model": "m", "data_root": "d", "rollout": {"group_size": 3, "prompts_per_iteration": 3}}
    with pytest.raises(ValueError, match=r"9 rollouts cannot be split evenly over optim.num_processes=2"):
        RLConfig(**base, optim={"num_processes": 2})
    assert RLConfig(**base, optim={"num_processes": 3}).optim.num_processes == 3
