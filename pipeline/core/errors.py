"""Error types every command shares.

The CLI prints any of these as one line and exits 2, so a user sees what was
wrong and how to fix it, not a traceback.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message says which key."""


class UsageError(Exception):
    """Bad command-line input; printed as one line, exit code 2."""
