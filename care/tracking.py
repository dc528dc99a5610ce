"""Experiment trackers (TensorBoard, W&B, MLflow, ...) through accelerate's tracker API, as a mirror of the catalog.

The DuckDB ``metrics`` table is the record of a run; trackers only mirror it. Off by default: a flow whose config
lists trackers in ``report_to`` opens them with :func:`start` (before any stage runs); from then on every
``care.store.runs.record_metrics`` of that run in this process also goes to them (:func:`log`: tag
``<stage>/<name>``, the same step, a NaN/inf left out as the catalog stores it as NULL), and the flow closes them
with :func:`finish` when it ends, however it ends. The config is stored once as the trackers' hyperparameters.

Trackers are built as ``Accelerator.init_trackers`` builds them (``LOGGER_TYPE_TO_CLASS[name](run_id,
tracking_dir)`` for trackers that write files, ``(run_id)`` for the others), without an ``Accelerator``: the
TensorBoard events of a run go to ``<tracking_dir>/<run_id>/`` (default ``<home>/tracking/<run_id>/``), so
``tensorboard --logdir <home>/tracking`` shows every run side by side. A tracker that fails while logging is
warned about and dropped: the catalog already holds the values. What is off: trackers are fed in the flow's own
process (the default task runner), not from tasks a runner sends to other processes.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from care.config import StageConfig
from care.errors import CareError

log_ = logging.getLogger(__name__)

# the config fields of tracking: they change nothing that is trained, so they stay out of run ids and cache keys
TRACKING_FIELDS = ("report_to", "tracking_dir")
DEFAULT_DIR = "tracking"  # under the workspace root
PACKAGES = {"comet_ml": "comet-ml"}  # tracker name -> pip package, where the two differ

_OPEN: dict[str, list] = {}
_LOCK = threading.Lock()


class TrackingError(CareError):
    """A tracker in ``report_to`` cannot be used here (unknown name, library not installed)."""


def known_trackers() -> list[str]:
    """The tracker names accelerate knows (``accelerate.tracking.LOGGER_TYPE_TO_CLASS``)."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    return sorted(LOGGER_TYPE_TO_CLASS)


def require_installed(report_to: list[str]) -> None:
    """Raise a one-line error naming ``report_to`` and the package for each tracker whose library is missing."""
    from accelerate.tracking import get_available_trackers

    available = {str(t) for t in get_available_trackers()}
    missing = [name for name in report_to if name not in available]
    if missing:
        packages = " ".join(PACKAGES.get(name, name) for name in missing)
        raise TrackingError(f"report_to: {', '.join(missing)} needs the Python package(s) {packages}, not installed "
                            f"here: pip install {packages} (TensorBoard: pip install 'care[tracking]'), or remove "
                            "it from report_to")


class TrackingOptions(StageConfig):
    """The experiment-tracker options a training config shares (SFT, RL)."""

    report_to: list[str] = Field(
        default_factory=list, description="Experiment trackers that mirror the run's catalog metrics, by "
        "accelerate's names: tensorboard (offline, no account; pip install 'care[tracking]'), wandb, mlflow, "
        "comet_ml, aim, clearml, dvclive, swanlab, trackio (each needs its own package). Empty = none. Tags are "
        "<stage>/<metric>, steps the catalog's; not part of the run id.")
    tracking_dir: str | None = Field(
        None, description="Folder of the trackers that write files (TensorBoard events go to "
        "<tracking_dir>/<run id>/); None = <home>/tracking. Not part of the run id.")

    @field_validator("report_to")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        if value:
            known = known_trackers()
            unknown = [v for v in value if v not in known]
            if unknown:
                raise ValueError(f"unknown tracker(s) {unknown}; choose from {known}")
        return list(dict.fromkeys(value))

    def tracking_folder(self, home: str | Path) -> Path:
        """Where this run's trackers write: ``tracking_dir``, else ``<home>/tracking``."""
        return Path(self.tracking_dir).expanduser() if self.tracking_dir else Path(home) / DEFAULT_DIR


def flat_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, bool | int | float | str]:
    """Nested config -> ``{"optim.learning_rate": 1e-6, ...}`` of the scalar types trackers accept.

    >>> flat_config({"a": {"b": 1, "c": [1, 2]}, "d": None, "e": True})
    {'a.b': 1, 'a.c': '[1, 2]', 'd': 'None', 'e': True}
    """
    out: dict[str, bool | int | float | str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flat_config(value, f"{name}."))
        else:
            out[name] = value if isinstance(value, bool | int | float | str) else str(value)
    return out


def start(run_id: str, report_to: list[str], logging_dir: str | Path, config: Mapping[str, Any] | None = None) -> list:
    """Open the trackers of ``report_to`` for ``run_id`` in this process (replacing any still open) and store
    ``config`` as their hyperparameters; returns them (none when ``report_to`` is empty)."""
    finish(run_id)
    if not report_to:
        return []
    require_installed(report_to)
    from accelerate import PartialState
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    from care.device import default_device

    # accelerate's trackers log through its logger, which wants the process state; the same device choice as the
    # in-process update's Accelerator, which would otherwise refuse a state made for another device
    PartialState(cpu=default_device().type == "cpu")
    Path(logging_dir).mkdir(parents=True, exist_ok=True)
    trackers: list = []
    try:
        for name in report_to:
            cls = LOGGER_TYPE_TO_CLASS[name]
            tracker = cls(run_id, str(logging_dir)) if cls.requires_logging_directory else cls(run_id)
            tracker.start()
            trackers.append(tracker)
            if config:
                tracker.store_init_configuration(flat_config(config))
    except BaseException:
        _close(trackers)
        raise
    with _LOCK:
        _OPEN[run_id] = trackers
    return trackers


def log(run_id: str, step: int, metrics: Mapping[str, float | None], *, stage: str | None = None) -> None:
    """Mirror one ``record_metrics`` call to the run's open trackers (none open: nothing to do)."""
    with _LOCK:
        trackers = list(_OPEN.get(run_id, ()))
    if not trackers:
        return
    values = {f"{stage}/{name}" if stage else name: float(v) for name, v in metrics.items()
              if v is not None and math.isfinite(float(v))}
    for tracker in trackers:
        try:
            tracker.log(values, step=step)
        except Exception as exc:  # the catalog holds the values; a broken mirror must not fail the run
            log_.warning("tracker %s of run %s failed (%s: %s); it is closed, the catalog keeps the metrics",
                         tracker.name, run_id, type(exc).__name__, exc)
            with _LOCK:
                if tracker in _OPEN.get(run_id, []):
                    _OPEN[run_id].remove(tracker)


def finish(run_id: str) -> None:
    """Close the run's trackers (flushing their files); a no-op when none is open."""
    with _LOCK:
        trackers = _OPEN.pop(run_id, [])
    _close(trackers)


def _close(trackers: list) -> None:
    for tracker in trackers:
        try:
            tracker.finish()
        except Exception as exc:
            log_.warning("closing tracker %s failed: %s: %s", tracker.name, type(exc).__name__, exc)
