"""The `firered-batch` command: arguments in, one library call, outcome → exit code.

It may import every other part; nothing imports it. It holds no logic that the library lacks:
what it adds is process-wide (logging handlers, signal handlers, the garbage collector's
setting, crashpoints armed from the environment) and the mapping of outcomes to exit codes.
"""

from batch.cli.commands import main

__all__ = ["main"]
