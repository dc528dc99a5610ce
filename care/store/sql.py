"""Read-only ad-hoc SQL over the catalog (``care sql``).

Three locks, each needed (measured on DuckDB 2.0):

1. the file is opened ``read_only`` (INSERT/UPDATE/CREATE fail in DuckDB itself);
2. only one ``SELECT`` (or plan-only ``EXPLAIN``) statement is accepted, checked with DuckDB's own parser and
   tokenizer, because ``COPY ... TO`` into an allowed folder would still write a file (``EXPLAIN ANALYZE`` runs
   its statement, so ``EXPLAIN ANALYZE COPY ...`` would too);
3. external access is switched off except for the workspace's Parquet folders: ``allowed_directories`` is set
   first, then ``enable_external_access=false``, then ``lock_configuration=true`` so the query cannot undo
   them. Passing both as ``connect(config=...)`` fails ("Cannot change allowed_directories when
   enable_external_access is disabled"); with external access off and no allowed folder, every view over
   Parquet (``frames``) fails with a Permission Error. ``read_csv('/etc/passwd')``, ``ATTACH``, ``INSTALL``
   and ``LOAD`` are refused; ``..`` cannot escape an allowed folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import duckdb

from care.errors import CareError
from care.store.catalog import catalog_path, open_connection

ALLOWED_STATEMENTS = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}


class SqlError(CareError):
    """A refused statement or a failing query."""


@dataclass(frozen=True)
class QueryResult:
    columns: list[str]
    rows: list[tuple]


def check_read_only(sql: str) -> None:
    """Raise ``SqlError`` unless ``sql`` is exactly one SELECT/EXPLAIN statement."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise SqlError(f"SQL error: {_one_line(exc)}") from None
    if len(statements) != 1:
        raise SqlError(f"expected exactly one statement, got {len(statements)}; run them one at a time")
    kind = statements[0].type
    if kind not in ALLOWED_STATEMENTS:
        name = kind.name if hasattr(kind, "name") else str(kind)
        raise SqlError(f"refused: {name} statements are not allowed; `care sql` is read-only (SELECT only)")
    if kind == duckdb.StatementType.EXPLAIN and _has_keyword(sql, ("analyze", "analyse")):
        # EXPLAIN ANALYZE runs its statement: `explain analyze copy ... to '<allowed folder>/x'` would write
        raise SqlError("refused: EXPLAIN ANALYZE runs its statement; use EXPLAIN (plan only) or run the SELECT")


def _has_keyword(sql: str, words: tuple[str, ...]) -> bool:
    """True when one of ``words`` is a keyword token of ``sql`` (not inside a string, comment or identifier)."""
    tokens = duckdb.tokenize(sql)
    ends = [start for start, _ in tokens[1:]] + [len(sql)]
    return any(kind == duckdb.token_type.keyword and sql[start:end].strip().lower() in words
               for (start, kind), end in zip(tokens, ends, strict=True))


def run_query(sql: str, *, catalog: str | os.PathLike | None = None,
              allowed_dirs: list[str | os.PathLike] = ()) -> QueryResult:
    """Run one read-only query against the catalog; ``allowed_dirs`` are the folders views may read."""
    check_read_only(sql)
    path = catalog_path(catalog)
    if not path.is_file():
        raise SqlError(f"{path}: no catalog yet; run a pipeline stage (e.g. `care preprocess`) first")
    con = open_connection(path, read_only=True)
    try:
        dirs = [str(Path(d).resolve()) + "/" for d in allowed_dirs]
        con.execute("SET allowed_directories = ?", [dirs])
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        try:
            cursor = con.execute(sql)
            columns = [d[0] for d in cursor.description or []]
            return QueryResult(columns=columns, rows=cursor.fetchall())
        except duckdb.Error as exc:
            raise SqlError(f"SQL error: {_one_line(exc)}") from None
    finally:
        con.close()


def _one_line(exc: BaseException) -> str:
    first = str(exc).strip().split("\n")[0]
    return " ".join(first.split())[:300]
