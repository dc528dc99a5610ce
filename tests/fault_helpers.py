"""Helpers for tests that drive the ``care`` command in real processes (crash suite, RL flow, replay, export).

- ``care(home, *args)``: run ``python -m care`` with a clean Prefect environment (the workspace's own
  PREFECT_HOME, no inherited PREFECT_* settings) and return the finished process (in this process instead:
  ``tests.cli_helpers.care_in_process``).
- ``sql(home, query)``: ``care sql --format json``, decoded.
- ``PrefectServer``: one ``prefect server start`` on 127.0.0.1 shared by many ``care`` processes of a test
  module (``PREFECT_API_URL``), so each process skips the private server's start-up; the private server itself
  is tested in ``test_faults_orphans.py``.
- ``small_benchmark``: a demo set of a few rows and the tiny model trained on its text, for fast flows.
- ``pipeline_setup``, ``run_setup``: a fault module's ``setup`` fixture (benchmark, config, shared server) and
  ``care run`` against it.
- ``checkpoint_tensors``, ``catalog_tables``: what crash tests compare between a crashed and a clean run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import duckdb
import torch
from safetensors.torch import load_file

from tests.deploy_helpers import free_port, wait_healthy

CARE_TIMEOUT_S = 600


def care_env(home: Path, env: dict | None = None) -> dict[str, str]:
    """The environment of a ``care`` process on workspace ``home``: inherited, minus PREFECT_* settings."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_") and k != "CARE_FAILPOINT"}
    full.update({"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "CARE_HOME": str(home),
                 "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120", **(env or {})})
    return full


def care(home: Path, *args: str, env: dict | None = None, timeout: int = CARE_TIMEOUT_S) -> subprocess.CompletedProcess:
    """Run ``care <args>`` on workspace ``home`` to completion (or death); stdout/stderr captured as text."""
    return subprocess.run([sys.executable, "-m", "care", *args], env=care_env(home, env), capture_output=True,
                          text=True, timeout=timeout)


def run_pipeline(server: PrefectServer, home: Path, config: Path, failpoint: str | None = None):
    """``care run --config CONFIG`` on workspace ``home`` against the shared ``server``, with a failpoint armed."""
    env = {**server.env, **({"CARE_FAILPOINT": failpoint} if failpoint else {})}
    return care(home, "run", "--config", str(config), env=env)


def sql(home: Path, query: str) -> list[dict]:
    """Rows of ``care sql QUERY --format json`` (asserts the command succeeded)."""
    proc = care(home, "sql", query, "--format", "json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


class PrefectServer:
    """``prefect server start`` on a free 127.0.0.1 port with its own PREFECT_HOME; ``env`` points a process at it."""

    def __init__(self, prefect_home: Path):
        self.home = Path(prefect_home)
        self.home.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/api"
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update({"PREFECT_HOME": str(self.home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})
        self.log = (self.home / "server.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(self.port),
             "--no-services", "--no-ui", "--analytics-off"],
            env=env, stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log, start_new_session=True)
        self._wait()

    @property
    def env(self) -> dict[str, str]:
        return {"PREFECT_API_URL": self.url}

    def _wait(self, timeout: float = 180.0) -> None:
        try:
            wait_healthy(self.url, self.proc, seconds=timeout)
        except AssertionError as exc:
            self.stop()
            raise AssertionError(f"{exc}: {(self.home / 'server.log').read_text()[-2000:]}") from None

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()
        self.log.close()


def small_benchmark(out: Path, *, train: int = 16, val: int = 4) -> tuple[Path, Path]:
    """(data_root, model dir): a demo set of ``train`` rows and ``val`` per level, and its tiny model."""
    from care.data.demo import benchmark_corpus, demo_corpus, make_demo_benchmark
    from care.models.tiny import make_tiny_model

    data_root = make_demo_benchmark(out / "data", train=train, val=val, seed=0)
    model = make_tiny_model(out / "model", corpus=benchmark_corpus(data_root) + demo_corpus(), seed=0)
    return Path(data_root), Path(model)


def pipeline_setup(root: Path, make_config: Callable[[Path, Path, Path], Path]) -> Iterator[dict]:
    """The body of a fault module's module-scoped ``setup`` fixture (``yield from``): a ``small_benchmark`` under
    ``root``, the pipeline config ``make_config(path, data_root, model)`` writes, and a ``PrefectServer``, stopped
    at teardown. Yields ``{"root", "config", "server"}``."""
    data_root, model = small_benchmark(root / "bench")
    server = PrefectServer(root / "prefect")
    try:
        yield {"root": root, "config": make_config(root / "pipeline.yaml", data_root, model), "server": server}
    finally:
        server.stop()


def run_setup(setup: dict, home: Path, failpoint: str | None = None) -> subprocess.CompletedProcess:
    """``run_pipeline`` on workspace ``home`` with a ``pipeline_setup``'s server and config."""
    return run_pipeline(setup["server"], home, setup["config"], failpoint)


def checkpoint_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every safetensors tensor of a checkpoint folder, keyed ``<relative file>:<tensor name>``."""
    out = {}
    for f in sorted(Path(folder).rglob("*.safetensors")):
        if f.name == "rng.safetensors":
            continue
        for k, v in load_file(f).items():
            out[f"{f.relative_to(folder)}:{k}"] = v
    return out


def assert_same_tensors(want: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> None:
    assert sorted(want) == sorted(got)
    for k in want:
        assert torch.equal(want[k], got[k]), k


def catalog_tables(home: Path) -> dict[str, list[dict]]:
    """Every base table of the workspace catalog as lists of row dicts (read-only, after all writers ended)."""
    con = duckdb.connect(str(Path(home) / "care.duckdb"), read_only=True)
    try:
        names = [r[0] for r in con.execute(
            "select table_name from information_schema.tables where table_type = 'BASE TABLE'").fetchall()]
        tables = {}
        for name in names:
            cur = con.execute(f'select * from "{name}"')
            cols = [d[0] for d in cur.description]
            tables[name] = [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]
        return tables
    finally:
        con.close()
