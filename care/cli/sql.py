"""``care sql QUERY``: read-only SQL over the catalog and its Parquet views (see ``care.store.sql``)."""

from __future__ import annotations

import csv
import io
import json

import typer

from care.cli.common import state
from care.store.sql import QueryResult, run_query


def render(result: QueryResult, fmt: str) -> str:
    """The result as ``table`` (aligned text), ``csv`` or ``json`` (a list of objects)."""
    if fmt == "json":
        return json.dumps([dict(zip(result.columns, row, strict=True)) for row in result.rows], default=str,
                          indent=2)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(result.columns)
        writer.writerows(result.rows)
        return buf.getvalue().rstrip("\n")
    cells = [result.columns, *[["NULL" if v is None else str(v) for v in row] for row in result.rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(result.columns))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def sql_command(
    ctx: typer.Context,
    query: str = typer.Argument(..., help='One SELECT, e.g. "select status, count(*) from videos group by 1".'),
    fmt: str = typer.Option("table", "--format", "-f", help="Output: table, csv or json."),
) -> None:
    """Run one read-only query against the catalog (writes, COPY, ATTACH, INSTALL/LOAD and file access refused)."""
    ws = state(ctx).workspace
    if fmt not in ("table", "csv", "json"):
        raise typer.BadParameter(f"--format {fmt!r}: choose table, csv or json")
    fmt = "json" if state(ctx).json else fmt
    result = run_query(query, catalog=ws.catalog_path, allowed_dirs=[ws.frame_cache_dir, ws.rollouts_dir, ws.runs_dir])
    typer.echo(render(result, fmt))
