"""Transfer benchmarks: read a general video benchmark in its published layout into care ``Sample`` rows.

One module per benchmark, each an :class:`~care.data.benchmarks.common.Benchmark` (what its root holds, where
to download it, how a row becomes a sample); ``BENCHMARKS`` is the registry ``care eval --benchmark NAME``
looks names up in. Levels are the benchmark's categories (``Sample.split``): MVBench's task, Video-MME's
duration, MMVU's subject, VSI-Bench's question type, TempCompass's temporal aspect, Video-MMMU's track. Samples are video-only
(``Sample.image`` is None). Rows that cannot be used are rejects naming the file, row and field; rows of a kind care does not evaluate (e.g. a frame-folder task) are rejects whose reason
starts with ``not supported:``. The prompt (``care.algo.prompt``, one template per benchmark) and the answer
rule (first answer tag, exact letter) are those of the reference code's general-video evaluation.
"""

from __future__ import annotations

from pathlib import Path

from care.data.annotations import LoadResult
from care.data.benchmarks import mmvu, mvbench, tempcompass, videomme, videommmu, vsibench
from care.data.benchmarks.common import Benchmark, BenchmarkError

BENCHMARKS: dict[str, Benchmark] = {
    b.name: b for b in (mvbench.BENCHMARK, videomme.BENCHMARK, mmvu.BENCHMARK, vsibench.BENCHMARK, tempcompass.BENCHMARK,
                        videommmu.BENCHMARK)}


def get_benchmark(name: str) -> Benchmark:
    """The registered benchmark ``name``; a clear error listing the known names otherwise."""
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise BenchmarkError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}") from None


def load_levels(name: str, data_root: str | Path, levels: list[str] | None = None) -> LoadResult:
    """The samples of ``levels`` (all when None or empty) and every reject of the benchmark under ``data_root``."""
    loaded = get_benchmark(name).load(data_root)
    if levels:
        loaded = LoadResult(samples=[s for s in loaded.samples if s.split in levels], rejects=loaded.rejects)
    return loaded


__all__ = ["BENCHMARKS", "Benchmark", "BenchmarkError", "get_benchmark", "load_levels"]
