"""Concurrent use of one catalog: N processes x M writes lose none, and ``care sql`` / ``care runs`` answer while
another process keeps writing (the lock wait is retried inside; no lock error reaches the user)."""

from __future__ import annotations

import json
import multiprocessing as mp
import subprocess
import sys

from care.store import catalog, runs

N_PROCESSES, M_WRITES = 4, 25


def _writer(path: str, worker: int, m: int) -> None:
    for step in range(m):
        runs.record_metrics(f"run-{worker}", step, {"loss": float(step), "grad_norm": 1.0}, stage="optimise",
                            path=path)


def test_n_processes_times_m_writes_lose_none(tmp_path):
    path = str(tmp_path / "care.duckdb")
    runs.start_run("setup", kind="test", config={}, path=path)  # the schema exists before the race starts
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, w, M_WRITES)) for w in range(N_PROCESSES)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0] * N_PROCESSES
    rows = catalog.query("select run_id, count(*), count(distinct step) from metrics group by 1 order by 1",
                         path=path)
    assert rows == [(f"run-{w}", 2 * M_WRITES, M_WRITES) for w in range(N_PROCESSES)]


# Writes one metrics row per connection until the test creates the stop file, and says "started" after the
# first. So while the test reads between the two, the writer is provably mid-way: it has written and cannot have
# finished. At the end it prints how many rows it wrote.
WRITER = """
import sys
from pathlib import Path
from care.store import runs
path, stop = sys.argv[1], Path(sys.argv[2])
step = 0
while step == 0 or not stop.exists():
    runs.record_metrics("r1", step, {"loss": 1.0}, path=path)
    step += 1
    if step == 1:
        print("started", flush=True)
print(step)
"""
MIN_ANSWERS, MAX_ROUNDS = 5, 100


def test_care_sql_and_care_runs_answer_while_a_writer_holds_the_catalog(tmp_path, care_home):
    path = care_home / "care.duckdb"
    runs.start_run("r1", kind="rl", config={"lr": 1}, path=path)
    stop = tmp_path / "stop"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(stop)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert writer.stdout.readline() == "started\n"  # blocks until the first row is written
        answers = []
        # read at least MIN_ANSWERS times, and until the writer is seen to make progress between the reads
        while len(answers) < MIN_ANSWERS or answers[-1] == answers[0]:
            assert len(answers) < MAX_ROUNDS, f"the writer made no progress while read: {answers}"
            proc = subprocess.run([sys.executable, "-m", "care", "sql", "select count(*) as n from metrics",
                                   "--format", "json"], capture_output=True, text=True, timeout=120)
            assert proc.returncode == 0, proc.stderr
            answers.append(json.loads(proc.stdout)[0]["n"])
            listed = subprocess.run([sys.executable, "-m", "care", "runs"], capture_output=True, text=True,
                                    timeout=120)
            assert listed.returncode == 0 and "r1" in listed.stdout, listed.stderr
            assert "lock" not in (proc.stderr + listed.stderr).lower()
            assert writer.poll() is None  # the premise: both commands ran while the writer was still writing
        assert answers[0] >= 1 and answers == sorted(answers)  # consistent snapshots, never going back
    finally:
        stop.touch()
        out, _ = writer.communicate(timeout=300)
    assert writer.returncode == 0
    written = int(out.strip())
    assert answers[-1] <= written
    assert catalog.query("select count(*) from metrics", path=path) == [(written,)]  # no row lost
