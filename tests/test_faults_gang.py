"""SIGKILL of one follower rank of the resident gang (``care.train.gang``) in the middle of an RL run: the
command fails naming the dead rank, no rank or agent process is left, and a re-run resumes (from the newest
checkpoint, replaying the logged updates since on the new gang's ranks) to the state of an uninterrupted run.

``care run`` (RL only) with 2 CPU ranks, 3 iterations, a checkpoint every 2; rank 1 is killed when the
rollout of iteration 1 reaches it (``CARE_FAILPOINT=gang-rank1@1``), so the state after iteration 0 existed
only in the ranks' memory. About 3 minutes on 2 cores (``make test-faults``)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import psutil
import pytest
import yaml

from care.train.gang import CONTROL_ENV
from tests.fault_helpers import (
    assert_same_tensors,
    checkpoint_tensors,
    pipeline_setup,
    run_setup,
)

pytestmark = pytest.mark.faults


def _config(path: Path, data_root: Path, model: Path) -> Path:
    cfg = {"name": "gang-faults", "data_root": str(data_root), "model": str(model), "workers": 1, "seed": 0,
           "frames": {"nframes": 4, "max_pixels": 3136, "image_max_pixels": 3136},
           "run_sft": False, "evaluate": [],
           "rl": {"shuffle_options": False, "iterations": 3, "checkpoint_every": 2,
                  "rollout": {"group_size": 4, "prompts_per_iteration": 2, "generation_batch_prompts": 1,
                              "sampling": {"max_new_tokens": 12}},
                  "scoring": {"scoring_batch_size": 4},
                  "optim": {"learning_rate": 1e-3, "micro_batch_size": 4, "ema_every": 1, "num_processes": 2}}}
    path.write_text(yaml.safe_dump(cfg))
    return path


def _gang_processes() -> list[psutil.Process]:
    """Processes of this user that carry a gang's control address (ranks; agents inherit it too)."""
    found = []
    for p in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if p.status() != psutil.STATUS_ZOMBIE and CONTROL_ENV in p.environ():
                found.append(p)
    return found


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    yield from pipeline_setup(tmp_path_factory.mktemp("gang_faults"), _config)


def _final(home: Path) -> Path:
    found = sorted(home.glob("runs/*/checkpoints/iter-00003"))
    assert len(found) == 1, found
    return found[0]


def test_sigkill_of_a_follower_rank_then_resume_equals_an_uninterrupted_run(setup):
    assert not _gang_processes()
    clean = setup["root"] / "clean"
    proc = run_setup(setup, clean)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not _gang_processes()  # the end of the flow stopped the gang

    crashed = setup["root"] / "crashed"
    proc = run_setup(setup, crashed, failpoint="gang-rank1@1")
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "rank 1 (pid" in output and "died" in output, output[-3000:]
    assert not _gang_processes(), "ranks outlived the failed run"
    assert not list(crashed.glob("runs/*/checkpoints/iter-00002"))  # killed before any checkpoint after iter-0

    proc = run_setup(setup, crashed)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not _gang_processes()
    assert_same_tensors(checkpoint_tensors(_final(clean)), checkpoint_tensors(_final(crashed)))
