"""The DuckDB catalog: the one place that opens connections to ``care.duckdb``.

Rules (as in dbt-duckdb): connections are short-lived (open, do the work, close: another process cannot even
open the file read-only while one is open for writing); values are bound with ``?``; opening is retried with
exponential backoff and jitter while another process holds the file's lock.

Tables are declared by the modules that own them with ``register_schema(name, [DDL...])``; every statement
must be idempotent (``CREATE ... IF NOT EXISTS`` / ``CREATE OR REPLACE VIEW``) and is applied on each
read-write connect, so adding a table is adding a list of statements.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb

from care.errors import CareError
from care.workspace import Workspace

_SCHEMAS: dict[str, list[str]] = {}
LOCK_WAIT_S = 60.0


class CatalogError(CareError):
    """The catalog cannot be opened or a statement failed."""


def register_schema(name: str, statements: Sequence[str]) -> None:
    """Declare the idempotent DDL of ``name`` (e.g. "media"); applied on every read-write connection."""
    _SCHEMAS[name] = list(statements)


def catalog_path(path: str | os.PathLike | None = None) -> Path:
    return Path(path) if path is not None else Workspace.at(None).catalog_path


def _is_lock_error(exc: BaseException) -> bool:
    text = str(exc)
    return "Could not set lock" in text or "Conflicting lock" in text or "database is locked" in text


def open_connection(path: Path, *, read_only: bool = False, config: dict | None = None,
                    wait_s: float = LOCK_WAIT_S) -> duckdb.DuckDBPyConnection:
    """Open ``path``, retrying while another process holds its lock; raise ``CatalogError`` after ``wait_s``."""
    deadline = time.monotonic() + wait_s
    delay = 0.01
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only, config=config or {})
        except duckdb.Error as exc:
            if not _is_lock_error(exc):
                raise CatalogError(f"{path}: cannot open the catalog: {' '.join(str(exc).split())[:200]}") from exc
            if time.monotonic() >= deadline:
                raise CatalogError(f"{path}: catalog is locked by another process for over {wait_s:.0f} s; "
                                   "wait for it to finish or stop it") from exc
        time.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, 0.5)


@contextmanager
def connect(path: str | os.PathLike | None = None, *, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
    """A short-lived connection to the catalog (schemas applied when writable); closed on exit.

    Writes made inside the block are committed when it ends without error.
    """
    path = catalog_path(path)
    if read_only and not path.is_file():
        raise CatalogError(f"{path}: no catalog yet; run a pipeline stage (e.g. `care preprocess`) first")
    if not read_only:
        path.parent.mkdir(parents=True, exist_ok=True)
    con = open_connection(path, read_only=read_only)
    try:
        if not read_only:
            for statements in _SCHEMAS.values():
                for ddl in statements:
                    con.execute(ddl)
        yield con
    finally:
        con.close()


def execute(sql: str, params: Sequence[Any] | None = None, *, path: str | os.PathLike | None = None) -> None:
    """Run one write statement with bound parameters in its own connection."""
    with connect(path) as con:
        con.execute(sql, list(params or []))


ROWS_PER_STATEMENT = 500


def insert_rows_on(con: duckdb.DuckDBPyConnection, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]],
                   *, key: Sequence[str] | None = None) -> int:
    """Insert ``rows`` (one value per column) into ``table`` on an open connection, in statements of up to
    ``ROWS_PER_STATEMENT`` rows each; with ``key`` (column names), ``INSERT OR REPLACE`` on it.

    Why not ``executemany``: DuckDB runs it as one statement per row, 1.5-2 ms a row on 2 Xeon cores (39 metric rows
    of an RL iteration took 70 ms, 2,000 media rows ~3.5 s); one multi-row ``VALUES`` list binds and casts each
    parameter the same way at ~30 us a row. Rows repeating a key keep the last, as a row-by-row upsert would:
    within one ``INSERT OR REPLACE`` DuckDB keeps the first.
    """
    width = len(columns)
    for r in rows:  # before the key is read from them: a short row gets this error, not an IndexError
        if len(r) != width:
            raise ValueError(f"{table}: a row has {len(r)} values for {width} columns ({', '.join(columns)}): {r!r}")
    if key:
        at = [columns.index(k) for k in key]
        rows = list({tuple(r[i] for i in at): r for r in rows}.values())
    head = f"INSERT {'OR REPLACE ' if key else ''}INTO {table} ({', '.join(columns)}) VALUES "
    group = "(" + ", ".join("?" * width) + ")"
    for start in range(0, len(rows), ROWS_PER_STATEMENT):
        chunk = rows[start:start + ROWS_PER_STATEMENT]
        con.execute(head + ", ".join([group] * len(chunk)), [v for r in chunk for v in r])
    return len(rows)


def insert_rows(table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], *,
                key: Sequence[str] | None = None, path: str | os.PathLike | None = None) -> int:
    """``insert_rows_on`` in its own connection and one transaction; returns the rows written."""
    if not rows:
        return 0
    with connect(path) as con:
        con.execute("BEGIN")
        try:
            written = insert_rows_on(con, table, columns, rows, key=key)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
    return written


def query(sql: str, params: Sequence[Any] | None = None, *,
          path: str | os.PathLike | None = None) -> list[tuple]:
    """Rows of a read query, from a read-only connection."""
    with connect(path, read_only=True) as con:
        return con.execute(sql, list(params or [])).fetchall()
