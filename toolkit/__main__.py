"""`python -m toolkit ...` runs the command line, as the `toolkit` script does."""

from toolkit.cli import main

main(prog_name="toolkit")
