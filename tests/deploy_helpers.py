"""What the deployment tests share (``test_deployments.py`` on SQLite, ``test_deployments_postgres.py`` on
PostgreSQL): the processes they start, the Prefect server's environment, and waits on the Prefect API.

- ``Stack``: ``prefect`` processes, each in its own process group, stopped by PID in reverse order.
- ``prefect_stack(folder, services=..., **env)``: a Prefect server on a free 127.0.0.1 port with a temp
  PREFECT_HOME and CARE_HOME under ``folder``, yielded as a ``Stack``; stopped at the end, also on failure.
- ``create_pools_and_deploy(stack)``: the ``cpu`` and ``gpu`` work pools and ``prefect deploy --all``.
- ``wait_healthy``: a started server's health wait (the one ``care`` itself uses, ``care.cli.runtime``).
- ``wait_runs``, ``flow_run_id``, ``flow_run_logs``: flow runs through the API; ``retrain_params``: a tiny round.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from care.cli import runtime
from care.cli.runtime import free_port

REPO = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).with_name("prefect"))
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


class Stack:
    """Processes started by the test (each in its own process group), stopped by PID in reverse order."""

    def __init__(self, env: dict[str, str], logs: Path):
        self.env, self.logs, self.procs = env, logs, []

    def start(self, name: str, *args: str) -> subprocess.Popen:
        log = (self.logs / f"{name}.log").open("ab")
        proc = subprocess.Popen([PREFECT, *args], cwd=REPO, env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append((name, proc))
        return proc

    def run(self, *args: str, timeout: float = 120) -> str:
        done = subprocess.run([PREFECT, "--no-prompt", *args], cwd=REPO, env=self.env, capture_output=True,
                              text=True, timeout=timeout)
        assert done.returncode == 0, f"prefect {' '.join(args)}: {done.stdout[-2000:]}{done.stderr[-2000:]}"
        return done.stdout

    def stop(self) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)  # the group: a worker's flow-run children too
        for _, proc in reversed(self.procs):
            _reap(proc, grace_s=20)

    def stop_one(self, proc: subprocess.Popen, *, grace_s: float = 30) -> None:
        """Stop one started process (its group) before the others, as ``stop`` does."""
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        _reap(proc, grace_s=grace_s)


def _reap(proc: subprocess.Popen, *, grace_s: float) -> None:
    """Wait for a SIGTERMed process group; SIGKILL it after ``grace_s``. A Prefect worker's SIGTERM is a graceful
    stop (it forwards SIGINT to its worker loop and waits for that to wind down), which on a loaded 2-core machine
    has taken over 30 s once its flow runs had all ended and left no process."""
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def log_tail(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in self.logs.glob("*.log"))


def wait_healthy(api: str, proc: subprocess.Popen, seconds: float = 120) -> None:
    """Wait until the Prefect server ``proc`` serving ``api`` is healthy (``care.cli.runtime.wait_healthy``)."""
    if not runtime.wait_healthy(api, lambda: proc.poll() is None, timeout_s=seconds):
        raise AssertionError(f"Prefect server not healthy within {seconds} s (exit code {proc.poll()})")


def wait_runs(api: str, ids: list[str], seconds: float) -> list[dict]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        runs = [httpx.get(f"{api}/flow_runs/{i}", timeout=10).json() for i in ids]
        if all(r["state_type"] in TERMINAL for r in runs):
            return runs
        time.sleep(1)
    raise AssertionError(f"flow runs not finished within {seconds} s: {[r['state_type'] for r in runs]}")


def flow_run_id(output: str) -> str:
    return next(line.split("UUID:")[1].strip() for line in output.splitlines() if "UUID:" in line)


def flow_run_logs(api: str, run_id: str) -> str:
    body = {"logs": {"flow_run_id": {"any_": [run_id]}}, "sort": "TIMESTAMP_ASC", "limit": 200}
    return "\n".join(entry["message"] for entry in httpx.post(f"{api}/logs/filter", json=body, timeout=10).json())


def prefect_env(folder: Path, port: int) -> dict[str, str]:
    """The inherited environment minus PREFECT_* settings, pointed at a server on ``port`` and at ``folder``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(folder / "prefect"), PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
               PREFECT_SERVER_ANALYTICS_ENABLED="false", CARE_CHECKOUT=str(REPO),
               CARE_HOME=str(folder / "care_home"), TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    return env


@contextlib.contextmanager
def prefect_stack(folder: Path, services: bool = False, **env: str) -> Iterator[Stack]:
    """``prefect server start`` (``--no-services`` unless ``services``) with ``env`` on top of ``prefect_env``."""
    port = free_port()
    (folder / "logs").mkdir()
    s = Stack({**prefect_env(folder, port), **env}, folder / "logs")
    try:
        server = s.start("server", "server", "start", "--host", "127.0.0.1", "--port", str(port),
                         *([] if services else ["--no-services"]), "--no-ui")
        wait_healthy(s.env["PREFECT_API_URL"], server)
        yield s
    except BaseException:
        print(s.log_tail())
        raise
    finally:
        s.stop()


def create_pools_and_deploy(stack: Stack) -> None:
    """The commands of deployments/README.md: both work pools, then every deployment of prefect.yaml."""
    stack.run("work-pool", "create", "cpu", "--type", "process")
    stack.run("work-pool", "create", "gpu", "--type", "process")
    stack.run("work-pool", "set-concurrency-limit", "gpu", "1")
    stack.run("deploy", "--all", "--prefect-file", "deployments/prefect.yaml", timeout=300)


def retrain_params(model: str, data_root: str, run_name: str = "retrain-test", iterations: int = 1) -> dict:
    return {"rl": {"run_name": run_name, "model": model, "data_root": data_root, "iterations": iterations,
                   "shuffle_options": False, "frames": {"nframes": 4},
                   "rollout": {"group_size": 4, "prompts_per_iteration": 2, "sampling": {"max_new_tokens": 48}},
                   "optim": {"learning_rate": 1e-3, "micro_batch_size": 8, "lr_scheduler": "constant"}},
            "preprocess_workers": 1, "eval_levels": ["L1"], "eval_limit_per_level": 4,
            "eval_decoding": {"max_new_tokens": 48}}
