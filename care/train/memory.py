"""Peak memory of one stage in this process, for the ``peak_memory_mib`` metric.

Which memory (``Peak.source``):

- ``cuda``: the stage used a CUDA device here: ``torch.cuda.max_memory_allocated`` (tensors allocated by
  torch's caching allocator, not what it reserves), reset when the stage starts;
- ``rss``: otherwise, on Linux: the process's peak resident set size over the stage (``VmHWM`` of
  ``/proc/self/status``, reset when the stage starts by writing 5 to ``/proc/self/clear_refs``);
- ``rss_process``: where that reset is refused: the process's peak RSS since it started
  (``resource.getrusage``), an upper bound of the stage's.

Stages run one at a time in a flow's process, so resetting the process-wide peak at a stage's start is safe.
The gang's ranks (``optim.num_processes > 1``) measure their own part of each stage the same way, and the
stage reports the largest over the ranks (``care.train.gang``); :func:`measured_here` tells the tasks whether
a stage's work ran in this process. A vLLM engine's own memory is not measured.
"""

from __future__ import annotations

import resource
import sys
from dataclasses import dataclass
from pathlib import Path

MIB = 1024 * 1024
_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


def _cuda_in_use() -> bool:
    torch = sys.modules.get("torch")
    return bool(torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized())


def _reset_rss_peak() -> bool:
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def _rss_peak_mib() -> float | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def _process_peak_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MIB if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


@dataclass
class Peak:
    """``with Peak() as peak: ...`` then ``peak.mib`` (MiB) and ``peak.source`` (see the module docstring)."""

    mib: float | None = None
    source: str | None = None
    _rss_reset: bool = False

    def __enter__(self) -> Peak:
        if _cuda_in_use():
            import torch

            torch.cuda.reset_peak_memory_stats()
        self._rss_reset = _reset_rss_peak()
        return self

    def __exit__(self, *exc) -> None:
        if _cuda_in_use():  # also when the stage's own work initialised CUDA
            import torch

            self.mib, self.source = torch.cuda.max_memory_allocated() / MIB, "cuda"
            return
        rss = _rss_peak_mib() if self._rss_reset else None
        self.mib, self.source = (rss, "rss") if rss is not None else (_process_peak_mib(), "rss_process")

    def metrics(self, stage: str) -> dict[str, float]:
        """``{"<stage>_peak_memory_mib": mib}`` once measured, else ``{}``. The stage is in the name because the
        catalog keys a metric by (run, step, name) and a run's stages record at the same step."""
        return {f"{stage}_peak_memory_mib": self.mib} if self.mib is not None else {}

    def fields(self) -> dict[str, float | str]:
        """``{"peak_memory_mib", "peak_memory_source"}`` for a stage's manifest, once measured."""
        return {"peak_memory_mib": self.mib, "peak_memory_source": self.source} if self.mib is not None else {}


def measured_here(state, *, backend: str = "hf") -> bool:
    """Whether a stage of ``state``'s run does its work in this process: one process (``optim.num_processes``
    1, or ``state`` carries no replay spec) and, for rollouts, the hf backend (vLLM runs its own process)."""
    config = getattr(getattr(state, "replay", None), "config", None)
    return backend == "hf" and (config is None or config.num_processes == 1)
