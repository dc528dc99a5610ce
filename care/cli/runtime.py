"""Process environment for commands that run Prefect flows; call ``prefect_env`` before importing ``flows``.

Defaults only (a variable already set wins): Prefect's home under the workspace (``Workspace.prefect_home``), a
generous server start-up timeout (a fresh home takes 20-40 s), no analytics, offline Hugging Face.

The Prefect API: ``PREFECT_API_URL`` when set (a shared ``prefect server`` or Prefect Cloud: deployments, work
pools). Otherwise, on Linux, a private ``prefect server start --no-services`` on 127.0.0.1 for this process,
started with the parent-death signal set, so it stops with the command even when the command is killed with
SIGKILL. Prefect's own ephemeral server outlives a killed parent (an orphaned uvicorn holding the Prefect
database and the caller's pipes), which matters for a pipeline meant to survive crashes.
``CARE_PREFECT_SERVER=ephemeral`` chooses Prefect's ephemeral mode instead.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from care.errors import CareError
from care.workspace import Workspace

DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}
STARTUP_TIMEOUT_S = 120.0
_server: subprocess.Popen | None = None


def prefect_env(workspace: Workspace) -> dict[str, str]:
    """Set the defaults above plus ``PREFECT_HOME``; start the private API server if needed; return what was set."""
    workspace.ensure()
    wanted = {**DEFAULTS, "PREFECT_HOME": str(workspace.prefect_home),
              "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(workspace.prefect_home / "results")}
    applied = {k: v for k, v in wanted.items() if k not in os.environ}
    os.environ.update(applied)
    if _wants_private_server():
        os.environ["PREFECT_API_URL"] = start_private_server(Path(os.environ["PREFECT_HOME"]))
        applied["PREFECT_API_URL"] = os.environ["PREFECT_API_URL"]
    return applied


def _wants_private_server() -> bool:
    return ("PREFECT_API_URL" not in os.environ and sys.platform.startswith("linux")
            and os.environ.get("CARE_PREFECT_SERVER", "private") == "private")


def _die_with_parent() -> None:  # runs in the child between fork and exec
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_private_server(prefect_home: Path) -> str:
    """Start ``prefect server start`` on a free 127.0.0.1 port for this process; return its API URL."""
    global _server
    prefect_home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = (prefect_home / "server.log").open("ab")
    cmd = [str(Path(sys.executable).with_name("prefect")), "server", "start", "--host", "127.0.0.1", "--port",
           str(port), "--no-services", "--no-ui", "--analytics-off"]
    if not Path(cmd[0]).is_file():
        cmd[0:1] = [sys.executable, "-m", "prefect"]
    _server = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, preexec_fn=_die_with_parent)
    atexit.register(stop_private_server)
    url = f"http://127.0.0.1:{port}/api"
    _wait_healthy(url, prefect_home / "server.log")
    return url


def wait_healthy(url: str, alive: Callable[[], bool] = lambda: True, timeout_s: float = STARTUP_TIMEOUT_S) -> bool:
    """Poll the Prefect API's ``<url>/health`` until it answers 200 (True); False as soon as ``alive()`` (the
    server process still running) is false, or when ``timeout_s`` has passed."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and alive():
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    return False


def _wait_healthy(url: str, log_path: Path) -> None:
    if wait_healthy(url, lambda: _server is None or _server.poll() is None):
        return
    tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-10:]) if log_path.exists() else ""
    stop_private_server()
    raise CareError(f"the local Prefect server did not start (log: {log_path}); set PREFECT_API_URL to use "
                    f"another server\n{tail}")


def stop_private_server() -> None:
    global _server
    if _server is None:
        return
    _server.terminate()
    try:
        _server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        _server.kill()
        _server.wait()
    _server = None
