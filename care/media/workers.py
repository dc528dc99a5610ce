"""Fill the frame cache from many media files in parallel worker processes, isolating decoder crashes.

Why processes: decoding is CPU-bound native code and decord holds the GIL for parts of it; and decord, being
native code, could take its process down on a hostile file (none of 32 fuzzed corrupt files did so with decord
0.6, and PyAV checks every file before decord sees it, but a crash must still not cost the run).
Workers are started with ``spawn`` (the caller may run threads, e.g. Prefect's) and import only
``care.media`` (no torch).

If a worker dies, the pool breaks: finished results are kept and each unfinished file is retried alone in a
fresh one-worker pool; a file that kills its worker again is quarantined as ``decoder crashed``.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool

from care.failpoints import failpoint
from care.media.frame_cache import FrameCache, MediaResult
from care.media.sampling import FrameSampling

Item = tuple[str, str]  # (path, kind)


def cache_one(root: str, sampling: dict, data_root: str | None, path: str, kind: str) -> dict:
    """Worker entry point: ``FrameCache.put`` on one file, as a plain dict."""
    cache = FrameCache(root, FrameSampling.model_validate(sampling), data_root)
    return cache.put(path, kind).as_dict()


def die_with_parent() -> None:
    """Worker initializer: end this worker when the process that started it dies (even by SIGKILL).

    Without it a killed command leaves its decoding workers behind, holding the command's stdout and stderr
    (a caller waiting for them to close waits forever). Linux only (PR_SET_PDEATHSIG); elsewhere a no-op.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() == 1:  # the parent died before the line above ran
        os._exit(1)


def crashed(path: str, kind: str, exitcode: str = "") -> dict:
    reason = f"decoder crashed (worker process died{': ' + exitcode if exitcode else ''})"
    return MediaResult(path=path, kind=kind, status="quarantined", reason=reason, error_kind="crash").as_dict()


def run_isolated(func: Callable[..., dict], items: Sequence[Item], args: tuple, workers: int,
                 on_result: Callable[[dict], None] | None = None) -> list[dict]:
    """``func(*args, path, kind)`` for every item in ``workers`` processes; results in item order.

    ``func`` must be a module-level function. A crash of a worker costs only the item that causes it.
    """
    results: dict[int, dict] = {}
    pending = list(range(len(items)))
    ctx = mp.get_context("spawn")

    def done(i: int, result: dict) -> None:
        results[i] = result
        failpoint("preprocess", len(results))  # crash tests: killed with some entries cached, others not
        if on_result is not None:
            on_result(result)

    try:
        with ProcessPoolExecutor(max_workers=max(1, min(workers, len(items))), mp_context=ctx, initializer=die_with_parent) as pool:
            futures = {pool.submit(func, *args, *items[i]): i for i in pending}
            for future in as_completed(futures):
                done(futures[future], future.result())
    except BrokenProcessPool:
        pass
    for i in (i for i in pending if i not in results):  # after a crash: one at a time, alone
        try:
            with ProcessPoolExecutor(max_workers=1, mp_context=ctx, initializer=die_with_parent) as pool:
                done(i, pool.submit(func, *args, *items[i]).result())
        except BrokenProcessPool:
            done(i, crashed(*items[i]))
    return [results[i] for i in range(len(items))]


def cache_many(items: Sequence[Item], cache: FrameCache, workers: int | None = None,
               on_result: Callable[[dict], None] | None = None) -> list[dict]:
    """Cache every ``(path, kind)`` in parallel; ``MediaResult`` dicts in item order."""
    if not items:
        return []
    workers = workers or os.cpu_count() or 1
    args = (str(cache.root), cache.sampling.model_dump(), str(cache.data_root) if cache.data_root else None)
    return run_isolated(cache_one, items, args, workers, on_result)
