"""The private Prefect server a ``care`` command starts (care/cli/runtime.py) listens on 127.0.0.1 only and stops
with its command, even when the command is killed with SIGKILL: no orphaned server keeps the Prefect database,
the port or the caller's pipes. About 30-60 s (one server start-up)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from urllib.parse import urlparse

import httpx
import psutil
import pytest

from tests.fault_helpers import care_env

# a stand-in for a long ``care`` command: set up the Prefect environment as every flow command does, report the
# API URL, then work until killed
COMMAND = """
import os, sys, time
from care.cli.runtime import prefect_env
from care.workspace import Workspace
prefect_env(Workspace.at(sys.argv[1]))
print(os.environ["PREFECT_API_URL"], flush=True)
time.sleep(900)
"""


def _wait_gone(processes: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    survivors = []
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            if p.status() != psutil.STATUS_ZOMBIE:
                survivors.append(p)
    return survivors


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux-only")
def test_private_server_is_local_and_dies_with_a_killed_command(tmp_path):
    command = subprocess.Popen([sys.executable, "-c", COMMAND, str(tmp_path / "home")], env=care_env(tmp_path / "home"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    server_tree: list[psutil.Process] = []
    try:
        url = command.stdout.readline().strip()
        assert url, f"the command did not start its server:\n{command.stderr.read()}"
        parsed = urlparse(url)
        assert parsed.hostname == "127.0.0.1"
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200

        server_tree = psutil.Process(command.pid).children(recursive=True)
        assert server_tree, "no server process under the command"
        listening = {(c.laddr.ip, p.pid) for p in server_tree for c in _connections(p)
                     if c.status == psutil.CONN_LISTEN and c.laddr.port == parsed.port}
        assert listening and {ip for ip, _ in listening} == {"127.0.0.1"}, listening

        os.kill(command.pid, signal.SIGKILL)
        command.wait(timeout=30)
        survivors = _wait_gone(server_tree, timeout=30)
        assert not survivors, f"orphaned after SIGKILL: {[(p.pid, p.cmdline()) for p in survivors]}"
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{url}/health", timeout=2)
    finally:
        if command.poll() is None:
            command.kill()
        for p in server_tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()


def _connections(process: psutil.Process) -> list:
    try:
        return process.net_connections(kind="inet")
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []
