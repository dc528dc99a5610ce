"""Running the ``care`` command in this process (typer's entry point), for tests of its output and exit status."""

from __future__ import annotations

import pytest

from care.cli import main


def care_in_process(capsys, *argv: str) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``care ARGV`` run in this process."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
        raise SystemExit(0)
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err
