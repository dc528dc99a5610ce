"""One rank of the resident gang (``care.train.gang``): ``torchrun ... -m care.train.gang_worker``.

The rank joins the process group (accelerate: gloo on CPU, NCCL on GPUs, one device per local rank), announces
itself on the control store, then executes the driver's commands in order until ``stop``. Its training state
stays in this process between commands (``care.train.warm``), so an iteration costs no process start, no model
or optimizer load and no checkpoint unless one is due. Each command runs this rank's share of a stage:

- ``rollout``: the generation chunks ``k`` with ``k % world == rank`` (``care.train.rollout.hf_rollouts``);
- ``scoring``: the reference-forward batches ``k`` with ``k % world == rank`` (``care.train.scoring.score_shard``);
- ``optimise``: this rank's slice of the update (DDP or FSDP2, ``care.train.optimise_stage.run_job``);
- ``export_policy`` / ``behaviour_tail``: the vLLM backend's parts that need the policy (the engine itself runs
  beside the flow, ``care.models.vllm_backend``): the weights as a model folder for the engine (rank 0), and the
  behaviour log-probs of the engine's completions, chunk ``k`` of prompts on rank ``k % world``;
- ``wait_checkpoints``: block until rank 0's background checkpoint write is on disk;
- ``ping``: pid, host and world (tests, the benchmark).

Rank 0 gathers the other ranks' rows and writes the stage's shard, so the files are those of one process.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from datetime import timedelta

import torch
from torch.distributed import TCPStore

from care.train.gang import CONTROL_ENV, HEARTBEAT_S

EXIT_DRIVER_GONE = 3
EXIT_STAGE_FAILED = 1


def _connect() -> tuple[str, int, TCPStore]:
    host, port = os.environ[CONTROL_ENV].rsplit(":", 1)
    return host, int(port), TCPStore(host, int(port), is_master=False, timeout=timedelta(seconds=60))


def watch_driver(host: str, port: int) -> threading.Thread:
    """Exit this rank as soon as the driver's control store is unreachable (the flow's process is gone), even
    in the middle of a stage: a thread with its own connection, so it never waits behind a command."""
    probe = TCPStore(host, port, is_master=False, timeout=timedelta(seconds=30))

    def watch() -> None:
        while True:
            time.sleep(HEARTBEAT_S)
            try:
                probe.check(["ready/0"])
            except Exception:  # DistNetworkError and friends: the store is gone with its process
                os._exit(EXIT_DRIVER_GONE)

    thread = threading.Thread(target=watch, name="care-gang-driver-watch", daemon=True)
    thread.start()
    return thread


def _rank_world() -> tuple[int, int]:
    import torch.distributed as dist

    return dist.get_rank(), dist.get_world_size()


def _rollout(job: dict) -> dict:
    from care.models.rollout_config import RolloutConfig
    from care.train.rollout import hf_rollouts
    from care.train.state import PolicyState

    state = PolicyState.model_validate(job["state"])
    by_id = state.replay.data.load().by_id()
    rank, world = _rank_world()
    return hf_rollouts(run_id=job["run_id"], iteration=job["iteration"], state=state,
                       samples=[by_id[i] for i in job["sample_ids"]], cache=state.replay.data.cache(),
                       config=RolloutConfig.model_validate(job["config"]), seed=job["seed"], out_dir=job["out_dir"],
                       rank=rank, world=world)


def _scoring(job: dict) -> dict:
    from care.train.config import ScoringConfig
    from care.train.scoring import score_shard
    from care.train.state import PolicyState

    state = PolicyState.model_validate(job["state"])
    rank, world = _rank_world()
    return score_shard(generated_path=job["generated_path"], state=state, samples=state.replay.data.load().by_id(),
                       cache=state.replay.data.cache(), config=ScoringConfig.model_validate(job["config"]),
                       algo=job["algo"], rank=rank, world=world)


def _export_policy(job: dict) -> str:
    from care.train.rollout import export_policy
    from care.train.state import PolicyState

    rank, world = _rank_world()
    return str(export_policy(PolicyState.model_validate(job["state"]), job["folder"], rank=rank, world=world))


def _behaviour_tail(job: dict) -> dict:
    import time

    from care.models.rollout_config import RolloutConfig
    from care.models.samples import prompt_items
    from care.train.rollout import read_completions, shard_from_completions
    from care.train.state import PolicyState

    started = time.perf_counter() - job["elapsed"]  # the stage's clock started in the flow's process
    state = PolicyState.model_validate(job["state"])
    by_id = state.replay.data.load().by_id()
    samples = [by_id[i] for i in job["sample_ids"]]
    items, rates = prompt_items(samples, state.replay.data.cache())
    rank, world = _rank_world()
    return shard_from_completions(
        run_id=job["run_id"], iteration=job["iteration"], state=state, samples=samples, items=items, rates=rates,
        completions=read_completions(job["completions"]), prompt_tokens=job["prompt_tokens"], seeds=job["seeds"],
        config=RolloutConfig.model_validate(job["config"]), backend=job["backend"],
        seconds_per_completion=job["seconds_per_completion"], out_dir=job["out_dir"], started=started,
        rank=rank, world=world)


def _optimise(job: dict) -> dict:
    from care.train.optimise_stage import run_rank_job

    return run_rank_job(job)


def _wait_checkpoints(job: dict) -> list[dict]:
    from care.train.trainer import WRITER

    return WRITER.wait()


def _ping(job: dict) -> dict:
    rank, world = _rank_world()
    return {"rank": rank, "world": world, "pid": os.getpid(), "host": socket.gethostname()}


HANDLERS: dict[str, Callable[[dict], object]] = {
    "rollout": _rollout, "scoring": _scoring, "optimise": _optimise, "wait_checkpoints": _wait_checkpoints,
    "export_policy": _export_policy, "behaviour_tail": _behaviour_tail, "ping": _ping,
}


def main() -> int:
    from accelerate import PartialState

    from care.failpoints import failpoint
    from care.train.memory import Peak

    host, port, store = _connect()
    watch_driver(host, port)
    state = PartialState(cpu=not torch.cuda.is_available())  # the process group; the device of this local rank
    rank = state.process_index
    store.set(f"ready/{rank}", json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                          "device": str(state.device)}))
    n = 0
    while True:
        key = f"cmd/{n}"
        try:
            store.wait([key], timedelta(days=30))
            command = json.loads(store.get(key))
        except Exception:
            return EXIT_DRIVER_GONE
        op = command["op"]
        if op == "stop":
            return 0
        try:
            failpoint(f"gang-rank{rank}", command["job"].get("iteration"))
            with Peak() as peak:
                result = HANDLERS[op](command["job"])
            if isinstance(result, dict):
                result = {**result, **peak.fields()}
            reply = {"ok": True, "result": result}
        except BaseException as exc:  # reported to the driver, then this rank ends the gang
            tail = "".join(traceback.format_exception(exc)[-6:])
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}\n{tail}"}
        store.set(f"res/{n}/{rank}", json.dumps(reply))
        if not reply["ok"]:
            sys.stderr.flush()
            os._exit(EXIT_STAGE_FAILED)  # a peer may be waiting in a collective this rank will never join
        n += 1


if __name__ == "__main__":
    raise SystemExit(main())
