"""The flags every Beam command takes, spelled once: ``--output``, ``--quiet``,
``--no-progress`` (``--config`` and ``--set`` are added by pipeline/cli.py).

``--no-progress`` sets tqdm's own ``TQDM_DISABLE`` switch, so it also reaches
bars drawn in worker processes the runner starts later.
"""

from __future__ import annotations

import argparse
import os


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", help="output root OUT (overrides the config's `output`)")
    parser.add_argument("--quiet", action="store_true", help="do not print the funnel table")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def apply_common_arguments(args: argparse.Namespace) -> None:
    """Act on the flags that are not config values (the config reads --output)."""
    if getattr(args, "no_progress", False):
        os.environ["TQDM_DISABLE"] = "1"
