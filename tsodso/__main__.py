"""``python -m tsodso`` is the ``tsodso`` command."""

from tsodso.testbed.cli import main

main()
