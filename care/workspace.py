"""The workspace: every file the pipeline writes lives under one root, ``CARE_HOME`` (default ``./.care``).

Layout::

    <home>/care.duckdb            catalog: runs, stages, metrics, videos, rejects, ... (care.store)
    <home>/cache/frames/          Parquet frame cache, keyed by media content hash + sampling parameters
    <home>/rollouts/              Parquet rollout logs, hive-partitioned run=<id>/iteration=<n>/
    <home>/runs/<run_id>/         checkpoints, evaluation predictions, plots of one run
    <home>/tracking/<run_id>/     experiment-tracker files (TensorBoard events) of runs with report_to
    <home>/models/                tiny offline models made by ``care models tiny``
    <home>/data/demo/             the generated demo benchmark (SEED-Bench-R1 layout)
    <home>/prefect/               PREFECT_HOME for the embedded (ephemeral) Prefect default
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from care.errors import CareError

ENV_HOME = "CARE_HOME"
DEFAULT_HOME = ".care"


def resolve_home(home: str | os.PathLike | None = None) -> Path:
    """The workspace root: the argument, else ``$CARE_HOME``, else ``./.care`` (absolute)."""
    chosen = home if home is not None else os.environ.get(ENV_HOME, DEFAULT_HOME)
    return Path(chosen).expanduser().resolve()


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def at(cls, home: str | os.PathLike | None = None) -> Workspace:
        return cls(resolve_home(home))

    @property
    def catalog_path(self) -> Path:
        return self.root / "care.duckdb"

    @property
    def frame_cache_dir(self) -> Path:
        return self.root / "cache" / "frames"

    @property
    def rollouts_dir(self) -> Path:
        return self.root / "rollouts"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def demo_data_dir(self) -> Path:
        return self.root / "data" / "demo"

    @property
    def prefect_home(self) -> Path:
        return self.root / "prefect"

    def run_dir(self, run_id: str) -> Path:
        return self.runs_dir / run_id

    def ensure(self) -> Workspace:
        """Create the root, with a clear error when it cannot be written."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WorkspaceError(f"cannot create workspace {self.root}: {exc.strerror}; set --home or CARE_HOME") from exc
        if not os.access(self.root, os.W_OK):
            raise WorkspaceError(f"workspace {self.root} is not writable; set --home or CARE_HOME to a writable folder")
        return self


class WorkspaceError(CareError):
    """The workspace root is missing, not a folder, or not writable."""
