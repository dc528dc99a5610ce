"""Process environment for commands that run Prefect flows; call ``prefect_env`` before importing ``flows``.

Defaults only (a variable already set wins): Prefect's home under the workspace (``Workspace.prefect_home``),
so a bare ``care ...`` runs against a private ephemeral server and result store; a generous server start-up
timeout (the ephemeral server takes 20-40 s on a fresh home); no analytics; offline Hugging Face.
"""

from __future__ import annotations

import os

from care.workspace import Workspace

DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}


def prefect_env(workspace: Workspace) -> dict[str, str]:
    """Set the defaults above plus ``PREFECT_HOME`` in ``os.environ``; return what was set."""
    workspace.ensure()
    wanted = {**DEFAULTS, "PREFECT_HOME": str(workspace.prefect_home),
              "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(workspace.prefect_home / "results")}
    applied = {k: v for k, v in wanted.items() if k not in os.environ}
    os.environ.update(applied)
    return applied
