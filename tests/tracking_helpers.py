"""Read a run's metrics back from TensorBoard event files and from the catalog, in the same shape."""

from __future__ import annotations

from pathlib import Path

from care.store import catalog


def tensorboard_scalars(folder: str | Path) -> dict[tuple[str, int], float]:
    """(tag, step) -> value of every scalar in the event files directly under ``folder`` (not the hparams
    sub-folders), read with TensorBoard's own loader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})  # 0 = keep every event
    acc.Reload()
    return {(tag, e.step): e.value for tag in acc.Tags()["scalars"] for e in acc.Scalars(tag)}


def catalog_scalars(db: str | Path, run_id: str) -> dict[tuple[str, int], float]:
    """(``<stage>/<name>``, step) -> value of the run's ``metrics`` rows that hold a value."""
    rows = catalog.query("SELECT stage, name, step, value FROM metrics WHERE run_id = ? AND value IS NOT NULL",
                         [run_id], path=db)
    return {(f"{stage}/{name}", step): value for stage, name, step, value in rows}
