"""The DuckDB catalog: schemas applied on connect, bound parameters, several writer processes lose no row."""

from __future__ import annotations

import multiprocessing as mp

import duckdb
import pytest

from care.store import catalog, media
from care.workspace import Workspace


def _writer(db: str, worker: int, writes: int) -> None:
    for i in range(writes):
        media.record_rejects([(f"w{worker}.jsonl", i, f"row {i} from worker {worker}")], run_id="r", path=db)


def test_concurrent_writer_processes_lose_no_row(tmp_path):
    db = str(tmp_path / "care.duckdb")
    procs, writes = 4, 15
    ctx = mp.get_context("spawn")
    workers = [ctx.Process(target=_writer, args=(db, w, writes)) for w in range(procs)]
    for p in workers:
        p.start()
    # hold the lock from this process too, so the writers must wait and retry
    with catalog.connect(db) as con:
        con.execute("SELECT 1")
    for p in workers:
        p.join(timeout=120)
        assert p.exitcode == 0
    rows = catalog.query("SELECT file, count(*), count(DISTINCT line) FROM rejects GROUP BY 1 ORDER BY 1", path=db)
    assert rows == [(f"w{w}.jsonl", writes, writes) for w in range(procs)]


class _SteppedClock:
    """Stands in for ``time`` in ``care.store.catalog``: each ``monotonic()`` call advances one second and
    ``sleep`` only counts, so the lock wait's deadline is reached after a known number of tries, whatever the
    machine's speed."""

    def __init__(self):
        self.now, self.sleeps = 1000.0, 0

    def monotonic(self) -> float:
        self.now += 1.0
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps += 1


def test_lock_held_too_long_is_a_one_line_error(tmp_path, monkeypatch):
    db = tmp_path / "care.duckdb"
    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(db), ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        clock = _SteppedClock()
        with monkeypatch.context() as patch:
            patch.setattr(catalog, "time", clock)
            # deadline = start + 3 clock seconds: the tries at +1 and +2 fail and wait, the one at +3 gives up
            with pytest.raises(catalog.CatalogError, match="locked by another process for over 3 s") as failed:
                catalog.open_connection(db, wait_s=3)
        assert clock.sleeps == 2 and "\n" not in str(failed.value)
    finally:
        release.set()
        holder.join(timeout=60)
    with catalog.connect(db) as con:  # free again
        assert con.execute("SELECT count(*) FROM videos").fetchone() == (0,)


def _hold_lock(db: str, ready, release) -> None:
    con = duckdb.connect(db)
    ready.set()
    release.wait(60)
    con.close()


def test_schema_applied_and_values_bound(tmp_path):
    db = tmp_path / "care.duckdb"
    tricky = "it's a 'quoted'; DROP TABLE videos; --"
    media.record_rejects([("a.jsonl", 3, tricky)], run_id="run1", path=db)
    assert catalog.query("SELECT file, line, reason, run_id FROM rejects", path=db) == [
        ("a.jsonl", 3, tricky, "run1")]
    result = {"path": str(tmp_path / "v.mp4"), "kind": "video", "status": "quarantined",
              "reason": "zero-byte file", "error_kind": "zero_byte"}
    media.record_media([result], data_root=tmp_path, run_id="run1", path=db)
    media.record_media([result], data_root=tmp_path, run_id="run2", path=db)  # upsert, not a duplicate
    assert catalog.query("SELECT rel_path, status, reason, run_id FROM videos", path=db) == [
        ("v.mp4", "quarantined", "zero-byte file", "run2")]
    assert media.quarantined(path=db) == {str(tmp_path / "v.mp4"): "zero-byte file"}


def test_default_catalog_is_the_workspace_one(care_home):
    media.record_rejects([("x.jsonl", 1, "bad")], run_id="r")
    assert Workspace.at(None).catalog_path.is_file()
    assert catalog.query("SELECT count(*) FROM rejects") == [(1,)]


def test_read_only_without_catalog_says_what_to_do(tmp_path):
    with pytest.raises(catalog.CatalogError, match="no catalog yet"):
        catalog.query("SELECT 1", path=tmp_path / "none.duckdb")


def test_insert_rows_upserts_in_chunks_and_keeps_the_last_of_a_repeated_key(tmp_path, monkeypatch):
    db = str(tmp_path / "care.duckdb")
    monkeypatch.setattr(catalog, "ROWS_PER_STATEMENT", 7)  # several statements, and a key repeated across two
    with catalog.connect(db) as con:
        con.execute("CREATE TABLE t (k VARCHAR PRIMARY KEY, n INTEGER, v DOUBLE, note VARCHAR)")
    rows = [(f"k{i}", i, i, None) for i in range(20)]  # ints into the DOUBLE column are cast, as when bound alone
    rows += [("k3", 103, 0.5, "second"), ("k3", 203, 1.5, "third")]
    assert catalog.insert_rows("t", ("k", "n", "v", "note"), rows, key=("k",), path=db) == 20
    assert catalog.insert_rows("t", ("k", "n", "v", "note"), [("k19", -1, 2.5, "replaced")], key=("k",), path=db) == 1
    got = {r[0]: r[1:] for r in catalog.query("SELECT k, n, v, note FROM t", path=db)}
    assert len(got) == 20
    assert got["k3"] == (203, 1.5, "third")  # the last of the repeated key, as a row-by-row upsert leaves it
    assert got["k19"] == (-1, 2.5, "replaced")
    assert got["k7"] == (7, 7.0, None)


def test_insert_rows_is_one_transaction_and_names_a_malformed_row(tmp_path, monkeypatch):
    db = str(tmp_path / "care.duckdb")
    monkeypatch.setattr(catalog, "ROWS_PER_STATEMENT", 2)
    with catalog.connect(db) as con:
        con.execute("CREATE TABLE t (k VARCHAR PRIMARY KEY, n INTEGER NOT NULL)")
    with pytest.raises(duckdb.ConstraintException):  # the third chunk fails: the first two are rolled back
        catalog.insert_rows("t", ("k", "n"), [("a", 1), ("b", 2), ("c", 3), ("d", 4), ("e", None)], path=db)
    assert catalog.query("SELECT count(*) FROM t", path=db) == [(0,)]
    for key in (None, ("n",)):  # with a key too, whose column the short row lacks
        with pytest.raises(ValueError, match=r"t: a row has 1 values for 2 columns \(k, n\)"):
            catalog.insert_rows("t", ("k", "n"), [("a", 1), ("b",)], key=key, path=db)
    assert catalog.insert_rows("t", ("k", "n"), [], path=db) == 0
