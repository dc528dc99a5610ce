"""Crash at every stage: the whole pipeline (``care run``) is killed with SIGKILL inside each stage in turn, in
real processes, and re-run; the end state equals an uninterrupted run with the same seed.

One workspace is killed at each failpoint (``care.failpoints``) in pipeline order, each kill in its own ``care``
process that resumes what the previous one left: preprocessing (after 3 files cached), evaluation (the base
checkpoint's first level, before its Parquet), SFT (after step 2, before its checkpoint), an SFT checkpoint
write (files written, not renamed), then RL at ``checkpoint_every: 2`` over 4 iterations: a rollout, an
optimisation between checkpoints (its state only in memory), the background write of the iter-2 checkpoint,
scoring between checkpoints (after a resume that replayed), the last optimisation before its checkpoint, and
the last checkpoint write. A last run completes. Then the final SFT and RL checkpoints, the rollout log, every
evaluation's predictions and the catalog equal those of an uninterrupted run in another workspace.

The processes share one Prefect server (``PREFECT_API_URL``) so each pays only its imports; the private per-
command server and its death with a killed command are tested in ``test_faults_orphans.py``. About 4-6 minutes
on 2 cores, so the module is marked ``faults`` and runs with ``make test-faults``.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from care.media.cache import read_entry
from care.train.checkpoint import is_complete, latest_complete
from tests.fault_helpers import (
    assert_same_tensors,
    catalog_tables,
    checkpoint_tensors,
    pipeline_setup,
    run_setup,
)

pytestmark = pytest.mark.faults

# Columns that hold timings, wall-clock times, or ids/paths that name the workspace (different by design).
# Checkpoint content ids hash every file of a checkpoint, workspace-specific ones included; the weights
# themselves are compared bit for bit in test_final_checkpoints_equal_an_uninterrupted_run.
VOLATILE = {"generation_seconds", "scoring_seconds", "seconds", "created_at", "updated_at", "finished_at",
            "git_revision", "update_seconds", "tokens_per_second", "seconds_per_step",
            "policy_checkpoint", "reference_checkpoint", "checkpoint_id"}


def _config(path: Path, data_root: Path, model: Path) -> Path:
    cfg = {"name": "faults", "data_root": str(data_root), "model": str(model), "workers": 1, "seed": 0,
           "frames": {"nframes": 4, "max_pixels": 3136, "image_max_pixels": 3136},
           "evaluate": ["base", "sft", "rl"],
           "sft": {"shuffle_options": False, "steps": 3, "batch_size": 4, "learning_rate": 2e-3,
                   "checkpoint_every": 1, "log_every": 1, "check_prompts": 0, "keep_checkpoints": 0},
           "rl": {"shuffle_options": False, "iterations": 4, "checkpoint_every": 2,
                  "rollout": {"group_size": 4, "prompts_per_iteration": 2, "sampling": {"max_new_tokens": 12}},
                  "optim": {"learning_rate": 1e-3, "micro_batch_size": 8, "ema_every": 1}},
           "eval": {"decoding": {"max_new_tokens": 12}, "batch_size": 8}}
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    yield from pipeline_setup(tmp_path_factory.mktemp("faults"), _config)


def _only(pattern: str, home: Path) -> Path:
    found = sorted(home.glob(pattern))
    assert len(found) == 1, (pattern, found)
    return found[0]


# After each kill: where the process died, seen from the workspace (so a failpoint that silently stopped
# firing, or fired elsewhere, fails the test).
def _after_preprocess(home: Path) -> None:
    entries = list((home / "cache" / "frames").glob("??/*.parquet"))
    assert 0 < len(entries) < 55, len(entries)  # 16 train + 3 x 4 val rows: 55 distinct media files


def _after_evaluation(home: Path) -> None:
    assert not list(home.glob("runs/*/eval/base/*.parquet"))


def _after_sft(home: Path) -> None:
    ckpts = _only("runs/sft-*/checkpoints", home)
    assert latest_complete(ckpts, "step-")[0] == 1


def _after_sft_checkpoint_write(home: Path) -> None:
    ckpts = _only("runs/sft-*/checkpoints", home)
    assert latest_complete(ckpts, "step-")[0] == 1
    assert list(ckpts.glob(".tmp-step-00002-*")), "the killed write leaves its temp folder"


def _rl_checkpoints(home: Path) -> list[str]:
    return sorted(p.name for p in _only("runs/grpo-care-*/checkpoints", home).glob("iter-*") if is_complete(p))


def _after_rollout(home: Path) -> None:
    assert not list(home.glob("rollouts/run=*/iteration=0/generated.parquet"))
    assert _rl_checkpoints(home) == ["iter-00000"]


def _after_optimise_between(home: Path) -> None:
    assert _only("rollouts/run=*/iteration=0/scored.parquet", home)
    assert _rl_checkpoints(home) == ["iter-00000"]  # iteration 1 writes none: its state was only in memory


def _after_background_write(home: Path) -> None:
    assert _rl_checkpoints(home) == ["iter-00000"]
    assert list(_only("runs/grpo-care-*/checkpoints", home).glob(".tmp-iter-00002-*"))


def _after_scoring_between(home: Path) -> None:
    # the re-run rewrote iter-2 in the background; whether it finished before this kill is a race
    assert _rl_checkpoints(home) in (["iter-00000"], ["iter-00000", "iter-00002"])
    assert _only("rollouts/run=*/iteration=2/generated.parquet", home)
    assert not list(home.glob("rollouts/run=*/iteration=2/scored.parquet"))


def _after_last_optimise(home: Path) -> None:
    assert _only("rollouts/run=*/iteration=3/scored.parquet", home)
    assert _rl_checkpoints(home) in (["iter-00000"], ["iter-00000", "iter-00002"])


def _after_last_checkpoint_write(home: Path) -> None:
    assert _rl_checkpoints(home) in (["iter-00000"], ["iter-00000", "iter-00002"])
    assert list(_only("runs/grpo-care-*/checkpoints", home).glob(".tmp-iter-00004-*"))


KILLS = [("preprocess@3", _after_preprocess), ("evaluation", _after_evaluation), ("sft@2", _after_sft),
         ("checkpoint-write@0", _after_sft_checkpoint_write), ("rollout@0", _after_rollout),
         ("optimise@0", _after_optimise_between), ("checkpoint-write@2", _after_background_write),
         ("scoring@2", _after_scoring_between), ("optimise@3", _after_last_optimise),
         ("checkpoint-write@4", _after_last_checkpoint_write)]


@pytest.fixture(scope="module")
def runs(setup):
    clean = setup["root"] / "clean"
    proc = run_setup(setup, clean)
    assert proc.returncode == 0, proc.stderr[-3000:]
    crashed = setup["root"] / "crashed"
    for point, where in KILLS:
        proc = run_setup(setup, crashed, point)
        assert proc.returncode == -9, f"{point}: expected SIGKILL, got {proc.returncode}\n{proc.stderr[-3000:]}"
        where(crashed)
    proc = run_setup(setup, crashed)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return clean, crashed


def test_final_checkpoints_equal_an_uninterrupted_run(runs):
    clean, crashed = runs
    for pattern in ("runs/sft-*/checkpoints/step-00003", "runs/grpo-care-*/checkpoints/iter-00002",
                    "runs/grpo-care-*/checkpoints/iter-00004"):
        want, got = _only(pattern, clean), _only(pattern, crashed)
        assert is_complete(got)
        assert_same_tensors(checkpoint_tensors(want), checkpoint_tensors(got))


def _parquet_rows(home: Path, pattern: str) -> dict[str, list[dict]]:
    out = {}
    for f in sorted(home.glob(pattern)):
        rel = "/".join(p for p in f.relative_to(home).parts if not p.startswith(("run=", "grpo-care-", "eval-")))
        out[rel] = [{k: v for k, v in r.items() if k not in VOLATILE and not _names_workspace(v, home)}
                    for r in pq.read_table(f).to_pylist()]
    return out


def _names_workspace(value, home: Path) -> bool:
    return isinstance(value, str) and (str(home) in value or value.startswith(("grpo-care-", "eval-")))


def test_rollout_logs_and_predictions_equal_an_uninterrupted_run(runs):
    clean, crashed = runs
    for pattern in ("rollouts/run=*/iteration=*/*.parquet", "runs/*/eval/*/*.parquet"):
        want, got = _parquet_rows(clean, pattern), _parquet_rows(crashed, pattern)
        assert want and sorted(want) == sorted(got)
        for name in want:
            assert want[name] == got[name], name


def test_no_half_written_file_is_left_where_a_reader_looks(runs):
    _, crashed = runs
    stray = [p for p in crashed.rglob("*") if p.name.startswith(".") and p.name.endswith(".tmp")]
    # A decoding worker killed with its command may leave its entry's temp file (".<key>.<random>.tmp"): no
    # reader globs it (they open "<key>.parquet"), and the entry itself was rewritten whole by the re-run.
    for tmp in stray:
        assert tmp.parent.parent == crashed / "cache" / "frames", tmp
        read_entry(tmp.parent / f"{tmp.name[1:].split('.')[0]}.parquet")  # exists and verifies
    # Killed checkpoint writes leave .tmp-* folders; no checkpoint lookup lists them (the reruns above passed
    # through latest_complete), and none is named in the catalog.
    names = {r["path"] for r in catalog_tables(crashed)["checkpoints"]}
    assert not [n for n in names if "/.tmp-" in n]


def test_catalog_has_no_duplicate_or_orphan_rows(runs):
    clean, crashed = runs
    want, got = catalog_tables(clean), catalog_tables(crashed)
    assert sorted(want) == sorted(got)
    for table in want:
        assert len(got[table]) == len(want[table]), (table, len(want[table]), len(got[table]))
    assert {r["status"] for r in got["runs"]} == {"completed"}
    assert {r["status"] for r in got["stages"]} == {"completed"}
    for row in got["checkpoints"]:
        assert is_complete(row["path"]), row  # every catalogued checkpoint exists and verifies
    with_files = [r for r in got["eval_results"] if r["predictions_path"]]  # pooled rows ("all") have none
    assert with_files and all(Path(r["predictions_path"]).is_file() for r in with_files)
    keys = lambda rows, cols: sorted(tuple(r[c] for c in cols) for r in rows)  # noqa: E731
    assert keys(got["stages"], ("iteration", "stage")) == keys(want["stages"], ("iteration", "stage"))
    assert keys(got["metrics"], ("step", "name")) == keys(want["metrics"], ("step", "name"))
    assert keys(got["eval_results"], ("label", "level", "judge", "n", "correct")) == keys(
        want["eval_results"], ("label", "level", "judge", "n", "correct"))
