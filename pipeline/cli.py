"""`zhclip` command line.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and
``main(args, beam_args) -> int``; this file only wires them together, so a stage
can be read (and run) on its own. Flags this parser does not know are handed to
Beam's PipelineOptions untouched (``--runner DataflowRunner --project ...``).
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import re
import sys

from zhclip.pipeline.core.errors import ConfigError, UsageError

# name -> (module, help). Modules are imported only when their command runs,
# so `zhclip metadata` never pays for importing torch.
COMMANDS: dict[str, tuple[str, str]] = {
    "metadata": ("zhclip.pipeline.metadata.job", "stage 1: sources -> filtered, deduplicated URL shards"),
    "download": ("zhclip.pipeline.download.job", "stage 2: URL shards -> downloaded image shards"),
    "score": ("zhclip.pipeline.score.job", "stage 3: score, filter and write the final shards"),
    "run": ("zhclip.pipeline.run", "stages 1 -> 3 in one command"),
    "demo": ("zhclip.pipeline.demo.run", "the whole pipeline on a generated sample, on loopback"),
    "shards": ("zhclip.pipeline.inspect.cli", "inspect shard folders (ls, stats, head, verify, ...)"),
    "search": ("zhclip.pipeline.inspect.search", "nearest pairs of the corpus to a caption or an image (OUT/embeddings)"),
    "train": ("zhclip.training.cli", "two-stage Chinese CLIP pretraining on OUT/dataset"),
    "eval": ("zhclip.training.eval_cli", "recall on a retrieval benchmark, or zero-shot classification"),
    "export": ("zhclip.training.export_cli", "write an export as Chinese-CLIP, transformers, open_clip or ONNX"),
    "finetune": ("zhclip.training.finetune_cli", "fine-tune a model on a retrieval benchmark (recipes)"),
}

# The pip extra each command needs beyond the base install (stages 1 and 2 need none).
COMMAND_EXTRAS: dict[str, str] = {
    "score": "score",
    "run": "score",
    "search": "search",
    "demo": "dev",
    "train": "train",
    "export": "train",
    "eval": "train",
    "finetune": "train",
}

# Commands whose parser does not take --config/--set (they read shard folders or an export).
NO_CONFIG = {"shards", "search", "export", "eval"}


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """Build the parser; only ``selected``'s module is imported for its flags."""
    parser = argparse.ArgumentParser(
        prog="zhclip",
        description="Build a Chinese image-text corpus and train Chinese CLIP on it.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name not in NO_CONFIG:
            p.add_argument("--config", help="YAML config file (see configs/)")
            p.add_argument(
                "--set",
                dest="overrides",
                action="append",
                default=[],
                metavar="KEY=VALUE",
                help="override a config key, e.g. --set filters.caption.min_chars=4",
            )
        p.set_defaults(_module=module_name)
        if name != selected:
            continue
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            # A command whose module is not built yet still lists in --help.
            continue
        add = getattr(module, "add_arguments", None)
        if add is not None:
            add(p)
    return parser


class _DropBeamImportNoise(logging.Filter):
    """Beam warns on import when the optional GCP client libraries are absent;
    that is expected on a local install and only confuses users."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "apitools not found" not in record.getMessage()


def missing_extra_message(command: str, err: ImportError) -> str:
    """Say which install fixes a command whose dependencies are absent."""
    extra = COMMAND_EXTRAS.get(command)
    fix = f"; install it with: pip install 'zhclip[{extra}]'" if extra else ""
    # Beam re-raises a worker's error as a new one of the same type: no .name, a longer text.
    found = re.search(r"No module named '([^']+)'", str(err))
    missing = getattr(err, "name", None) or (found.group(1) if found else err)
    return f"zhclip {command}: needs {missing}, which this install lacks{fix}"


_DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG})
_ERRNO_IN_TEXT = re.compile(r"\[Errno (\d+)\]", re.IGNORECASE)
_WHILE_RUNNING = re.compile(r"\[while running '([^']+)'\]")


class _DropDiskErrorTraceback(logging.Filter):
    """Beam logs a failing step's traceback before re-raising; a full disk is told in one line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        m = _ERRNO_IN_TEXT.search(record.getMessage())
        return not (m and int(m.group(1)) in _DISK_ERRNOS)


def disk_error_line(err: BaseException) -> str | None:
    """One line for a full disk, a quota, a read-only or too-large output; None for other errors."""
    code = err.errno if isinstance(err, OSError) else None
    text = str(err)
    if code is None:
        m = _ERRNO_IN_TEXT.search(text)
        code = int(m.group(1)) if m else None
    if code not in _DISK_ERRNOS:
        return None
    where = getattr(err, "filename", None)
    detail = os.strerror(code) + (f" writing {where}" if where else "")
    if not where:
        m = _WHILE_RUNNING.search(text)
        detail += f" (in step {m.group(1)})" if m else ""
    return f"{detail}; free space or set output: to another folder, then rerun (finished shards are kept)"


def main(argv: list[str] | None = None) -> int:
    logging.getLogger().addFilter(_DropBeamImportNoise())
    logging.getLogger("apache_beam.runners.common").addFilter(_DropDiskErrorTraceback())
    argv = sys.argv[1:] if argv is None else argv
    selected = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(selected)
    args, beam_args = parser.parse_known_args(argv)
    try:
        module = importlib.import_module(args._module)
    except ImportError as err:
        print(missing_extra_message(args.command, err), file=sys.stderr)
        return 2
    try:
        return int(module.main(args, beam_args) or 0)
    except ModuleNotFoundError as err:
        # e.g. the scorer imports torch only once it is built: same advice.
        print(missing_extra_message(args.command, err), file=sys.stderr)
        return 2
    except (ConfigError, UsageError, FileNotFoundError) as err:
        print(f"zhclip {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"zhclip {args.command}: interrupted", file=sys.stderr)
        return 130
    except (OSError, RuntimeError) as err:
        # Beam re-raises a worker's OSError as RuntimeError("OSError: [Errno 28] ...").
        line = disk_error_line(err)
        if line is None:
            raise
        print(f"zhclip {args.command}: error: {line}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
