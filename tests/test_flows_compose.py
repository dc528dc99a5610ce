"""Flows and tasks reach the catalog only through ``care.store``: no duckdb import, no SQL run or written there.

The ``dig in: care sql "select ..."`` hints the flows print are messages for the user, not queries, and pass.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("flows", "tasks")
SQL_CALLS = {"execute", "executemany", "insert_rows", "insert_rows_on", "query", "sql", "fetchall", "fetchone", "fetchdf", "fetch_arrow_table"}
SQL_TEXT = re.compile(r"^\s*(SELECT|INSERT|UPDATE|DELETE|CREATE|DROP|ALTER|WITH|COPY|ATTACH)\b", re.IGNORECASE)


def _called_name(func: ast.expr) -> str | None:
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None


def catalog_access(source: str, *, flow: bool) -> list[str]:
    """What in ``source`` talks to DuckDB itself: ``line: what`` for each duckdb import, SQL-running call and
    string that starts like SQL; and, in a flow (which only composes), each connection opened."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [f"{node.lineno}: import {n}" for n in names if n.split(".")[0] == "duckdb"]
        elif isinstance(node, ast.Call):
            name = _called_name(node.func)
            if name in SQL_CALLS or (flow and name == "connect"):
                found.append(f"{node.lineno}: {name}(...)")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL_TEXT.match(node.value):
            found.append(f"{node.lineno}: SQL text {node.value[:40]!r}")
    return sorted(found, key=lambda f: int(f.split(":")[0]))


@pytest.mark.parametrize("path", sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_no_sql_in_flows_and_tasks(path):
    found = catalog_access(path.read_text(), flow=path.parent.name == "flows")
    assert not found, f"{path.relative_to(ROOT)} talks to DuckDB itself; move it into care.store: {found}"


def test_the_check_sees_each_kind_of_catalog_access():
    source = '''
import duckdb
from duckdb import connect as c
from care.store import catalog

def f(path):
    with catalog.connect(path) as con:
        con.execute("SELECT 1")
    sql = """
        select kind from runs"""
    return catalog.query(sql, [1], path=path)

print(f"dig in: care sql \\"select 1\\"")
'''
    found = catalog_access(source, flow=True)
    assert [f.split(":")[0] for f in found] == ["2", "3", "7", "8", "8", "9", "11"], found
    assert catalog_access(source, flow=False) == [f for f in found if not f.startswith("7:")]
