"""The command line: one module per group of commands (``main`` parses and dispatches; ``common``, ``use``,
``search``, ``journey``): parse, call the library, print, exit."""

import sys


def entry(argv: list[str] | None = None) -> int:
    """The `tinymnist` entry point: `check` runs with the standard library alone (a student's CI has no torch);
    every other command goes to ``cli.main``."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["check"]:
        from tinymnist.cli.journey import check_main

        return check_main(argv[1:])
    from tinymnist.cli.main import main as full

    return full(argv)
