"""``python -m synthgen`` = the ``synthgen`` command."""

from synthgen.cli import main

main()
