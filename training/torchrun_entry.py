"""The ``python -m zhclip.training.<cli>`` entry that torchrun starts, once for every command.

torchrun runs a module, not the ``zhclip`` console script, so each training command's module
needs a parser with ``--config`` / ``--set`` plus its own flags, and the same one-line errors
as ``pipeline.cli`` gives for a wrong config or usage.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from zhclip.pipeline.core.errors import ConfigError, UsageError

# Errors that are the user's input, not a bug: one line and exit 2, as pipeline.cli does.
USER_ERRORS = (ConfigError, UsageError, FileNotFoundError)


def torchrun_entry(prog: str, add_arguments: Callable[[argparse.ArgumentParser], None],
                   main: Callable[[argparse.Namespace, list[str]], int]) -> int:
    """Parse ``sys.argv`` for ``prog`` and run ``main``; a user error is one line on stderr."""
    parser = argparse.ArgumentParser(prog=f"zhclip-{prog}")
    parser.add_argument("--config")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    add_arguments(parser)
    args, rest = parser.parse_known_args()
    try:
        return main(args, rest)
    except USER_ERRORS as err:
        print(f"zhclip {prog}: error: {err}", file=sys.stderr)
        return 2
