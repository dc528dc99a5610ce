"""User-facing errors: each carries a one-line message naming the file/row/field and what to do.

The CLI prints these without a traceback and exits with status 2.
"""

from __future__ import annotations


class CareError(Exception):
    """An error the user can fix (bad path, bad row, bad config, bad model folder)."""
