"""`python -m qtools` runs the command line."""

from qtools.cli import main

main()
