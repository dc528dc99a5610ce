"""DuckDB catalog (``catalog``: the one connection owner), preprocessing tables (``media``), read-only SQL.

Importing ``care.store`` registers the schemas of its modules, so any writable connection creates them.
"""

from care.store import media as media
from care.store.catalog import CatalogError, connect, execute, insert_rows, query, register_schema

__all__ = ["CatalogError", "connect", "execute", "insert_rows", "media", "query", "register_schema"]
