"""The rank gang: ``num_processes`` training ranks started once per RL run and kept resident across iterations.

Before, every multi-process optimisation stage launched a new ``torchrun`` gang that imported torch, loaded the
checkpoint and the frame cache, took one step, wrote a checkpoint and exited, and rollouts and scoring ran in
the flow's own process on one device. Now one gang lives as long as the run: each rank keeps its policy
(DDP replica or FSDP2 shard), reference and optimizer in memory (``care.train.warm``, per rank) and runs its
share of every stage (``care.train.gang_worker``). The flow's Prefect tasks stay the unit of caching, retries,
state and catalog rows; their bodies hand the stage to the gang with ``call``.

**Launch.** ``torchrun`` (``python -m torch.distributed.run``) starts the ranks: ``--standalone`` on one node,
or c10d rendezvous (``--nnodes N --rdzv-backend c10d --rdzv-endpoint HOST:PORT``) across nodes, where every
node runs the same command (``node_command``): the flow's machine starts ``local_nodes`` of them, and a
*node launcher* starts the others (``set_node_launcher``: the flows register one that submits a Prefect
deployment run per node, ``flows/gang_node.py``, onto the gpu pool, where each node's worker runs
``run_node``). The ranks form their process group (gloo on CPU, NCCL on GPUs)
through accelerate, as the one-process update does. Nothing here schedules, restarts or places processes:
torchrun's elastic agent does, with ``--max-restarts 0`` (a dead rank fails the stage; the run resumes from
its newest checkpoint, ``docs/reliability.md``).

**The control channel** is one ``torch.distributed.TCPStore`` served by this (the flow's) process; the ranks
connect to it as clients (``CARE_GANG_CONTROL=host:port``). The protocol is four kinds of keys:

- ``ready/<rank>``: a rank's JSON ``{"pid", "host"}``, set once its process group is up;
- ``cmd/<n>``: the n-th command, JSON ``{"op", "job"}`` (paths and configs only, as between Prefect tasks);
  every rank executes every command, in order; ``{"op": "stop"}`` ends the gang;
- ``res/<n>/<rank>``: each rank's JSON reply ``{"ok": true, "result"}`` or ``{"ok": false, "error"}``; a rank
  that fails exits after replying (its peers may be inside a collective it will never join), so the gang ends;
- nothing else: bulk data (frames, rollouts, weights) goes through the files the stages already write.

**No orphans.** The ranks are clients of a store in this process: when this process is gone, a watchdog thread
in every rank sees the connection fail within ``HEARTBEAT_S`` and exits the rank, whatever it was computing,
and torchrun's agent then exits too. On every exit path of this process (``close``, ``close_all`` at the end
of a flow run, atexit, an exception) the agents' process groups are killed.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Protocol

from care.errors import CareError

CONTROL_ENV = "CARE_GANG_CONTROL"
HEARTBEAT_S = 1.0  # how often a rank checks that the flow's process (its control store) is still there
POLL_S = 0.05
START_TIMEOUT_S = 600.0  # imports, process group, first connection: minutes on a loaded machine
STDERR_TAIL_LINES = 25
REMOTE_CHECK_S = 2.0  # how often the driver asks whether a node started elsewhere has ended
DEATH_GRACE_S = 2.0  # how long a rank's error waits for a peer's death to show (the error then names the dead)


class GangError(CareError):
    """A rank of the gang failed or died; the message names which and why."""


@dataclass(frozen=True)
class GangSpec:
    """The shape of a gang: ``nproc_per_node`` ranks on each of ``nnodes`` nodes.

    ``rdzv_endpoint`` (``host:port``) is where torchrun's c10d rendezvous runs across nodes (None: one node,
    ``--standalone``). ``local_nodes`` is how many of the nodes this process starts itself: all of them for a
    test of "nodes" on one machine, 1 on a real cluster, where each other node runs ``node_command`` (a Prefect
    deployment on the gpu pool, ``docs/scaling.md``). ``control_host`` is the address the ranks reach this
    process's store at."""

    nproc_per_node: int
    nnodes: int = 1
    rdzv_endpoint: str | None = None
    local_nodes: int | None = None
    control_host: str = "127.0.0.1"
    node_deployment: str | None = None  # what starts the other nodes (a Prefect deployment), see RemoteNode

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes

    @property
    def nodes_started_here(self) -> int:
        return self.nnodes if self.local_nodes is None else self.local_nodes


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def node_command(spec: GangSpec, *, run_key: str = "care", python: str | None = None) -> list[str]:
    """The torchrun command one node of the gang runs (the same on every node)."""
    command = [python or sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(spec.nproc_per_node),
               "--max-restarts", "0", "--monitor-interval", "0.2"]
    if spec.rdzv_endpoint is None:
        command += ["--standalone"]
    else:
        command += ["--nnodes", str(spec.nnodes), "--rdzv-backend", "c10d", "--rdzv-endpoint", spec.rdzv_endpoint,
                    "--rdzv-id", run_key]
    return [*command, "-m", "care.train.gang_worker"]


