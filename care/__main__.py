"""``python -m care`` is the ``care`` command."""

from care.cli import main

main()
