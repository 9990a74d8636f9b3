"""`python -m batch` is the `firered-batch` command."""

from batch.cli import main

main()