class RemoteNode(Protocol):
    """A node of the gang started elsewhere (by the registered node launcher): what it is, whether it ended."""

    def describe(self) -> str: ...

    def ended(self) -> str | None:
        """None while it runs; else how it ended (e.g. "flow run gang-node-... FAILED")."""

    def cancel(self) -> None: ...


# (spec, control endpoint, run key, node ranks to start) -> one RemoteNode per node rank
NodeLauncher = Callable[[GangSpec, str, str, list[int]], list[RemoteNode]]
_LAUNCHER: list[NodeLauncher] = []


def set_node_launcher(launcher: NodeLauncher | None) -> None:
    """How this process starts the nodes it does not run itself (``nnodes > local_nodes``); None: nobody does,
    and the gang waits for them to be started by hand with the command it prints."""
    _LAUNCHER[:] = [launcher] if launcher is not None else []


def run_node(spec: GangSpec, control: str, *, run_key: str = "care") -> int:
    """Run one node of a gang in the foreground (a remote node: what a gang-node deployment run executes); the
    exit status of its torchrun agent. Its ranks connect to the driver's store at ``control`` and exit with it."""
    env = {**os.environ, CONTROL_ENV: control, "PYTHONUNBUFFERED": "1",
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    agent = subprocess.Popen(node_command(spec, run_key=run_key), env=env, stdin=subprocess.DEVNULL,
                             start_new_session=True)
    try:
        return agent.wait()
    finally:  # this process stopped (a cancelled flow run): the node's ranks go with it
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(agent.pid, signal.SIGKILL)


def _host_rendezvous(spec: GangSpec):
    """Host the c10d rendezvous store here when its endpoint is this machine (None otherwise).

    torchrun's agent on the endpoint's machine would host it, and leave with its node: a node on another
    machine that shuts down after it then fails ("connection to the C10d store has failed") although its ranks
    finished. Hosted by the driver, the store lives until every node has left; the agents here find the port
    taken and join as clients (torch's c10d backend falls back to that)."""
    if spec.nnodes == 1 or not spec.rdzv_endpoint:
        return None
    from torch.distributed import TCPStore

    host, _, port = spec.rdzv_endpoint.rpartition(":")
    local = {"127.0.0.1", "localhost", "::1", socket.gethostname(), socket.getfqdn(), spec.control_host}
    if host not in local or not port.isdigit():
        return None
    return TCPStore(host, int(port), is_master=True, multi_tenant=True, wait_for_workers=False,
                    timeout=timedelta(seconds=60))


def _tail(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return "\n".join(lines[-STDERR_TAIL_LINES:])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Gang:
    """A resident rank gang and the driver's end of its control channel (module docstring)."""

    def __init__(self, spec: GangSpec, *, run_key: str = "care", start_timeout_s: float = START_TIMEOUT_S):
        from torch.distributed import TCPStore

        if spec.nproc_per_node < 1 or spec.nnodes < 1:
            raise CareError(f"a gang needs at least one rank per node and one node, not {spec}")
        self.spec, self.run_key = spec, run_key
        self._store = TCPStore(spec.control_host if spec.nnodes > 1 else "127.0.0.1", 0, is_master=True,
                               wait_for_workers=False, timeout=timedelta(seconds=30))
        self.control = f"{spec.control_host}:{self._store.port}"
        self._rendezvous = _host_rendezvous(spec)
        self._logs = Path(tempfile.mkdtemp(prefix="care-gang-"))
        self._agents: list[subprocess.Popen] = []
        self._remote: list[RemoteNode] = []
        self._remote_checked = 0.0
        self._next = 0
        self._lock = threading.Lock()
        self.ranks: dict[int, dict] = {}
        self._waiter = None
        self.closed = False
        self.started_s = 0.0
        try:
            self._start(start_timeout_s)
        except BaseException:
            self.close()
            raise

    # -- life cycle ----------------------------------------------------------------------------------------
    def _start(self, timeout_s: float) -> None:
        t0 = time.perf_counter()
        env = {**os.environ, CONTROL_ENV: self.control, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
               "PYTHONUNBUFFERED": "1"}
        for node in range(self.spec.nodes_started_here):
            log = (self._logs / f"node{node}.log").open("w")
            self._agents.append(subprocess.Popen(node_command(self.spec, run_key=self.run_key), env=env,
                                                 stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                                 start_new_session=True))
            log.close()
        self._start_remote_nodes()
        deadline = time.monotonic() + timeout_s
        while len(self.ranks) < self.spec.world_size:
            for rank in range(self.spec.world_size):
                if rank not in self.ranks and self._store.check([f"ready/{rank}"]):
                    self.ranks[rank] = json.loads(self._store.get(f"ready/{rank}"))
            self._raise_if_dead("starting")
            if time.monotonic() > deadline:
                remote = "; ".join(n.describe() for n in self._remote) or "none started by this process"
                raise GangError(f"the gang of {self.spec.world_size} ranks did not start within {timeout_s:.0f} s "
                                f"({len(self.ranks)} ready; other nodes: {remote}); agent output:\n"
                                f"{self._agent_tails()}")
            time.sleep(POLL_S)
        self.started_s = time.perf_counter() - t0

    def _start_remote_nodes(self) -> None:
        node_ranks = list(range(self.spec.nodes_started_here, self.spec.nnodes))
        if not node_ranks:
            return
        if _LAUNCHER and self.spec.node_deployment:
            self._remote = list(_LAUNCHER[0](self.spec, self.control, self.run_key, node_ranks))
            print(f"gang: {len(self._remote)} other node(s) submitted: "
                  + "; ".join(n.describe() for n in self._remote), flush=True)
            return
        command = " ".join(node_command(self.spec, run_key=self.run_key))
        print(f"gang: waiting for {len(node_ranks)} other node(s) (optim.node_deployment is not set): on each, run\n"
              f"  {CONTROL_ENV}={self.control} {command}", flush=True)

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop the ranks (a ``stop`` command, then SIGKILL of the agents' process groups); idempotent."""
        if self.closed:
            return
        running = self.alive()  # before closed is set, which alive() also reads
        self.closed = True
        with contextlib.suppress(Exception):
            if running:
                self._store.set(f"cmd/{self._next}", json.dumps({"op": "stop", "job": {}}))
                deadline = time.monotonic() + timeout_s
                while any(a.poll() is None for a in self._agents) and time.monotonic() < deadline:
                    time.sleep(POLL_S)
                # remote nodes leave the rendezvous (this process's store) before it goes
                while time.monotonic() < deadline and any(n.ended() is None for n in self._remote):
                    time.sleep(REMOTE_CHECK_S / 4)
        for node in self._remote:  # a remote node ends on the stop command; one that never started is cancelled
            with contextlib.suppress(Exception):
                if node.ended() is None:
                    node.cancel()
        for agent in self._agents:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(agent.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                agent.wait(timeout=10)
        with _REGISTRY_LOCK:
            for key, gang in list(_GANGS.items()):
                if gang is self:
                    del _GANGS[key]
        shutil.rmtree(self._logs, ignore_errors=True)
        self._rendezvous = None  # the c10d rendezvous store this process hosted, if any, closes last

    def alive(self) -> bool:
        return not self.closed and all(a.poll() is None for a in self._agents)

    def rank_pids(self) -> dict[int, int]:
        return {rank: int(info["pid"]) for rank, info in self.ranks.items()}

    # -- commands ------------------------------------------------------------------------------------------
    def call(self, op: str, job: dict | None = None, *, timeout_s: float | None = None) -> list:
        """Run command ``op`` on every rank; each rank's result, in rank order. Raises ``GangError`` naming
        the rank that failed or died (the gang is then closed: the next call of ``shared`` starts a new one)."""
        with self._lock:
            if not self.alive():
                raise GangError(f"the gang is gone ({self._describe_exit()}); re-run to start a new one")
            n = self._next
            self._next += 1
            self._store.set(f"cmd/{n}", json.dumps({"op": op, "job": job or {}}))
            keys = {rank: f"res/{n}/{rank}" for rank in range(self.spec.world_size)}
            replies: dict[int, dict] = {}
            deadline = None if timeout_s is None else time.monotonic() + timeout_s
            # a blocking wait on every reply, in a thread, wakes this one the moment the last reply lands; this
            # thread meanwhile looks for failed or dead ranks every POLL_S
            done = threading.Event()
            waiter = threading.Thread(target=self._wait_all, args=(list(keys.values()), done), daemon=True,
                                      name="care-gang-replies")
            waiter.start()
            try:
                while len(replies) < len(keys):
                    finished = done.wait(POLL_S)
                    for rank, key in keys.items():
                        if rank not in replies and (finished or self._store.check([key])):
                            replies[rank] = json.loads(self._store.get(key))
                            if not replies[rank]["ok"]:
                                # a peer's death shows on the survivors as a failed collective: name the dead one
                                self._raise_if_dead(f"stage '{op}'", grace_s=DEATH_GRACE_S,
                                                    reported=lambda keys=keys: self._failed_ranks(keys))
                                raise GangError(f"rank {rank} of the gang failed in stage '{op}': "
                                                f"{replies[rank]['error']}")
                    if len(replies) == len(keys):
                        break
                    self._raise_if_dead(f"stage '{op}'")
                    if deadline is not None and time.monotonic() > deadline:
                        raise GangError(f"stage '{op}' did not finish on the gang within {timeout_s:.0f} s "
                                        f"(replies from ranks {sorted(replies)})")
            except BaseException:
                for key in keys.values():  # release the waiter
                    with contextlib.suppress(Exception):
                        if not self._store.check([key]):
                            self._store.set(key, json.dumps({"ok": False, "error": "abandoned"}))
                self.close()
                raise
            waiter.join()
            for key in keys.values():
                self._store.delete_key(key)
            self._store.delete_key(f"cmd/{n}")
            return _with_peak([replies[rank]["result"] for rank in range(self.spec.world_size)])

    def _wait_all(self, keys: list[str], done: threading.Event) -> None:
        from torch.distributed import TCPStore

        if self._waiter is None:  # its own connection: the main thread keeps using the store meanwhile
            self._waiter = TCPStore("127.0.0.1", self._store.port, is_master=False, timeout=timedelta(days=30))
        with contextlib.suppress(Exception):
            self._waiter.wait(keys)
        done.set()

    def _failed_ranks(self, keys: dict[int, str]) -> set[int]:
        """Ranks whose reply is an error (they exit after replying: their exit is no death)."""
        return {rank for rank, key in keys.items()
                if self._store.check([key]) and not json.loads(self._store.get(key))["ok"]}

    def _raise_if_dead(self, during: str, *, grace_s: float = 0.0, reported=None) -> None:
        """Raise naming the ranks that died (not those that ``reported()`` an error and exited), if any is dead
        now or within ``grace_s``. Without ``reported``, an exited agent counts too."""
        local = socket.gethostname()
        deadline = time.monotonic() + grace_s
        while True:
            gone = [rank for rank, info in self.ranks.items()
                    if info.get("host") == local and not _pid_alive(int(info["pid"]))]
            dead = [rank for rank in gone if rank not in reported()] if reported is not None else gone
            exited = [a for a in self._agents if a.poll() is not None] if reported is None else []
            remote = self._remote_ended() if reported is None else []
            if dead or exited or remote or time.monotonic() >= deadline:
                break
            time.sleep(POLL_S)
        if not dead and not exited and not remote:
            return
        what = (", ".join(f"rank {r} (pid {self.ranks[r]['pid']})" for r in dead) + " died") if dead else \
            "the torchrun agent exited" if exited else f"a remote node ended ({'; '.join(remote)})"
        raise GangError(f"gang failure during {during}: {what}; {self._describe_exit()}. Re-run the flow: it "
                        f"resumes from the newest checkpoint. Agent output:\n{self._agent_tails()}")

    def _remote_ended(self) -> list[str]:
        """How remote nodes ended, if any did; asked at most every REMOTE_CHECK_S (it is an API call)."""
        if not self._remote or time.monotonic() - self._remote_checked < REMOTE_CHECK_S:
            return []
        self._remote_checked = time.monotonic()
        ended = []
        for node in self._remote:
            with contextlib.suppress(Exception):
                if (how := node.ended()) is not None:
                    ended.append(how)
        return ended

    def _describe_exit(self) -> str:
        codes = [a.poll() for a in self._agents]
        parts = []
        for node, code in enumerate(codes):
            if code is None:
                parts.append(f"node {node} agent running")
            elif code < 0:
                parts.append(f"node {node} agent killed by {signal.Signals(-code).name}")
            else:
                parts.append(f"node {node} agent exit status {code}")
        return ", ".join(parts) if parts else "no agent started"

    def _agent_tails(self) -> str:
        return "\n".join(f"[node {n}] {_tail(self._logs / f'node{n}.log')}" for n in range(len(self._agents)))


def _with_peak(results: list) -> list:
    """Rank 0's result (what a stage returns) carries the largest peak memory of all ranks, each rank's too."""
    peaks = [r.get("peak_memory_mib") for r in results if isinstance(r, dict)]
    if len(peaks) == len(results) and peaks and all(p is not None for p in peaks):
        results[0] = {**results[0], "peak_memory_mib": max(peaks), "peak_memory_per_rank": peaks,
                      "peak_memory_source": f"{results[0].get('peak_memory_source')}, largest of {len(peaks)} ranks"}
    return results


# -- one gang per shape, shared by the stages of this process -------------------------------------------------
_REGISTRY_LOCK = threading.RLock()  # close() deregisters under it, also from shared()
_GANGS: dict[GangSpec, Gang] = {}


def shared(spec: GangSpec, *, run_key: str = "care") -> Gang:
    """The live gang of this shape, started on first use (the first stage of a run that needs it)."""
    with _REGISTRY_LOCK:
        gang = _GANGS.get(spec)
        if gang is not None and gang.alive():
            return gang
        if gang is not None:
            gang.close()  # dead: kill what is left of it; a new one replaces it
        gang = Gang(spec, run_key=run_key)
        _GANGS[spec] = gang
        return gang


def live() -> list[Gang]:
    with _REGISTRY_LOCK:
        return [g for g in _GANGS.values() if g.alive()]


def close_all() -> None:
    """Stop every gang of this process (the end of a flow run, and atexit)."""
    with _REGISTRY_LOCK:
        gangs = list(_GANGS.values())
    for gang in gangs:
        gang.close()


atexit.register(close_all)


def spec_of(config) -> GangSpec:
    """The gang an ``OptimConfig`` asks for: ``num_processes`` ranks over ``nnodes`` nodes."""
    if config.num_processes % config.nnodes:
        raise CareError(f"optim.num_processes={config.num_processes} is not a multiple of optim.nnodes={config.nnodes}")
    return GangSpec(nproc_per_node=config.num_processes // config.nnodes, nnodes=config.nnodes,
                    rdzv_endpoint=config.rdzv_endpoint, local_nodes=config.local_nodes,
                    control_host=config.control_host, node_deployment=config.node_deployment)


def in_rank() -> bool:
    """Whether this process is a rank of a gang (then stages run their share here, never a gang of their own)."""
    return CONTROL_ENV in os.environ


def stage_gang(state) -> Gang | None:
    """The gang a stage of ``state``'s run hands its work to (``optim.num_processes > 1``), or None: one
    process, or this process is a rank already."""
    config = state.replay.config if state.replay is not None else None
    if config is None or config.num_processes == 1 or in_rank():
        return None
    return shared(spec_of(config), run_key=state.run_id or "care")
