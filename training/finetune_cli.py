"""`zhclip finetune`: fine-tune a trained model on a retrieval benchmark with a named recipe.

    zhclip finetune --init clip_cn_vit-b-16.pt --data datasets/Flickr30k-CN \\
        --recipe flickr30k-cn --output runs/flickr30k-ft
    zhclip finetune --init export.pt --data my_shards/ --recipe default --output ft \\
        --set train.finetune.epochs=5 --set train.finetune.accum_steps=4

Several processes: ``torchrun --nproc_per_node N -m zhclip.training.finetune_cli`` with
the same flags. Recipe keys are overridden with ``--set train.finetune.KEY=VALUE``
(or a ``train: {finetune: {...}}`` mapping in ``--config``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from zhclip.pipeline.core.config import load_config
from zhclip.pipeline.core.errors import ConfigError, UsageError
from zhclip.training.recipes import RECIPES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--init", required=True,
                        help="zhclip export/checkpoint, cn_clip checkpoint, or ChineseCLIPModel folder")
    parser.add_argument("--data", required=True,
                        help="{split}_texts.jsonl + {split}_imgs.tsv, cn_clip's lmdb/, or zhclip shards")
    parser.add_argument("--recipe", default="default",
                        help=f"hyperparameters: {', '.join(RECIPES)} (default: default)")
    parser.add_argument("--output", required=True, help="folder for best.pt, export.pt and logs")
    parser.add_argument("--format", default="auto", choices=("auto", "chinese-clip", "lmdb", "shards"),
                        help="data layout (default: detected from the folder's files)")
    parser.add_argument("--valid-split", help="split to validate on (default valid; val for shards)")


def main(args: argparse.Namespace, beam_args: list[str]) -> int:
    if beam_args:
        raise UsageError(f"zhclip finetune does not take {' '.join(beam_args)}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from zhclip.training.recipes import resolve_recipe

    config = load_config(getattr(args, "config", None), list(getattr(args, "overrides", []) or []))
    overrides = (config.train or {}).get("finetune") or {}
    if not isinstance(overrides, dict):
        raise ConfigError("train.finetune must be a mapping of recipe keys")
    recipe = resolve_recipe(args.recipe, overrides)
    # torch and the towers are imported only once the recipe is known to be good
    from zhclip.training.finetune import finetune
    from zhclip.training.runtime import setup_runtime, teardown_runtime
    from zhclip.training.step import TrainingError

    runtime = setup_runtime(recipe.device, recipe.precision)
    try:
        result = finetune(args.init, args.data, recipe, Path(args.output), runtime, args.format,
                          args.valid_split)
    except TrainingError as err:
        print(f"zhclip finetune: error: {err}", file=sys.stderr)
        return 1
    finally:
        teardown_runtime(runtime)
    if runtime.is_main:
        print(json.dumps({"output": str(args.output), "recipe": args.recipe, **result},
                         ensure_ascii=False, default=str))
    return 0


if __name__ == "__main__":
    from zhclip.training.torchrun_entry import torchrun_entry

    sys.exit(torchrun_entry("finetune", add_arguments, main))
