"""`run_cli`: the `alignkit` command line run in the test's own process.

It lives with the tests, not in `alignkit.testing`: that module builds pipelines and rewards
below the commands, and a helper that imports the CLI would sit above the code it tests.
"""

from __future__ import annotations


def run_cli(args: list) -> int:
    """`alignkit ARGS` in this process (so test rewards are registered); the exit code."""
    from alignkit.cli import main

    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0
