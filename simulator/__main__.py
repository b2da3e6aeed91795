"""``python -m simulator``: the ``sss`` command."""

from simulator.cli import main

main()
