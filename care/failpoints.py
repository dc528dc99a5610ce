"""Failpoints: kill this process at a named point, to test crash recovery for real (SIGKILL, not an exception).

Set ``CARE_FAILPOINT=<point>[@<iteration>]`` (comma-separated for several) and the process sends itself
SIGKILL when it reaches that point (on that iteration, if given). Unset, a failpoint costs one dictionary
lookup. Points (where the pipeline can be killed): ``preprocess``, ``rollout``, ``scoring``, ``optimise``
(after the backward passes, before the checkpoint), ``checkpoint-write`` (files written, not yet renamed into
place), ``sft``, ``evaluation``, and ``gang-rank<N>`` (rank N of the resident gang, when a stage's command
reaches it: ``care.train.gang_worker``).
The crash tests and ``docs/reliability.md`` use them; the same idea as etcd's gofail or TiKV's fail-rs.
"""

from __future__ import annotations

import os
import signal

ENV = "CARE_FAILPOINT"


def _armed() -> dict[str, int | None]:
    spec = os.environ.get(ENV, "")
    points: dict[str, int | None] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, at = item.partition("@")
        points[name] = int(at) if at else None
    return points


def failpoint(name: str, iteration: int | None = None) -> None:
    """SIGKILL this process if ``name`` (for ``iteration``, when the failpoint names one) is armed."""
    if ENV not in os.environ:
        return
    points = _armed()
    if name in points and (points[name] is None or points[name] == iteration):
        os.kill(os.getpid(), signal.SIGKILL)
