"""The training state of an RL run between checkpoints: what identifies it, and how it is rebuilt.

A checkpoint is written every ``checkpoint_every`` iterations, not every iteration. In between, the state after
iteration n (fp32 policy, EMA reference, AdamW moments, schedule, counters) lives in the process's memory, and
its durable record is the newest checkpoint plus the logged shards of the iterations since: an update is a
deterministic function of the state before it and of that iteration's ``generated.parquet`` and
``scored.parquet``. So:

- **Identity.** ``state_id`` of the state after iteration n+1 = sha256 of (state_id after n, sha256 of the two
  shards of iteration n, the update's settings). The state after 0 iterations has its checkpoint's content id.
  Stage cache keys and the rollout/score rows name states by this id, so nothing needs a checkpoint per
  iteration, and an id never depends on where (or whether) its state was checkpointed.
- **Rebuild (replay).** ``materialise`` returns the state from the in-process cache (``care.train.warm``), or
  loads the newest complete checkpoint at or before it whose id chains to the wanted id over the logged shards,
  and re-applies those iterations' updates: no generation, no scoring, only updates. On CPU the result equals
  the uninterrupted state bit for bit (tested), because the update reads nothing but the shards and the state.

``PolicyState`` is the small JSON value that stages pass around instead of a checkpoint path.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from pydantic import BaseModel

from care import identity
from care.errors import CareError
from care.models.samples import DataSpec
from care.store.rollout_log import GENERATED_FILE, SCORED_FILE, iteration_dir
from care.train.config import OptimConfig


class ReplaySpec(BaseModel):
    """How a run's updates are (re-)applied: the same for every iteration of a run."""

    data: DataSpec
    config: OptimConfig
    total_steps: int
    temperature: float
    max_new_tokens: int

    def identity(self) -> dict:
        """What of the spec changes an update's result (not where the data lives)."""
        return {"config": self.config.identity(), "total_steps": self.total_steps,
                "temperature": self.temperature, "max_new_tokens": self.max_new_tokens}


class PolicyState(BaseModel):
    """The state after ``iteration`` RL iterations of a run, named by ``state_id`` (not necessarily on disk)."""

    state_id: str
    iteration: int
    step: int = 0  # optimizer steps taken (derived from the state, not part of its identity)
    checkpoints: str  # the run's folder of iter-NNNNN checkpoints
    checkpoint: str | None = None  # a checkpoint known to hold exactly this state (any name)
    rollouts_root: str | None = None  # with run_id: where the logged shards of the run's iterations are
    run_id: str | None = None
    replay: ReplaySpec | None = None  # None: this state is a checkpoint and nothing is replayed onto it

    def shards(self, iteration: int) -> tuple[Path, Path]:
        """(generated, scored) shard of ``iteration``."""
        if self.rollouts_root is None or self.run_id is None:
            raise CareError(f"state {self.state_id}: no rollout log to replay iteration {iteration} from")
        folder = iteration_dir(Path(self.rollouts_root), self.run_id, iteration)
        return folder / GENERATED_FILE, folder / SCORED_FILE


def file_sha(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def chain_id(previous: str, generated: str | Path, scored: str | Path, spec: ReplaySpec) -> str:
    """Id of the state after one update from state ``previous`` on these shards."""
    return identity.digest([previous, file_sha(generated), file_sha(scored), spec.identity()])


def checkpoint_state_id(checkpoint: str | Path) -> str:
    """The state id a checkpoint holds: recorded in its state.json by the RL loop, else its content id."""
    from care.train.checkpoint import read_training_state

    recorded = read_training_state(checkpoint).extra.get("state_id")
    return str(recorded) if recorded else identity.checkpoint_id(checkpoint)


def of_checkpoint(checkpoint: str | Path, *, rollouts_root: str | None = None, run_id: str | None = None,
                  replay: ReplaySpec | None = None) -> PolicyState:
    """The state a complete checkpoint holds."""
    from care.train.checkpoint import read_training_state, verify_manifest

    verify_manifest(Path(checkpoint), full=False)  # loading it verifies every byte
    st = read_training_state(checkpoint)
    return PolicyState(state_id=checkpoint_state_id(checkpoint), iteration=st.iteration, step=st.step,
                       checkpoints=str(Path(checkpoint).parent), checkpoint=str(checkpoint),
                       rollouts_root=rollouts_root, run_id=run_id, replay=replay)


def as_state(value: str | Path | PolicyState | dict) -> PolicyState:
    """A stage's input: a PolicyState (or its JSON), or the path of a complete checkpoint."""
    if isinstance(value, PolicyState):
        return value
    if isinstance(value, dict):
        return PolicyState.model_validate(value)
    return of_checkpoint(value)


def advance(state: PolicyState, generated: str | Path, scored: str | Path) -> PolicyState:
    """The state after applying iteration ``state.iteration``'s update (logged in these shards)."""
    if state.replay is None:
        raise CareError(f"state {state.state_id}: no replay spec; the RL loop builds states with one")
    return state.model_copy(update={"state_id": chain_id(state.state_id, generated, scored, state.replay),
                                    "iteration": state.iteration + 1, "checkpoint": None})


def checkpoint_path(state: PolicyState) -> Path | None:
    """The complete checkpoint holding exactly this state, if there is one."""
    from care.train.checkpoint import is_complete, iteration_checkpoint_name

    for path in (state.checkpoint, Path(state.checkpoints) / iteration_checkpoint_name(state.iteration)):
        if path and is_complete(path, full=False) and checkpoint_state_id(path) == state.state_id:
            return Path(path)
    return None


def replay_plan(state: PolicyState) -> tuple[Path, list[int]]:
    """(checkpoint, iterations to re-apply on it) that rebuilds ``state``: the newest complete checkpoint at
    or before ``state.iteration`` whose id chains to ``state.state_id`` over the logged shards."""
    from care.train.checkpoint import is_complete

    if (exact := checkpoint_path(state)) is not None:
        return exact, []
    folder = Path(state.checkpoints)
    found = sorted(((int(p.name[5:]), p) for p in folder.glob("iter-*") if p.name[5:].isdigit()), reverse=True)
    tried = []
    for n, path in found:
        if n > state.iteration or not is_complete(path, full=False):  # restoring verifies every byte
            continue
        ident = checkpoint_state_id(path)
        todo = list(range(n, state.iteration))
        if todo and state.replay is None:
            tried.append(f"{path.name} (no replay spec)")
            continue
        try:
            for k in todo:
                generated, scored = state.shards(k)
                ident = chain_id(ident, generated, scored, state.replay)
        except FileNotFoundError as exc:
            tried.append(f"{path.name} (shard missing: {exc.filename})")
            continue
        if ident == state.state_id:
            return path, todo
        tried.append(f"{path.name} (its chain leads elsewhere)")
    raise CareError(f"cannot rebuild training state {state.state_id} (after {state.iteration} iterations) from "
                    f"{folder}: no complete checkpoint chains to it over the logged shards; tried "
                    f"{', '.join(tried) or 'none'}. Delete the run's rollouts after the newest checkpoint to redo them.")
