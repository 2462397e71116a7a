"""`zhclip run`: stages 1 -> 3 from one config.

Each stage is its own Beam job reading the previous stage's files under OUT,
so a failed or interrupted run resumes with the same command: stage 1 is
cheap to redo, stage 2 skips finished shards, stage 3 rewrites the same bytes.
"""

from __future__ import annotations

import argparse
from typing import Any

from zhclip.pipeline.core import report as R
from zhclip.pipeline.core.cliargs import add_common_arguments, apply_common_arguments
from zhclip.pipeline.core.config import Config, config_from_args


def run_all(cfg: Config, beam_args: list[str] | None = None, progress: bool = True,
            echo: bool = True) -> dict[str, Any]:
    """Run metadata, download and score in order; return the three reports."""
    from zhclip.pipeline.download.job import run_download, summary_lines
    from zhclip.pipeline.metadata.job import run_metadata
    from zhclip.pipeline.score.job import run_score

    beam_args = list(beam_args or [])
    meta = run_metadata(cfg, beam_args)
    if echo:
        R.print_funnel(meta, "stage 1 (metadata) funnel")
    down = run_download(cfg, beam_args, progress=progress)
    if echo:
        for line in summary_lines(down):
            print(line)
    score = run_score(cfg, beam_args)
    if echo:
        R.print_funnel(score, "stage 3 (score) funnel")
    return {"metadata": meta, "download": down, "score": score}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)


def main(args: argparse.Namespace, beam_args: list[str]) -> int:
    apply_common_arguments(args)
    cfg = config_from_args(args)
    reports = run_all(cfg, beam_args, progress=not args.no_progress, echo=not args.quiet)
    ok = (reports["metadata"]["total"]["balanced"] and reports["download"]["total"]["balanced"]
          and reports["score"]["total"]["balanced"])
    shards = reports["score"].get("shards", {})
    print(f"final shards: {shards.get('count', '?')} in {shards.get('folder', cfg.output)}")
    return 0 if ok else 1
